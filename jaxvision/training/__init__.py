"""jaxvision.training.

Importing it applies the library's XLA:CPU host defaults (``cpu_runtime.configure``) while
JAX's backends are still uncreated: import jaxvision before running JAX computations.
"""

from jaxvision.training import cpu_runtime as _cpu_runtime

_cpu_runtime.configure()
