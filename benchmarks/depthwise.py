"""Depthwise convolutions on CPU: XLA's grouped convolution, the backend's shifted-slice form,
and TensorFlow's ``tf.nn.depthwise_conv2d`` (what Keras's ``DepthwiseConv2D`` runs), forward
and forward + backward (gradients with respect to the input and the kernel).

The shapes are EfficientNet-Lite0's depthwise layers at a 112 px input, batch 16 (the CIFAR-10
fine-tuning config). One process, same data; JAX compile time apart; warm-up calls, then
``--repeats`` interleaved rounds, JAX results blocked until ready, TF's read back with
``.numpy()``; medians.

  python -m benchmarks.depthwise --repeats 10 \\
      --out benchmarks/results/<machine>_<date>_depthwise.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import timing
from jaxvision.backends import cpu
from jaxvision.backends.cpu import conv as cpu_conv

# (name, spatial size, channels, kernel, stride): EfficientNet-Lite0's depthwise layers at 112 px.
LAYERS = (
    ("block1", 56, 32, 3, 1),
    ("block2a", 56, 96, 3, 2),
    ("block3a", 28, 144, 5, 2),
    ("block4b", 7, 480, 3, 1),
    ("block5b", 7, 672, 5, 1),
    ("block7", 4, 1152, 3, 1),
)


def _jax_fns(impl, stride):
  def conv(x, w):
    if impl == "xla":
      return lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=x.shape[-1])
    return cpu_conv.depthwise_conv(x, w, (stride, stride), "SAME")

  def loss(x, w, cot):
    return jnp.sum(conv(x, w) * cot)

  return jax.jit(conv), jax.jit(jax.grad(loss, argnums=(0, 1)))


def _tf_fns(stride):
  import tensorflow as tf

  @tf.function(jit_compile=False)
  def forward(x, w):
    return tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], "SAME")

  @tf.function(jit_compile=False)
  def grads(x, w, cot):
    with tf.GradientTape() as tape:
      tape.watch([x, w])
      y = tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], "SAME")
      total = tf.reduce_sum(y * cot)
    return tape.gradient(total, [x, w])

  return forward, grads


def run(batch: int, repeats: int) -> list[dict]:
  import tensorflow as tf
  records = []
  rng = np.random.default_rng(0)
  for name, size, channels, k, stride in LAYERS:
    x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
    w = rng.normal(size=(k, k, channels, 1)).astype(np.float32)  # TF's [k, k, C, multiplier]
    out = -(-size // stride)
    cot = rng.normal(size=(batch, out, out, channels)).astype(np.float32)
    wj = jnp.asarray(w.reshape(k, k, 1, channels))
    xj, cotj = jnp.asarray(x), jnp.asarray(cot)
    xt, wt, cott = tf.constant(x), tf.constant(w), tf.constant(cot)
    calls = {}
    compile_s = {}
    for impl in ("xla", "shifted"):
      fwd, grd = _jax_fns(impl, stride)
      t0 = time.perf_counter()
      jax.block_until_ready(fwd(xj, wj))
      jax.block_until_ready(grd(xj, wj, cotj))
      compile_s[impl] = time.perf_counter() - t0
      calls[(impl, "forward")] = lambda f=fwd: jax.block_until_ready(f(xj, wj))
      calls[(impl, "forward+backward")] = lambda g=grd: jax.block_until_ready(g(xj, wj, cotj))
    tf_fwd, tf_grd = _tf_fns(stride)
    calls[("tensorflow", "forward")] = lambda: tf_fwd(xt, wt).numpy()
    calls[("tensorflow", "forward+backward")] = lambda: [g.numpy() for g in tf_grd(xt, wt, cott)]
    ref = np.asarray(calls[("xla", "forward")]())
    got = np.asarray(calls[("shifted", "forward")]())
    for fn in calls.values():  # warm-up
      fn()
      fn()
    times = {key: [] for key in calls}
    for _ in range(repeats):
      for key, fn in calls.items():
        seconds, _ = timing.time_call(fn)
        times[key].append(seconds)
    for (impl, kind), ts in times.items():
      records.append({"layer": name, "shape": [batch, size, size, channels], "kernel": k,
                      "stride": stride, "impl": impl, "kind": kind,
                      "compile_s": compile_s.get(impl), **timing.summarize(ts)})
    records.append({"layer": name, "max_abs_diff_shifted_vs_xla": float(np.abs(got - ref).max())})
  return records


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  cpu.configure_runtime()
  records = run(args.batch, args.repeats)
  print(f"{'layer':8} {'kind':17} {'xla ms':>9} {'shifted ms':>11} {'tf ms':>9} "
        f"{'xla/shifted':>11} {'tf/shifted':>10}")
  by = {(r["layer"], r["impl"], r["kind"]): r["step_ms_median"] for r in records if "impl" in r}
  for name, *_ in LAYERS:
    for kind in ("forward", "forward+backward"):
      xla, sh, tf_ = (by[(name, i, kind)] for i in ("xla", "shifted", "tensorflow"))
      print(f"{name:8} {kind:17} {xla:9.2f} {sh:11.2f} {tf_:9.2f} {xla / sh:10.1f}x "
            f"{tf_ / sh:9.1f}x")
  totals = {i: {k: sum(by[(n, i, k)] for n, *_ in LAYERS) for k in ("forward", "forward+backward")}
            for i in ("xla", "shifted", "tensorflow")}
  print("sum of layers:", json.dumps(totals))
  out = {"command": "python -m benchmarks.depthwise " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
         "environment": timing.environment(), "records": records, "totals_ms": totals}
  if args.out:
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
  return out


if __name__ == "__main__":
  main()
