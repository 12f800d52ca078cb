"""NMS throughput: jaxvision's jitted ``ops.nms`` vs ``tf.image.non_max_suppression``.

Usage::

  python -m benchmarks.nms [--n 1000] [--max-output 100] [--repeats 20] [--out FILE.json]

All runs use the same random boxes in the same process. For each implementation: compile (or
trace) time is measured separately on the first call, then a few warm-up calls, then
``--repeats`` timed calls each ending in ``block_until_ready`` (JAX) or ``.numpy()`` (TF).
Reported: median and 10th/90th percentile per-call time, calls/s, and the ratio of each median
to ours. TF runs eagerly and inside ``tf.function(jit_compile=False)``; if TensorFlow is not
importable only the JAX record is written. Records are a JSON list of dicts with keys ``model``,
``step``, ``framework``, ``batch``, ``images_per_s`` (calls/s here), ``step_ms_median``,
``compile_s``, ``flops_per_step`` (None), ``device`` plus ``step_ms_p10``, ``step_ms_p90``,
``ratio_to_jax`` (this median / the JAX median) and ``agrees_with_jax`` (same kept indices).
"""

import argparse
import json
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxvision import ops  # noqa: E402

WARMUP = 3


def make_boxes(n: int, seed: int = 0, image_size: float = 1000.0):
  """Detection-like xyxy boxes: clusters of overlapping boxes; distinct scores."""
  rng = np.random.default_rng(seed)
  centres = rng.uniform(0.1 * image_size, 0.9 * image_size, (max(n // 20, 1), 2))
  c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.02 * image_size, (n, 2))
  wh = rng.uniform(0.03, 0.2, (n, 2)) * image_size
  boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
  scores = rng.permutation(n).astype(np.float32) / n
  return boxes, scores


def _time_calls(fn: Callable[[], object], finish: Callable[[object], object],
                repeats: int) -> np.ndarray:
  for _ in range(WARMUP):
    finish(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    finish(fn())
    times.append(time.perf_counter() - start)
  return np.asarray(times) * 1e3  # ms


def _record(framework: str, n: int, times_ms: np.ndarray, compile_s: Optional[float],
            device: str) -> Dict:
  median = float(np.median(times_ms))
  return {
      "model": f"nms_{n}",
      "step": "nms",
      "framework": framework,
      "batch": 1,
      "images_per_s": 1e3 / median,
      "step_ms_median": median,
      "step_ms_p10": float(np.percentile(times_ms, 10)),
      "step_ms_p90": float(np.percentile(times_ms, 90)),
      "compile_s": compile_s,
      "flops_per_step": None,
      "device": device,
  }


def run_benchmark(n: int = 1000, max_output: int = 100, repeats: int = 20,
                  iou_threshold: float = 0.5, seed: int = 0, with_tf: bool = True) -> List[Dict]:
  """Times both implementations on the same boxes; returns one record per framework."""
  boxes_np, scores_np = make_boxes(n, seed)
  boxes, scores = jnp.asarray(boxes_np), jnp.asarray(scores_np)
  dev = jax.devices()[0]

  # Trace + compile time, measured ahead of time; the timed calls then go through the jitted
  # entry point as users call it (its first warm-up call fills the dispatch cache).
  start = time.perf_counter()
  ops.nms.lower(boxes, scores, iou_threshold=iou_threshold, max_output=max_output).compile()
  compile_s = time.perf_counter() - start
  jax_fn = lambda: ops.nms(boxes, scores, iou_threshold=iou_threshold,  # noqa: E731
                           max_output=max_output)
  jax_times = _time_calls(jax_fn, jax.block_until_ready, repeats)
  idx, count = jax_fn()
  ours = np.asarray(idx)[:int(count)]
  records = [_record("jax", n, jax_times, compile_s, f"{dev.platform}:{dev.device_kind}")]

  if with_tf:
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:
      print("tensorflow not importable: TF baselines skipped")
      tf = None
    if tf is not None:
      yxyx = tf.constant(boxes_np[:, [1, 0, 3, 2]])
      tf_scores = tf.constant(scores_np)

      def eager():
        return tf.image.non_max_suppression(yxyx, tf_scores, max_output,
                                            iou_threshold=iou_threshold)

      graph = tf.function(eager, jit_compile=False)
      tf_device = "cpu" if not tf.config.list_physical_devices("GPU") else "gpu"
      finish = lambda t: t.numpy()  # noqa: E731
      for name, fn in (("tf-eager", eager), ("tf-function", graph)):
        start = time.perf_counter()
        first = fn().numpy()  # eager: op set-up; tf.function: tracing + graph building
        first_s = time.perf_counter() - start
        rec = _record(name, n, _time_calls(fn, finish, repeats),
                      first_s if name == "tf-function" else None, f"tf:{tf_device}")
        rec["agrees_with_jax"] = bool(np.array_equal(first, ours))
        records.append(rec)
  for rec in records:
    rec["ratio_to_jax"] = rec["step_ms_median"] / records[0]["step_ms_median"]
  return records


def print_table(records: List[Dict]) -> None:
  header = (f"{'framework':<12} {'device':<14} {'median ms':>10} {'p10-p90 ms':>16} "
            f"{'calls/s':>10} {'compile s':>10} {'x jax':>7}")
  print(header)
  print("-" * len(header))
  for r in records:
    compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.3f}"
    spread = f"{r['step_ms_p10']:.3f}-{r['step_ms_p90']:.3f}"
    print(f"{r['framework']:<12} {r['device'][:14]:<14} {r['step_ms_median']:>10.3f} "
          f"{spread:>16} {r['images_per_s']:>10.1f} {compile_s:>10} {r['ratio_to_jax']:>7.2f}")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=1000, help="number of input boxes")
  parser.add_argument("--max-output", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--iou-threshold", type=float, default=0.5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-tf", action="store_true", help="skip the TensorFlow baselines")
  parser.add_argument("--out", default=None, help="write the records as JSON to this file")
  args = parser.parse_args(argv)
  records = run_benchmark(args.n, args.max_output, args.repeats, args.iou_threshold, args.seed,
                          with_tf=not args.no_tf)
  print(f"NMS n={args.n} max_output={args.max_output} iou={args.iou_threshold} "
        f"repeats={args.repeats}")
  print_table(records)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(records, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
