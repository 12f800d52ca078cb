"""Measurement helpers shared by the benchmarks: timing summaries, XLA cost and memory
analysis, the matmul peak of a device, and a description of the machine and versions.

Everything here measures; nothing asserts. Times are wall-clock seconds from
``time.perf_counter`` around work that is synchronized (``jax.block_until_ready`` for JAX).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.backends import cpu


def summarize(seconds_per_step: Sequence[float]) -> dict:
  """Median, quartiles and range (milliseconds) of per-step times from repeated runs."""
  if not seconds_per_step:
    raise ValueError("summarize needs at least one timed run; found none")
  ms = sorted(1e3 * float(s) for s in seconds_per_step)
  q1, q3 = (np.percentile(ms, [25, 75]) if len(ms) > 1 else (ms[0], ms[0]))
  return {
      "step_ms_median": statistics.median(ms),
      "step_ms_q1": float(q1),
      "step_ms_q3": float(q3),
      "step_ms_min": ms[0],
      "step_ms_max": ms[-1],
      "step_ms_all": ms,
  }


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
  """Runs ``fn()`` once; returns ``(seconds, result)`` (``fn`` must synchronize itself)."""
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def _first(analysis):
  # jax returns a dict (newer) or a list with one dict per program (older); may be None.
  if analysis is None:
    return {}
  if isinstance(analysis, (list, tuple)):
    return analysis[0] if analysis else {}
  return analysis


def cost_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled JAX function from XLA's cost analysis (None if absent)."""
  try:
    flops = _first(compiled.cost_analysis()).get("flops")
  except Exception:  # Some backends do not implement cost analysis.
    return None
  if flops is None or not math.isfinite(float(flops)) or float(flops) <= 0:
    return None
  return float(flops)


def xla_cost_flops(compiled, lower) -> float | None:
  """:func:`cost_flops` of ``compiled``, counting convolutions that run on oneDNN.

  XLA's cost analysis does not look into custom calls, so where ``compiled`` calls
  oneDNN's convolutions the same step is traced again with XLA's, inside
  ``backends.cpu.enabled(onednn=False)`` (``lower()`` must return a fresh
  ``jax.stages.Lowered`` of it), and that program's FLOPs are returned.
  """
  text = compiled.as_text()
  if not any(target in text for target in cpu.onednn.TARGETS.values()):
    return cost_flops(compiled)
  with cpu.enabled(onednn=False):
    return cost_flops(lower().compile())


def compiled_memory(compiled) -> dict | None:
  """Buffer sizes (bytes) XLA assigned to a compiled function: arguments, outputs, temporaries."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  return {f: int(getattr(m, f)) for f in fields if hasattr(m, f)}


def device_memory(device) -> dict | None:
  """``device.memory_stats()`` (bytes in use, peak, limit) where the backend reports it.

  XLA:CPU reports nothing: the result is then None.
  """
  try:
    stats = device.memory_stats()
  except Exception:
    return None
  if not stats:
    return None
  keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit", "largest_alloc_size")
  return {k: int(stats[k]) for k in keys if k in stats}


def matmul_peak(device=None, *, n: int | None = None, dtype=jnp.float32,
                repeats: int = 5) -> dict:
  """Best FLOP/s of an ``n x n`` matmul on ``device`` (the utilisation reference).

  ``n`` defaults to 2048 on CPU and 8192 on accelerators. Returns ``flops_per_s`` (best of
  ``repeats`` timed calls after a warm-up), ``n``, ``dtype`` and the per-call seconds.
  """
  device = device or jax.devices()[0]
  n = n or (2048 if device.platform == "cpu" else 8192)
  key = jax.random.PRNGKey(0)
  a = jax.device_put(jax.random.normal(key, (n, n), dtype), device)
  b = jax.device_put(jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype), device)
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  matmul(a, b).block_until_ready()
  seconds = []
  for _ in range(repeats):
    t, _ = time_call(lambda: matmul(a, b).block_until_ready())
    seconds.append(t)
  return {"flops_per_s": 2.0 * n ** 3 / min(seconds), "n": n, "dtype": jnp.dtype(dtype).name,
          "seconds": seconds}


def cpu_model_name() -> str | None:
  """The CPU's model name (``lscpu``'s "Model name"), or None where it cannot be read."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def describe_device(device) -> str:
  """``'cpu: AMD EPYC (2 cores)'`` or ``'gpu: NVIDIA H100 80GB HBM3'``."""
  if device.platform == "cpu":
    return f"cpu: {cpu_model_name() or 'unknown'} ({os.cpu_count()} cores)"
  return f"{device.platform}: {device.device_kind}"


def versions(extra: Sequence[str] = ("tensorflow", "keras")) -> dict:
  """Python and package versions relevant to the figures (None for packages not installed)."""
  out = {"python": platform.python_version()}
  for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", *extra):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      try:  # tensorflow-cpu installs the module under another distribution name.
        out[pkg] = importlib.metadata.version(f"{pkg}-cpu")
      except importlib.metadata.PackageNotFoundError:
        out[pkg] = None
  return out


def environment() -> dict:
  """Machine, device, date, versions, XLA flags and CPU dispatch mode, for a results header."""
  device = jax.devices()[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "host": platform.node(),
      "platform": platform.platform(),
      "cpu": cpu_model_name(),
      "cpu_count": os.cpu_count(),
      "device": describe_device(device),
      "device_count": jax.device_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # backends.cpu.configure_runtime() turns it off; benchmarks.run --cpu-async-dispatch back on.
      "jax_cpu_enable_async_dispatch": bool(jax.config.read("jax_cpu_enable_async_dispatch")),
      # Whether one-device CPU steps run their convolutions on oneDNN, and why not if not.
      "onednn_convolutions": cpu.use_onednn(None, requested=True) and cpu.onednn.available(),
      "onednn_unavailable": cpu.onednn.unavailable_reason(),
      "versions": versions(),
  }
