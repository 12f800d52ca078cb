"""Same-process A/B of a benchmark model's step: XLA's convolutions, then oneDNN's.

    PYTHONPATH=. python benchmarks/experiments/onednn_ffi/ab.py resnet18_cifar ROUNDS STEPS [train|eval]
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onednn_conv  # noqa: E402
from benchmarks import jax_steps  # noqa: E402
from benchmarks.specs import get_spec  # noqa: E402
from jaxvision.training import sharding, steps  # noqa: E402


def main(name, rounds, k, kind):
  spec, mesh = get_spec(name), sharding.make_mesh()
  host = jax_steps.random_batch(spec, spec.batch)
  keys = ("image", "label") if kind == "train" else ("image", "label", "mask")
  batch = {key: jnp.asarray(host[key]) for key in keys}
  compiled = {}
  for variant in ("xla", "onednn"):
    if variant == "onednn":
      onednn_conv.install()
    state = jax_steps.initial_state(spec, mesh)
    fn = (steps.jit_train_step(steps.make_train_step(), mesh) if kind == "train" else
          steps.jit_eval_step(steps.make_eval_step(spec.num_classes), mesh))
    compiled[variant] = [fn.lower(state, batch).compile(), state]

  def run(variant):
    fn, state = compiled[variant]
    for _ in range(k):
      if kind == "train":
        state, out = fn(state, batch)
      else:
        out = fn(state, batch)
    jax.block_until_ready((state, out))
    compiled[variant][1] = state

  variants = list(compiled)
  for v in variants:
    run(v)
  times = {v: [] for v in variants}
  for r in range(rounds):
    for v in variants[r % 2:] + variants[:r % 2]:
      start = time.perf_counter()
      run(v)
      times[v].append((time.perf_counter() - start) / k * 1e3)
  for v in variants:
    print(f"{name} {kind} {v:7s} median {statistics.median(times[v]):9.2f} ms  "
          f"min {min(times[v]):9.2f} ms")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "train")
