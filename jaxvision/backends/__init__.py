"""jaxvision.backends: formulations and runtime settings that exist only to make one backend fast.

``backends.cpu`` holds everything the library does for XLA:CPU's speed. It is opt-in: models
reach it only through ``jaxvision.models.layers`` and compiled steps only through
``jaxvision.training.jit``; code traced anywhere else gets portable ``lax``/``jnp`` ops. This
package imports nothing of jaxvision outside itself.
"""
