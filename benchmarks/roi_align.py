"""RoIAlign throughput: jaxvision's ``ops.roi_align`` vs ``torchvision.ops.roi_align`` on CPU.

Usage::

  python -m benchmarks.roi_align [--rois 512] [--size 64] [--channels 256] [--batch 2]
      [--output 7] [--sampling 2] [--repeats 20] [--threads N] [--out FILE.json]

The Faster R-CNN box-head case: ``--rois`` boxes spread over the ``--batch`` images of one
``[batch, size, size, channels]`` feature map (stride 16: boxes are image pixels,
``spatial_scale=1/16``), ``--output`` x ``--output`` bins, ``--sampling`` samples per bin axis,
``aligned=True``. Two steps per framework, both in this process on the same data:

* ``forward``: the pooled features (torch under ``no_grad``);
* ``forward_backward``: the pooled features and the gradient of ``sum(out * cotangent)`` with
  respect to the features (JAX: one jitted ``jax.vjp``; torch: ``out.backward(cotangent)``).

JAX runs NHWC, torch its native NCHW. Each function is compiled first (JAX: lower + compile,
timed and reported apart), warmed up, then timed in ``--repeats`` interleaved rounds (one call
of every step and framework per round, the order rotating), each call ending in
``block_until_ready`` (JAX) or a finished tensor (torch). Reported per record: median,
quartiles and range of the per-call times (ms), calls/s, compile seconds and ``torch_over_jax``
(the torch median / the JAX median of the same step: above 1, JAX is faster). Outputs and
gradients of the two are compared (``max_abs_diff_vs_torch`` on the JAX records).

Threads: torch gets ``torch.set_num_threads(--threads)``; XLA:CPU sizes its thread pool from
the cores the process may use, so with ``--threads`` below the available cores the process is
pinned to that many first (before JAX starts) and both use the same number. JAX jits with the
library's CPU compiler options and host defaults (``backends.cpu``), as a train step would.

Writes ``--out`` (JSON: ``command``, ``environment``, ``threads``, ``records``) and prints a
table. Runs kept in the repository go to
``benchmarks/results/<machine>_<YYYY-MM-DD>_roi-align-<what>.json`` (naming scheme at the top of
``benchmarks/RESULTS.md``). Without torch/torchvision only the JAX records are written.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import jax
import jax.numpy as jnp

from benchmarks import timing
from jaxvision import ops
from jaxvision.backends import cpu

STEPS = ("forward", "forward_backward")
WARMUP = 3
STRIDE = 16


def make_inputs(rois: int = 512, size: int = 64, channels: int = 256, batch: int = 2,
                output: int = 7, seed: int = 0) -> Dict[str, np.ndarray]:
  """Features ``[batch, size, size, channels]``, proposal-like image-pixel boxes ``[rois, 4]``
  (sides 2-48 feature pixels, some over the border) on random images, and a cotangent."""
  rng = np.random.default_rng(seed)
  image = size * STRIDE
  centre = rng.uniform(0, image, (rois, 2))
  wh = np.exp(rng.uniform(np.log(2), np.log(48), (rois, 2))) * STRIDE
  boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
  return {
      "features": rng.normal(size=(batch, size, size, channels)).astype(np.float32),
      "boxes": boxes.astype(np.float32),
      "index": rng.integers(0, batch, rois).astype(np.int32),
      "cotangent": rng.normal(size=(rois, output, output, channels)).astype(np.float32),
  }


def jax_functions(inputs: Dict[str, np.ndarray], output: int, sampling: int):
  """Compiled JAX forward and forward+backward, their compile seconds and argument tuples."""
  kw = dict(output_size=output, spatial_scale=1.0 / STRIDE, sampling_ratio=sampling,
            aligned=True)

  def forward(f, b, i):
    return ops.roi_align(f, b, i, **kw)

  def forward_backward(f, b, i, cot):
    out, vjp = jax.vjp(lambda f: ops.roi_align(f, b, i, **kw), f)
    return out, vjp(cot)[0]

  args = tuple(jnp.asarray(inputs[k]) for k in ("features", "boxes", "index", "cotangent"))
  options = cpu.compiler_options()
  compiled, compile_s, call_args = {}, {}, {}
  for name, fn, fn_args in (("forward", forward, args[:3]),
                            ("forward_backward", forward_backward, args)):
    start = time.perf_counter()
    compiled[name] = jax.jit(fn, compiler_options=options).lower(*fn_args).compile()
    compile_s[name] = time.perf_counter() - start
    call_args[name] = fn_args
  return compiled, compile_s, call_args


def torch_functions(inputs: Dict[str, np.ndarray], output: int, sampling: int):
  """torchvision forward and forward+backward (None without torch/torchvision)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("torch/torchvision not importable: torch records skipped")
    return None
  feats = torch.from_numpy(inputs["features"]).permute(0, 3, 1, 2).contiguous()
  boxes = torch.from_numpy(np.concatenate(
      [inputs["index"][:, None].astype(np.float32), inputs["boxes"]], axis=1))
  cot = torch.from_numpy(inputs["cotangent"]).permute(0, 3, 1, 2).contiguous()
  feats_grad = feats.clone().requires_grad_(True)
  roi_align = torchvision.ops.roi_align

  def forward():
    with torch.no_grad():
      return roi_align(feats, boxes, output, 1.0 / STRIDE, sampling, True)

  def forward_backward():
    feats_grad.grad = None
    out = roi_align(feats_grad, boxes, output, 1.0 / STRIDE, sampling, True)
    out.backward(cot)
    return out.detach(), feats_grad.grad

  return {"forward": forward, "forward_backward": forward_backward}


def _nhwc(t):
  return t.permute(0, 2, 3, 1).numpy()


def run_benchmark(rois: int = 512, size: int = 64, channels: int = 256, batch: int = 2,
                  output: int = 7, sampling: int = 2, repeats: int = 20, seed: int = 0,
                  with_torch: bool = True) -> List[Dict]:
  """Times both frameworks' steps in interleaved rounds; returns one record per (framework,
  step), JAX's first."""
  inputs = make_inputs(rois, size, channels, batch, output, seed)
  compiled, compile_s, call_args = jax_functions(inputs, output, sampling)
  calls: Dict[tuple, Callable[[], object]] = {}
  for step in STEPS:
    fn, args = compiled[step], call_args[step]
    calls[("jax", step)] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
  torch_fns = torch_functions(inputs, output, sampling) if with_torch else None
  if torch_fns:
    for step in STEPS:
      calls[("torch", step)] = torch_fns[step]
  for call in calls.values():
    for _ in range(WARMUP):
      call()
  keys = list(calls)
  seconds = {key: [] for key in keys}
  for r in range(repeats):
    for j in range(len(keys)):
      key = keys[(r + j) % len(keys)]
      start = time.perf_counter()
      calls[key]()
      seconds[key].append(time.perf_counter() - start)

  device = timing.describe_device(jax.devices()[0])
  records = []
  for framework, step in keys:
    summary = timing.summarize(seconds[(framework, step)])
    records.append({
        "model": f"roi_align_{rois}x{size}x{size}x{channels}_out{output}_s{sampling}",
        "step": step,
        "framework": framework if framework == "jax" else "torchvision",
        "batch": batch,
        "rois": rois,
        "images_per_s": 1e3 / summary["step_ms_median"],  # calls/s
        **summary,
        "compile_s": compile_s[step] if framework == "jax" else None,
        "flops_per_step": None,
        "device": device,
    })
  by_key = {(r["framework"], r["step"]): r for r in records}
  if torch_fns:
    jax_fwd = np.asarray(compiled["forward"](*call_args["forward"]))
    jax_out, jax_grad = (np.asarray(a) for a in
                         compiled["forward_backward"](*call_args["forward_backward"]))
    t_out, t_grad = torch_fns["forward_backward"]()
    diffs = {"forward": float(np.abs(jax_fwd - _nhwc(torch_fns["forward"]())).max()),
             "forward_backward": max(float(np.abs(jax_out - _nhwc(t_out)).max()),
                                     float(np.abs(jax_grad - _nhwc(t_grad)).max()))}
    for step in STEPS:
      ours, peer = by_key[("jax", step)], by_key[("torchvision", step)]
      ratio = peer["step_ms_median"] / ours["step_ms_median"]
      ours["torch_over_jax"] = peer["torch_over_jax"] = ratio
      ours["max_abs_diff_vs_torch"] = diffs[step]
  return records


def print_table(records: List[Dict]) -> None:
  header = (f"{'framework':<12} {'step':<17} {'median ms':>10} {'q1-q3 ms':>17} "
            f"{'calls/s':>9} {'compile s':>10} {'torch/jax':>10}")
  print(header)
  print("-" * len(header))
  for r in records:
    compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.2f}"
    spread = f"{r['step_ms_q1']:.2f}-{r['step_ms_q3']:.2f}"
    ratio = f"{r['torch_over_jax']:.2f}" if "torch_over_jax" in r else "-"
    print(f"{r['framework']:<12} {r['step']:<17} {r['step_ms_median']:>10.2f} {spread:>17} "
          f"{r['images_per_s']:>9.1f} {compile_s:>10} {ratio:>10}")


def set_threads(threads: Optional[int]) -> int:
  """Gives torch ``threads`` threads and, below the available cores, pins the process (so
  XLA:CPU, sized from the affinity when JAX starts, uses as many). Returns the count."""
  available = sorted(os.sched_getaffinity(0))
  threads = threads or len(available)
  if threads < len(available):
    os.sched_setaffinity(0, available[:threads])
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
  except ImportError:
    pass
  return threads


def main(argv=None) -> Dict:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.roi_align",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--rois", type=int, default=512)
  parser.add_argument("--size", type=int, default=64, help="feature map height and width")
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--batch", type=int, default=2, help="images the RoIs are spread over")
  parser.add_argument("--output", type=int, default=7, help="output bins per side")
  parser.add_argument("--sampling", type=int, default=2, help="sampling_ratio")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--threads", type=int, default=None,
                      help="threads for both frameworks (default: the available cores)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-torch", action="store_true", help="skip the torchvision peer")
  parser.add_argument("--out", default=None, help="write the results as JSON to this file")
  args = parser.parse_args(argv)
  threads = set_threads(args.threads)  # Before JAX's backends exist.
  runtime_defaults = cpu.configure_runtime()
  env = timing.environment()
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
    env["versions"].update(torch=torch.__version__, torchvision=torchvision.__version__)
  except ImportError:
    pass
  records = run_benchmark(args.rois, args.size, args.channels, args.batch, args.output,
                          args.sampling, args.repeats, args.seed, with_torch=not args.no_torch)
  print(f"RoIAlign: {args.rois} RoIs on [{args.batch}, {args.size}, {args.size}, "
        f"{args.channels}], output {args.output}, sampling {args.sampling}, aligned; "
        f"{args.repeats} rounds; {threads} threads; {env['device']}")
  print_table(records)
  out = {"command": "python -m benchmarks.roi_align " +
                    " ".join(sys.argv[1:] if argv is None else argv),
         "environment": env, "threads": threads, "runtime_defaults": runtime_defaults,
         "compiler_options": cpu.compiler_options(), "records": records}
  if args.out:
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {len(records)} records to {path}")
  return out


if __name__ == "__main__":
  main()
