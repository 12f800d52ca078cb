"""Row-MNIST LSTM train step: jaxvision's compiled step vs a Keras LSTM of the same size.

Usage::

  python -m benchmarks.lstm [--batch 128] [--steps 20] [--repeats 5] [--out FILE.json]

Ours: ``RowLSTMClassifier`` with the ``mnist_lstm`` config's size (2 bidirectional layers of 128
units, last-state pooling, ``unroll`` from the config; dropout off so both sides compute the same
thing), trained by the same jitted step the classification trainer uses
(``tasks.classification.make_train_step`` + ``training.jit.jit_train_step`` on a one-device mesh) with Adam.

Peer, in the same process on the same random batch: a Keras model with the same layers and
parameter count (``Bidirectional(LSTM(128, return_sequences=True))``, ``Bidirectional(LSTM(128))``,
``Dense(10)``, Adam, sparse softmax cross-entropy on logits), trained

* through ``model.fit`` (``keras-fit``; Keras's own ``jit_compile`` choice, recorded; timed
  by a callback from the first batch's start to the last batch's end, so fit's per-call set-up
  is excluded and reported apart as ``fit_call_ms_per_step``), and
* through a ``tf.function(jit_compile=True)`` step (``keras-tf-xla``: GradientTape +
  ``optimizer.apply``).

Timing: the first call (trace + compile) is timed separately as ``compile_s`` (JAX: ahead of
time with ``lower().compile()``; TF/Keras: the first call minus one steady step), then a warm-up,
then ``--repeats`` timings of ``--steps`` consecutive steps, each ending in
``block_until_ready`` (JAX) or a host read of the loss (TF). Reported per framework: median,
min and max per-step time over the repeats, images/s from the median, and ``x_jax`` (the
framework's images/s / ours; < 1 means ours is faster).

``flops_per_step`` is analytic: the LSTM and head matmuls of the forward pass (2 FLOPs per
multiply-add) times 3 for forward + backward; element-wise gate math is not counted. The same
figure applies to both frameworks. Records: a JSON list of dicts with ``model``, ``step``,
``framework``, ``batch``, ``images_per_s``, ``step_ms_median``, ``step_ms_min``,
``step_ms_max``, ``compile_s``, ``flops_per_step``, ``gflops_per_s``, ``params``, ``device``,
``x_jax``, ``steps``, ``repeats``, ``versions``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the peers use tf.function

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxvision import models  # noqa: E402
from jaxvision.backends import cpu  # noqa: E402
from jaxvision.tasks import classification  # noqa: E402
from jaxvision.training import jit, sharding, state as state_lib  # noqa: E402
from train.configs import mnist_lstm  # noqa: E402

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)  # 28 time steps of 28 features
WARMUP = 2


def lstm_flops_per_step(batch: int, features: int, num_layers: int, bidirectional: bool,
                        num_steps: int = 28, input_features: int = 28,
                        num_classes: int = NUM_CLASSES) -> int:
  """Analytic train-step FLOPs: 3 x (LSTM gate matmuls + head matmul) of the forward pass."""
  dirs = 2 if bidirectional else 1
  forward, fan_in = 0, input_features
  for _ in range(num_layers):
    # Per direction and time step: [B, F + H] @ [F + H, 4H].
    forward += dirs * num_steps * 2 * batch * (fan_in + features) * 4 * features
    fan_in = dirs * features
  forward += 2 * batch * fan_in * num_classes
  return 3 * forward


def _spread(step_times_s, batch: int, steps: int) -> dict:
  per_step_ms = np.asarray(step_times_s) / steps * 1e3
  median = float(np.median(per_step_ms))
  return {"step_ms_median": median, "step_ms_min": float(per_step_ms.min()),
          "step_ms_max": float(per_step_ms.max()), "images_per_s": batch / median * 1e3}


def _time_repeats(run_steps, steps: int, repeats: int) -> list[float]:
  """Wall time of ``run_steps(steps)`` (which must block until done) after a warm-up."""
  for _ in range(WARMUP):
    run_steps(1)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_steps(steps)
    times.append(time.perf_counter() - start)
  return times


def model_settings(features: int | None = None, unroll: int | None = None) -> dict:
  """The ``mnist_lstm`` config's model keywords (dropout off), with optional overrides."""
  settings = {k: v for k, v in mnist_lstm.get_config().model.items() if k != "name"}
  settings["dropout_rate"] = 0.0
  if features is not None:
    settings["features"] = features
  if unroll is not None:
    settings["unroll"] = unroll
  return settings


def make_batch(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(batch, *IMAGE_SHAPE)).astype(np.float32),
          "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32)}


def bench_jax(settings: dict, data: dict, steps: int, repeats: int,
              learning_rate: float = 1e-3) -> dict:
  """Times the trainer's jitted train step of ``RowLSTMClassifier(**settings)``."""
  mesh = sharding.make_mesh(1)
  model = models.create_model("RowLSTMClassifier", num_classes=NUM_CLASSES, **settings)
  state = state_lib.create_train_state(model, optax.adam(learning_rate), input_shape=IMAGE_SHAPE,
                                       rng=jax.random.PRNGKey(0), mesh=mesh)
  batch = sharding.shard_batch(data, mesh)
  start = time.perf_counter()
  step = jit.jit_train_step(classification.make_train_step(), mesh).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  holder = {"state": state}

  def run_steps(n):
    s = holder["state"]
    for _ in range(n):
      s, metrics = step(s, batch)
    jax.block_until_ready(metrics["loss"])
    holder["state"] = s

  times = _time_repeats(run_steps, steps, repeats)
  dev = jax.devices()[0]
  return {"framework": "jax", "compile_s": compile_s,
          "params": int(sum(x.size for x in jax.tree_util.tree_leaves(state.params))),
          "device": f"{dev.platform}:{dev.device_kind}",
          **_spread(times, len(data["label"]), steps)}


def keras_model(settings: dict):
  """The Keras counterpart of ``RowLSTMClassifier(**settings)`` on ``[B, 28, 28]`` inputs."""
  import keras  # pylint: disable=g-import-not-at-top
  x = inputs = keras.Input(shape=IMAGE_SHAPE[:2])
  for i in range(settings["num_layers"]):
    layer = keras.layers.LSTM(settings["features"],
                              return_sequences=i < settings["num_layers"] - 1)
    x = keras.layers.Bidirectional(layer)(x) if settings["bidirectional"] else layer(x)
  return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(x))


def bench_keras(settings: dict, data: dict, steps: int, repeats: int,
                learning_rate: float = 1e-3) -> list[dict]:
  """Times the Keras model through ``model.fit`` and a ``tf.function(jit_compile=True)`` step."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  batch = len(data["label"])
  x = data["image"][..., 0]
  y = data["label"]
  device = "tf:gpu" if tf.config.list_physical_devices("GPU") else "tf:cpu"
  records = []

  # model.fit over `n` copies of the batch (one epoch of n steps).
  model = keras_model(settings)
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  xs, ys = np.concatenate([x] * steps), np.concatenate([y] * steps)

  class StepSpan(keras.callbacks.Callback):
    """Time from the first batch's start to the last batch's end (fit's set-up excluded)."""

    def on_train_batch_begin(self, batch_index, logs=None):
      if batch_index == 0:
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch_index, logs=None):
      self.end = time.perf_counter()

  span = StepSpan()
  fit_calls = []

  def fit(n):
    start = time.perf_counter()
    model.fit(xs[:n * batch], ys[:n * batch], batch_size=batch, epochs=1, shuffle=False,
              verbose=0, callbacks=[span])
    fit_calls.append(time.perf_counter() - start)
    return span.end - span.start

  fit(1)
  first_s = fit_calls[0]
  for _ in range(WARMUP):
    fit(1)
  times = [fit(steps) for _ in range(repeats)]
  rec = {"framework": "keras-fit", "params": int(model.count_params()), "device": device,
         "keras_jit_compile": bool(getattr(model, "jit_compile", False)),
         **_spread(times, batch, steps)}
  rec["compile_s"] = max(first_s - rec["step_ms_median"] / 1e3, 0.0)
  # Whole fit() calls, set-up included, per step: what a user's short epochs cost.
  rec["fit_call_ms_per_step"] = float(np.median(fit_calls[-repeats:])) / steps * 1e3
  records.append(rec)

  # A hand-written XLA-compiled train step.
  model = keras_model(settings)
  optimizer = keras.optimizers.Adam(learning_rate)
  optimizer.build(model.trainable_variables)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  xt, yt = tf.constant(x), tf.constant(y)

  @tf.function(jit_compile=True)
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return loss

  def run_steps(n):
    for _ in range(n):
      loss = train_step(xt, yt)
    loss.numpy()

  start = time.perf_counter()
  run_steps(1)
  first_s = time.perf_counter() - start
  times = _time_repeats(run_steps, steps, repeats)
  rec = {"framework": "keras-tf-xla", "params": int(model.count_params()), "device": device,
         **_spread(times, batch, steps)}
  rec["compile_s"] = max(first_s - rec["step_ms_median"] / 1e3, 0.0)
  records.append(rec)
  return records


def _versions() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "tensorflow": tf.__version__, "keras": keras.__version__}


def run_benchmark(batch: int = 128, steps: int = 20, repeats: int = 5, *,
                  features: int | None = None, unroll: int | None = None,
                  with_keras: bool = True) -> list[dict]:
  """Runs ours and (unless ``with_keras=False``) the Keras peers; returns the records."""
  if batch < 1 or steps < 1 or repeats < 1:
    raise ValueError(f"batch, steps and repeats must be >= 1; got {batch}, {steps}, {repeats}")
  settings = model_settings(features, unroll)
  data = make_batch(batch)
  records = [bench_jax(settings, data, steps, repeats)]
  if with_keras:
    records += bench_keras(settings, data, steps, repeats)
  flops = lstm_flops_per_step(batch, settings["features"], settings["num_layers"],
                              settings["bidirectional"])
  model_name = (f"RowLSTM_{'bi' if settings['bidirectional'] else 'uni'}"
                f"{settings['num_layers']}x{settings['features']}")
  versions = _versions() if with_keras else {"jax": jax.__version__}
  for rec in records:
    rec.update(model=model_name, step="train", batch=batch, flops_per_step=flops,
               gflops_per_s=flops / rec["step_ms_median"] / 1e6, steps=steps, repeats=repeats,
               x_jax=rec["images_per_s"] / records[0]["images_per_s"], versions=versions)
  records[0]["unroll"] = settings["unroll"]
  return records


def print_table(records: list[dict]) -> None:
  header = (f"{'framework':<13} {'device':<10} {'images/s':>9} {'ms/step':>8} {'min-max ms':>15} "
            f"{'compile s':>9} {'GFLOP/s':>8} {'params':>8} {'x jax':>6}")
  print(header)
  print("-" * len(header))
  for r in records:
    spread = f"{r['step_ms_min']:.1f}-{r['step_ms_max']:.1f}"
    print(f"{r['framework']:<13} {r['device'][:10]:<10} {r['images_per_s']:>9.1f} "
          f"{r['step_ms_median']:>8.1f} {spread:>15} {r['compile_s']:>9.2f} "
          f"{r['gflops_per_s']:>8.2f} {r['params']:>8} {r['x_jax']:>6.2f}")
  for r in records[1:]:
    print(f"JAX / {r['framework']}: {records[0]['images_per_s'] / r['images_per_s']:.2f}x "
          f"images/s")


def main(argv=None) -> list[dict]:
  cpu.configure_runtime()  # Before anything creates JAX's backends.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--features", type=int, default=None,
                      help="LSTM units per direction (default: the mnist_lstm config's)")
  parser.add_argument("--unroll", type=int, default=None,
                      help="our scan unroll (default: the mnist_lstm config's)")
  parser.add_argument("--no-keras", action="store_true", help="skip the Keras peers")
  parser.add_argument("--out", default=None, help="write the records as JSON to this file")
  args = parser.parse_args(argv)
  records = run_benchmark(args.batch, args.steps, args.repeats, features=args.features,
                          unroll=args.unroll, with_keras=not args.no_keras)
  r = records[0]
  print(f"{r['model']} train step, batch {args.batch}, {args.repeats} x {args.steps} steps, "
        f"{r['flops_per_step'] / 1e9:.2f} GFLOP/step (analytic)")
  print_table(records)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(records, f, indent=2)
    print(f"wrote {args.out}")
  return records


if __name__ == "__main__":
  main()
