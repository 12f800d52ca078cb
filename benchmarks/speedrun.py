"""Time to 99% MNIST test accuracy, with the dataset on device and one compiled program per epoch.

Usage::

  python -m benchmarks.speedrun --data-dir ../shared/data/mnist [--seeds 5] [--out FILE.json]

What runs: the library's ``SimpleCNN`` (the Keras tutorial convnet; ``--hidden`` units in its
dense layer) trained by the library's train step (``steps.make_train_step``) with Adam and a
one-cycle learning-rate schedule (``optim.make_optimizer``), no augmentation, no dropout.
The 60k training images and 10k test images are put on the device once, normalised there.
An epoch is ``steps.make_epoch_step``: one ``lax.scan`` over the batches of an on-device
permutation, jitted once by ``training.jit.jit_step`` (the CPU backend and its XLA options) with
the state donated; the test set is scored by one jitted ``lax.map`` over chunks.

Timing, per seed (``--seeds`` seeds, each with its own init and shuffles):

* ``train_s``: wall time of the ``--epochs`` epoch calls, from the initialised state to the
  trained state (``block_until_ready``), compile excluded;
* ``eval_s``: scoring the 10k test images afterwards (not part of ``train_s``);
* ``compile_s`` (once per run): ahead-of-time ``lower().compile()`` of the epoch and the
  evaluation programs. One warm-up epoch on a throw-away state runs before the first seed so
  that one-time allocations do not land on seed 0; it is reported as ``warmup_s``.

The run prints one line per seed and a summary: mean, min and max test accuracy, the median
``train_s``, and whether the mean reaches ``--target`` (0.99). ``--out`` writes the same as
JSON with the machine, versions and the settings.

Anchor: 0.76 s to 99% on a laptop GPU (GTX 1660 Ti, PyTorch; tuomaso/train_mnist_fast).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import timing
from jaxvision import models
from jaxvision.backends import cpu
from jaxvision.data import get_dataset, paths, pipeline
from jaxvision.tasks import classification
from jaxvision.training import jit, sharding, state as state_lib
from jaxvision.training import optim

# MNIST train-set pixel mean and standard deviation (of values in [0, 1]).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
EVAL_CHUNK = 1000


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data-dir", default=str(paths.local_dataset_dir("mnist")),
                 help="MNIST IDX folder (default: $JAXVISION_DATA_DIR/mnist)")
  p.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ...)")
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--learning-rate", type=float, default=4e-3, help="one-cycle peak (Adam)")
  p.add_argument("--hidden", type=int, default=128, help="SimpleCNN dense units")
  p.add_argument("--target", type=float, default=0.99, help="mean test accuracy to reach")
  p.add_argument("--train-examples", type=int, default=None,
                 help="train on the first N training images only (smoke tests; default all)")
  p.add_argument("--out", default=None, help="write the records as JSON here")
  return p.parse_args(argv)


def load_mnist(data_dir: str, device) -> dict[str, jax.Array]:
  """Train and test images ``[N, 28, 28, 1]`` float32 (normalised) and int32 labels, on device."""
  builder, info = get_dataset("mnist", data_dir=data_dir)
  out = {}
  for split in ("train", "test"):
    images, labels = pipeline.load_split(builder, info, split)
    images = jax.device_put(images, device)  # uint8 over the wire, converted on the device
    out[f"{split}_images"] = (images.astype(jnp.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    out[f"{split}_labels"] = jax.device_put(labels, device)
  return out


def make_evaluate(apply_fn):
  """``evaluate(params, images [N,...], labels [N]) -> number correct``; N % EVAL_CHUNK == 0."""

  def evaluate(params, images, labels):
    chunks = (images.reshape(-1, EVAL_CHUNK, *images.shape[1:]),
              labels.reshape(-1, EVAL_CHUNK))

    def correct(chunk):
      logits, _ = apply_fn({"params": params}, chunk[0], train=False)
      return jnp.sum(jnp.argmax(logits, -1) == chunk[1])

    return jnp.sum(jax.lax.map(correct, chunks))

  return evaluate


def run(args: argparse.Namespace) -> dict:
  device = jax.devices()[0]
  mesh = sharding.make_mesh(1)
  data = load_mnist(args.data_dir, device)
  if args.train_examples is not None:
    data["train_images"] = data["train_images"][:args.train_examples]
    data["train_labels"] = data["train_labels"][:args.train_examples]
  n_train, n_test = data["train_images"].shape[0], data["test_images"].shape[0]
  if n_test % EVAL_CHUNK:
    raise ValueError(f"the test split has {n_test} images, expected a multiple of {EVAL_CHUNK}")
  steps_per_epoch = n_train // args.batch
  total_steps = steps_per_epoch * args.epochs

  model = models.SimpleCNN(num_classes=10, hidden=args.hidden)
  opt_cfg = ml_collections.ConfigDict({"name": "adam", "learning_rate": args.learning_rate,
                                       "schedule": "onecycle", "pct_start": 0.25})
  tx, _ = optim.make_optimizer(opt_cfg, total_steps)

  def init(seed: int):
    return state_lib.create_train_state(model, tx, input_shape=(28, 28, 1),
                                        rng=jax.random.PRNGKey(seed))

  epoch_step = jit.jit_step(classification.make_epoch_step(classification.make_train_step(),
                                                      batch_size=args.batch),
                            mesh, donate_argnums=(0,))
  evaluate = jit.jit_step(make_evaluate(model.apply), mesh)

  state = init(0)
  key = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  epoch_compiled = epoch_step.lower(state, data["train_images"], data["train_labels"],
                                    key).compile()
  eval_compiled = evaluate.lower(state.params, data["test_images"],
                                 data["test_labels"]).compile()
  compile_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  warm, _ = epoch_compiled(state, data["train_images"], data["train_labels"], key)
  jax.block_until_ready(warm)
  warmup_s = time.perf_counter() - t0
  del warm

  seeds = []
  for seed in range(args.seeds):
    state = jax.block_until_ready(init(seed))
    epoch_keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1), args.epochs)
    t0 = time.perf_counter()
    for e in range(args.epochs):
      state, metrics = epoch_compiled(state, data["train_images"], data["train_labels"],
                                      epoch_keys[e])
    jax.block_until_ready((state, metrics))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    correct = int(eval_compiled(state.params, data["test_images"], data["test_labels"]))
    eval_s = time.perf_counter() - t0
    record = {"seed": seed, "test_accuracy": correct / n_test, "train_s": train_s,
              "eval_s": eval_s, "final_epoch_train_loss": float(metrics["loss"])}
    seeds.append(record)
    print(f"seed {seed}: test accuracy {record['test_accuracy']:.4f} "
          f"({correct}/{n_test}), train {train_s:.2f} s, eval {eval_s:.2f} s", flush=True)

  accuracies = [r["test_accuracy"] for r in seeds]
  summary = {
      "mean_test_accuracy": float(np.mean(accuracies)),
      "min_test_accuracy": min(accuracies), "max_test_accuracy": max(accuracies),
      "median_train_s": statistics.median(r["train_s"] for r in seeds),
      "compile_s": compile_s, "warmup_s": warmup_s,
      "target": args.target,
      "reached_target": bool(np.mean(accuracies) >= args.target),
  }
  settings = {"model": f"SimpleCNN(hidden={args.hidden})", "optimizer": opt_cfg.to_dict(),
              "epochs": args.epochs, "batch": args.batch, "steps_per_epoch": steps_per_epoch,
              "train_examples": n_train, "test_examples": n_test, "augmentation": None,
              "data_dir": args.data_dir}
  print(f"mean test accuracy {summary['mean_test_accuracy']:.4f} "
        f"[{summary['min_test_accuracy']:.4f}-{summary['max_test_accuracy']:.4f}] over "
        f"{len(seeds)} seeds; median train {summary['median_train_s']:.2f} s for "
        f"{args.epochs} epochs; compile {compile_s:.2f} s; "
        f"{'reached' if summary['reached_target'] else 'MISSED'} {args.target:.2%} "
        f"({timing.describe_device(device)})")
  return {"environment": timing.environment(), "settings": settings, "summary": summary,
          "seeds": seeds}


def main(argv=None) -> int:
  args = parse_args(argv)
  cpu.configure_runtime()  # Before anything creates JAX's backends.
  if min(args.seeds, args.epochs, args.batch, args.train_examples or args.batch) < 1:
    print(f"error: --seeds, --epochs, --batch and --train-examples must be positive, got "
          f"{args.seeds}, {args.epochs}, {args.batch}, {args.train_examples}", file=sys.stderr)
    return 2
  result = run(args)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0 if result["summary"]["reached_target"] else 1


if __name__ == "__main__":
  sys.exit(main())
