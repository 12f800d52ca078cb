"""Keras 3 / TensorFlow peers of the JAX steps, timed the same way in the same process.

Two peers per model, each with the Keras twin of the JAX model (``benchmarks.keras_models``),
the same batch and the same optimizer:

* ``keras_fit``: what a Keras tutorial does, ``model.compile(...)`` with its defaults (on a
  CPU-only machine Keras resolves ``jit_compile='auto'`` to no XLA) and ``model.fit`` /
  ``model.evaluate`` / ``model.predict`` on an in-memory dataset of ``k * batch`` examples.
  The step time comes from batch callbacks: from the end of the first batch to the end of the
  last, divided by ``k - 1``, so the epoch's set-up (iterator creation) is excluded.
* ``keras_xla``: a custom step, ``tf.function(jit_compile=True)`` around a ``GradientTape``
  forward/backward and ``optimizer.apply`` (train), or the forward pass with the loss sum and
  correct count (eval) or softmax (predict); ``k`` calls are timed and the last result fetched.

``compile_s`` of a peer is the extra time of its first call over a timed one (tracing, graph
optimization, XLA compilation), an approximation of what JAX reports exactly.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402
from benchmarks.specs import ModelSpec  # noqa: E402

PEERS = ("keras_fit", "keras_xla")


def _keras():
  import keras
  import tensorflow as tf
  if keras.backend.backend() != "tensorflow":
    raise RuntimeError(f"the Keras peers need KERAS_BACKEND=tensorflow; Keras is using "
                       f"{keras.backend.backend()!r}")
  tf.config.set_visible_devices([], "GPU")  # Keep any accelerator for JAX.
  return keras, tf


def make_optimizer(cfg: dict):
  """The Keras optimizer matching ``optim.make_optimizer(cfg)`` (constant learning rate)."""
  keras, _ = _keras()
  if cfg["name"] in ("adam", "adamw"):
    # optax.adam's eps is 1e-8 (Keras defaults to 1e-7).
    return keras.optimizers.Adam(cfg["learning_rate"], beta_1=cfg.get("b1", 0.9),
                                 beta_2=cfg.get("b2", 0.999), epsilon=1e-8)
  if cfg["name"] == "sgd":
    return keras.optimizers.SGD(cfg["learning_rate"], momentum=cfg.get("momentum", 0.9))
  raise ValueError(f"no Keras peer for optimizer {cfg['name']!r}; expected 'adam' or 'sgd'")


class BatchTimer:
  """Keras callback recording when each train/test/predict batch ends."""

  def __init__(self, keras):
    timer = self

    class Callback(keras.callbacks.Callback):
      def on_train_batch_begin(self, batch, logs=None):
        timer._begin(batch)

      def on_test_batch_begin(self, batch, logs=None):
        timer._begin(batch)

      def on_predict_batch_begin(self, batch, logs=None):
        timer._begin(batch)

      def on_train_batch_end(self, batch, logs=None):
        timer.ends.append(time.perf_counter())

      def on_test_batch_end(self, batch, logs=None):
        timer.ends.append(time.perf_counter())

      def on_predict_batch_end(self, batch, logs=None):
        timer.ends.append(time.perf_counter())

    self.callback = Callback()
    self.start, self.ends = None, []

  def _begin(self, batch):
    if batch == 0:
      self.start, self.ends = time.perf_counter(), []

  def seconds_per_step(self) -> float:
    if len(self.ends) >= 2:
      return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)
    return self.ends[-1] - self.start


class KerasFitRunner:
  """``model.fit`` / ``evaluate`` / ``predict`` of the Keras twin, per-step time from callbacks."""
  framework = "keras_fit"

  def __init__(self, spec: ModelSpec, step: str, batch: int, host_batch: dict):
    self.spec, self.step, self.batch = spec, step, batch
    self._host_batch = host_batch

  def _data(self, k: int):
    reps = max(k, 1)
    return (np.concatenate([self._host_batch["image"]] * reps),
            np.concatenate([self._host_batch["label"]] * reps))

  def setup(self) -> dict:
    keras, _ = _keras()
    self.model = self.spec.make_keras()
    self.model.compile(optimizer=make_optimizer(self.spec.optimizer),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
    self.timer = BatchTimer(keras)
    first_s = self._epoch(2)
    again_s = self._epoch(2)
    return {"compile_s": max(first_s - again_s, 0.0),
            "flops_per_step": None, "compiled_memory_bytes": None,
            "notes": f"model.compile defaults (jit_compile resolved to "
                     f"{bool(self.model.jit_compile)})"}

  def _epoch(self, k: int) -> float:
    """Runs one ``fit``/``evaluate``/``predict`` call over ``k`` batches; returns its seconds."""
    x, y = self._data(k)
    kw = {"batch_size": self.batch, "verbose": 0, "callbacks": [self.timer.callback]}
    t0 = time.perf_counter()
    if self.step == "train":
      self.model.fit(x, y, epochs=1, **kw)
    elif self.step == "eval":
      self.model.evaluate(x, y, **kw)
    else:
      self.model.predict(x, **kw)
    return time.perf_counter() - t0

  def run(self, k: int) -> float:
    self._epoch(k)
    return self.timer.seconds_per_step() * k

  def memory(self):
    return None


class KerasXlaRunner:
  """A ``tf.function(jit_compile=True)`` step around the Keras twin."""
  framework = "keras_xla"

  def __init__(self, spec: ModelSpec, step: str, batch: int, host_batch: dict):
    self.spec, self.step, self.batch = spec, step, batch
    self._host_batch = host_batch

  def setup(self) -> dict:
    keras, tf = _keras()
    model = self.spec.make_keras()
    optimizer = make_optimizer(self.spec.optimizer)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    self.x = tf.constant(self._host_batch["image"])
    self.y = tf.constant(self._host_batch["label"])

    def accuracy(logits, y):
      return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y),
                                    tf.float32))

    if self.step == "train":
      def fn(x, y):
        with tf.GradientTape() as tape:
          logits = model(x, training=True)
          loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss, accuracy(logits, y)
    elif self.step == "eval":
      def fn(x, y):
        logits = model(x, training=False)
        per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return tf.reduce_sum(per_example), accuracy(logits, y)
    else:
      def fn(x, y):
        del y
        return tf.nn.softmax(model(x, training=False), axis=-1)
    self.fn = tf.function(fn, jit_compile=True)
    first_s = self.run(1)
    again_s = self.run(1)
    return {"compile_s": max(first_s - again_s, 0.0), "flops_per_step": None,
            "compiled_memory_bytes": None, "notes": "tf.function(jit_compile=True) custom step"}

  @staticmethod
  def _fetch(out):
    import tensorflow as tf
    return tf.nest.map_structure(lambda t: t.numpy(), out)

  def run(self, k: int) -> float:
    def go():
      out = None
      for _ in range(k):
        out = self.fn(self.x, self.y)
      self._fetch(out)
    seconds, _ = timing.time_call(go)
    return seconds

  def memory(self):
    return None


RUNNERS = {"keras_fit": KerasFitRunner, "keras_xla": KerasXlaRunner}


def make_runner(peer: str, spec: ModelSpec, step: str, batch: int, host_batch: dict):
  if peer not in RUNNERS:
    raise ValueError(f"unknown peer {peer!r}; expected one of {sorted(RUNNERS)} or 'none'")
  return RUNNERS[peer](spec, step, batch, host_batch)
