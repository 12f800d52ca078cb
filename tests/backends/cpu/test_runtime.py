"""Host defaults for XLA:CPU (``backends.cpu.configure_runtime``), each checked in a fresh
interpreter.

The defaults only take effect before JAX creates its CPU client, so every case runs in its own
subprocess with a controlled environment, calling ``configure_runtime()`` explicitly (as
``train/main.py`` and the benchmarks do; importing jaxvision sets nothing). The effect that
matters is measured directly: minor page faults of repeated calls whose 64 MB output buffer is
freed in between (median over 5 calls after 4 warm-up calls).
"""

import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]

PROBE = """
import json, resource, statistics, sys
{before}
import jaxvision.training
from jaxvision.backends import cpu
import jax, jax.numpy as jnp
async_after_import = jax.config.read("jax_cpu_enable_async_dispatch")
applied = cpu.configure_runtime() if {configure} else {{}}

def softmax_all(x):
  e = jnp.exp(x)
  return e / jnp.sum(e)

x = jnp.ones((4096, 4096), jnp.float32)
f = jax.jit(softmax_all).lower(x).compile()
for _ in range(4):  # the heap grows to hold two results, then is reused
  f(x).block_until_ready()
faults = []
for _ in range(5):
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps({{"applied": applied, "again": cpu.configure_runtime() == applied,
                  "async_after_import": async_after_import,
                  "async": jax.config.read("jax_cpu_enable_async_dispatch"),
                  "faults_per_call": statistics.median(faults)}}))
"""

OUTPUT_PAGES = 4096 * 4096 * 4 // 4096  # the 64 MB result allocated by every call

linux_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the malloc defaults are glibc's; elsewhere nothing is set")


def probe(before: str = "", configure: bool = True, **env) -> dict:
  full = {k: v for k, v in os.environ.items()
          if k not in ("JAXVISION_XLA_DEFAULTS", "MALLOC_TRIM_THRESHOLD_",
                       "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
  full.update(env, JAX_PLATFORMS="cpu", XLA_FLAGS="",
              PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  script = PROBE.format(before=before, configure=configure)
  out = subprocess.run([sys.executable, "-c", script], env=full,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@linux_glibc
def test_defaults_stop_buffers_being_faulted_in_on_every_call():
  on = probe()
  assert on["again"] and on["async_after_import"] is True  # the import itself set nothing
  assert on["applied"] == {"jax_cpu_enable_async_dispatch": False,
                           "malloc_mmap_threshold": "max", "malloc_trim_threshold": "max"}
  assert on["async"] is False
  assert on["faults_per_call"] < 0.05 * OUTPUT_PAGES, on
  # Without them, glibc maps and unmaps the buffer on every call: each page faults again.
  off = probe(JAXVISION_XLA_DEFAULTS="0")
  assert off["applied"] == {} and off["async"] is True
  assert off["faults_per_call"] > 0.5 * OUTPUT_PAGES, off


@linux_glibc
def test_user_malloc_settings_are_kept():
  out = probe(MALLOC_TRIM_THRESHOLD_="1048576")
  assert out["applied"] == {"jax_cpu_enable_async_dispatch": False,
                            "malloc_mmap_threshold": "max"}
  out = probe(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1048576")
  assert out["applied"] == {"jax_cpu_enable_async_dispatch": False,
                            "malloc_trim_threshold": "max"}


def test_nothing_changes_once_backends_exist():
  # JAX ran before jaxvision was imported: its CPU client already dispatches asynchronously.
  out = probe(before="import jax; jax.numpy.zeros(1).block_until_ready()")
  assert out["applied"] == {} and out["async"] is True


def test_a_user_choice_of_synchronous_dispatch_still_gets_the_malloc_defaults():
  before = "import jax; jax.config.update('jax_cpu_enable_async_dispatch', False)"
  out = probe(before=before)
  assert out["async"] is False
  if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    assert out["applied"] == {"malloc_mmap_threshold": "max", "malloc_trim_threshold": "max"}
    assert out["faults_per_call"] < 0.05 * OUTPUT_PAGES, out


def test_importing_jaxvision_sets_nothing():
  # Without the explicit call, dispatch stays asynchronous and every call faults its buffer in.
  out = probe(configure=False)
  assert out["async_after_import"] is True and out["async"] is True
  if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    assert out["faults_per_call"] > 0.5 * OUTPUT_PAGES, out
