"""Image-sequence prediction (next-frame forecasting): steps and the task
(``config.task = 'sequence_prediction'``, e.g. a ConvLSTM on Moving-MNIST).

Batch format: ``{'inputs': float [B, T_in, H, W, C], 'targets': float [B, T_out, H, W, C]}``
with pixel intensities in ``[0, 1]``, plus, for evaluation, ``'mask': bool [B]`` marking real
(not padding) sequences. The model maps ``inputs`` to per-pixel logits ``[B, T_out, H, W, C]``
(``(logits, intermediates) = model(inputs, train=...)``); ``sigmoid(logits)`` is the predicted
frame.

Losses and metrics (all averaged over pixels, then over frames and sequences):

* ``bce``: per-pixel sigmoid binary cross-entropy with soft targets,
  ``-[y log p + (1 - y) log(1 - p)]``, computed from the logits (stable for any logit). Its
  minimum is the targets' own entropy, not 0, since targets are grey levels.
* ``mse``: ``(sigmoid(logits) - y) ** 2``.
* Copy-last-frame baseline: every target frame is predicted as the last input frame. Its BCE
  clips that frame's pixels to ``[BASELINE_EPS, 1 - BASELINE_EPS]`` first (a pixel that is 0
  where the target is 1 would otherwise cost infinitely much), so each confidently wrong pixel
  costs at most ``-log(BASELINE_EPS)`` (6.9 nats).
* Blank baseline (``blank_mse``): every target frame predicted all zero, i.e. ``mean(y ** 2)``;
  on Moving-MNIST it is a stronger reference than copying the last frame for far-ahead frames.

Steps are pure functions of ``(state, batch)``; jit them over a mesh with ``training.jit``.

:class:`SequencePredictionTask` reads ``config.data.num_input_frames`` frames of each
sequence and predicts the rest. Data: ``jaxvision.data.moving_mnist.MovingMnist`` prepared
into ``paths.tfds_dir()``, loaded into memory and served by
``pipeline.make_array_train_iterator`` (the batch at step ``k`` is a function of
``(config.seed, k)``; resume skips to it) and ``make_array_eval_iterator`` (every test
sequence exactly once). Checkpoints are ranked by the lowest test MSE; outputs:
``plots/predictions.png`` (inputs, targets and predictions of a few test sequences). Modes:
``train`` and ``export`` (``jaxvision.export``: frames in, predicted frames out).
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision import export as export_lib
from jaxvision import models
from jaxvision.data import moving_mnist, paths, pipeline
from jaxvision.training import jit as jit_lib
from jaxvision.training import optim, sharding, state as state_lib, trainer
from jaxvision.training.task import Task, compute_dtype

BASELINE_EPS = 1e-3


def _frame_mean(x: jax.Array) -> jax.Array:
  """Mean over the pixel axes ``[B, T, H, W, C] -> [B, T]``."""
  return x.mean(axis=(2, 3, 4))


def _bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                            targets.astype(jnp.float32))


def bce_of_probabilities(probs: jax.Array, targets: jax.Array,
                         eps: float = BASELINE_EPS) -> jax.Array:
  """Per-pixel BCE of predicted intensities ``probs`` clipped to ``[eps, 1 - eps]``."""
  p = jnp.clip(probs.astype(jnp.float32), eps, 1.0 - eps)
  y = targets.astype(jnp.float32)
  return -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))


def copy_last_frame(inputs: jax.Array, num_output_frames: int) -> jax.Array:
  """The copy-last-frame forecast: ``inputs[:, -1]`` repeated ``num_output_frames`` times."""
  last = inputs[:, -1:]
  return jnp.broadcast_to(last, (last.shape[0], num_output_frames, *last.shape[2:]))


def _check_batch(logits, targets):
  if logits.shape != targets.shape:
    raise ValueError(f"the model predicts frames of shape {logits.shape[1:]} but the targets "
                     f"have shape {targets.shape[1:]}; set the model's num_output_frames to "
                     f"the number of target frames")


def make_train_step():
  """Returns ``train_step(state, batch) -> (state, metrics)`` minimizing the mean BCE.

  Dropout (if the model has any) draws from ``fold_in(state.rng, state.step)``. Metrics
  (batch means): ``loss`` (BCE), ``mse``, ``grad_norm``.
  """

  def train_step(state, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      logits, _ = state.apply_fn({"params": params}, batch["inputs"], train=True,
                                 rngs={"dropout": step_rng})
      _check_batch(logits, batch["targets"])
      return _bce_with_logits(logits, batch["targets"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    mse = jnp.mean((jax.nn.sigmoid(logits.astype(jnp.float32)) - batch["targets"]) ** 2)
    return new_state, {"loss": loss, "mse": mse, "grad_norm": optax.tree.norm(grads)}

  return train_step


def make_eval_step():
  """Returns ``eval_step(state, batch) -> sums`` over the valid sequences of the batch.

  ``sums``: ``count`` (int32) and, each ``[T_out]`` (per target frame, summed over sequences of
  per-frame pixel means), ``mse_sum``, ``bce_sum``, ``baseline_mse_sum``, ``baseline_bce_sum``,
  ``blank_mse_sum``. Padded sequences (``mask == False``) contribute nothing; a batch without
  ``mask`` counts every sequence.
  """

  def eval_step(state, batch):
    inputs, targets = batch["inputs"], batch["targets"]
    logits, _ = state.apply_fn({"params": state.params}, inputs, train=False)
    _check_batch(logits, targets)
    valid = batch.get("mask")
    if valid is None:  # no padding: every sequence counts
      valid = jnp.ones(inputs.shape[:1], bool)
    mask = valid.astype(jnp.float32)[:, None]  # [B, 1]
    targets = targets.astype(jnp.float32)
    pred = jax.nn.sigmoid(logits.astype(jnp.float32))
    baseline = copy_last_frame(inputs, targets.shape[1]).astype(jnp.float32)

    def masked_sum(per_pixel):
      return (_frame_mean(per_pixel) * mask).sum(axis=0)  # [T_out]

    return {
        "count": valid.sum().astype(jnp.int32),
        "mse_sum": masked_sum((pred - targets) ** 2),
        "bce_sum": masked_sum(_bce_with_logits(logits, targets)),
        "baseline_mse_sum": masked_sum((baseline - targets) ** 2),
        "baseline_bce_sum": masked_sum(bce_of_probabilities(baseline, targets)),
        "blank_mse_sum": masked_sum(targets ** 2),
    }

  return eval_step


def predict_step(state, inputs: jax.Array) -> jax.Array:
  """Predicted frames ``sigmoid(logits)`` float32 ``[B, T_out, H, W, C]`` in ``[0, 1]``."""
  logits, _ = state.apply_fn({"params": state.params}, inputs, train=False)
  return jax.nn.sigmoid(logits.astype(jnp.float32))


# Sequence models usable as ``config.model.name``.
FORECASTERS = {"ConvLSTMForecaster": models.ConvLSTMForecaster}
BUILDER_CONFIGS = ("default", "small", "custom")


def make_builder(data: ml_collections.ConfigDict) -> moving_mnist.MovingMnist:
  """A prepared ``MovingMnist`` builder for ``config.data``.

  ``builder_config`` 'default' or 'small' uses the builder's own configs; 'custom' sizes it with
  ``num_train``, ``num_test``, ``data_seed``, ``num_frames`` and ``frame_size`` under a name
  holding a hash of them and of the digits' folder, so different settings never share prepared
  records.
  """
  name = data.get("builder_config", "custom")
  if name not in BUILDER_CONFIGS:
    raise ValueError(f"config.data.builder_config must be one of {BUILDER_CONFIGS}; "
                     f"found {name!r}")
  mnist_dir = pathlib.Path(data.get("mnist_dir") or paths.local_dataset_dir("mnist")).resolve()
  if name == "custom":
    sizes = {"num_train": data.num_train, "num_test": data.num_test, "seed": data.data_seed,
             "num_frames": data.get("num_frames", moving_mnist.NUM_FRAMES),
             "frame_size": data.get("frame_size", moving_mnist.FRAME_SIZE)}
    digest = hashlib.sha1(repr((str(mnist_dir), sorted(sizes.items()))).encode()).hexdigest()
    config = moving_mnist.MovingMnistConfig(
        name=f"custom_{data.num_train}_{data.num_test}_{digest[:10]}",
        description=f"{data.num_train} train / {data.num_test} test sequences from {mnist_dir}",
        **sizes)
  else:
    config = name
  builder = moving_mnist.MovingMnist(config=config, mnist_dir=mnist_dir)
  builder.download_and_prepare()
  return builder


def load_split(builder, split: str) -> np.ndarray:
  """The split's frames in stored order: uint8 ``[N, T, H, W, C]``."""
  ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
  frames = tfds.as_numpy(ds)["frames"]
  if not len(frames):
    raise ValueError(f"split {split!r} of {builder.name}/{builder.builder_config.name} is empty")
  return frames


def make_example_fn(num_input_frames: int, num_frames: int):
  """``fn({'frames': uint8 [T, H, W, C]}, rng) -> {'inputs', 'targets'}`` floats in [0, 1]."""
  if not 0 < num_input_frames < num_frames:
    raise ValueError(f"config.data.num_input_frames must be in [1, {num_frames - 1}] for "
                     f"sequences of {num_frames} frames; found {num_input_frames}")

  def fn(example, rng):
    del rng  # No augmentation.
    frames = tf.cast(example["frames"], tf.float32) / 255.0
    inputs, targets = moving_mnist.split_inputs_targets(frames, num_input_frames)
    return {"inputs": inputs, "targets": targets}

  return fn


def create_model(config, num_output_frames: int):
  """Builds ``config.model`` (``name`` plus constructor keywords) for ``num_output_frames``."""
  name = config.model.name
  if name not in FORECASTERS:
    raise ValueError(f"unknown sequence model {name!r}; known: {sorted(FORECASTERS)}")
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  configured = kwargs.pop("num_output_frames", num_output_frames)
  if configured != num_output_frames:
    raise ValueError(f"config.model.num_output_frames={configured} but the data has "
                     f"{num_output_frames} target frames per sequence")
  return FORECASTERS[name](num_output_frames=num_output_frames, dtype=compute_dtype(config),
                           **kwargs)


class Evaluator:
  """Evaluates every sequence of ``frames`` once: ``run(state) -> eval dict`` with the mean
  and per-frame ``mse``, ``bce``, the baselines' and ``mse_vs_baseline``."""

  def __init__(self, frames: np.ndarray, *, example_fn, split: str, batch_size: int, mesh):
    sharding.check_batch_size(batch_size, mesh, "eval_batch_size")
    self.frames, self.split, self.mesh = frames, split, mesh
    self._batches = pipeline.make_array_eval_iterator(
        {"frames": frames}, example_fn, global_batch_size=batch_size)
    self._step = jit_lib.jit_eval_step(make_eval_step(), mesh)

  def run(self, state) -> dict:
    totals = trainer.sum_over_batches(self._step, state, self._batches, self.mesh)
    count = int(totals["count"])
    if count != len(self.frames):
      raise RuntimeError(f"evaluation counted {count} sequences; the split has "
                         f"{len(self.frames)}")
    per_frame = {k[:-len("_sum")]: np.asarray(v, np.float64) / count
                 for k, v in totals.items() if k.endswith("_sum")}
    ev = {"split": self.split, "step": int(jax.device_get(state.step)), "num_examples": count}
    for name, values in per_frame.items():
      ev[name] = float(values.mean())
      ev[f"per_frame_{name}"] = values.tolist()
    ev["mse_vs_baseline"] = (ev["mse"] / ev["baseline_mse"] if ev["baseline_mse"]
                             else float("nan"))
    return ev


class SequencePredictionTask(Task):
  """Frame forecasting on Moving-MNIST (see the module docstring).

  Config fields: ``data`` (``builder_config``, sizes, ``mnist_dir``, ``num_input_frames``),
  ``model`` (a name in :data:`FORECASTERS` plus keywords), ``optimizer``,
  ``num_train_steps``, ``batch_size``/``eval_batch_size``, ``eval_every_steps``,
  ``train_split``/``eval_split``, ``num_plot_sequences``, ``seed``, ``dtype``.
  """
  name = "sequence_prediction"
  modes = ("train", "export")  # training ends with the test evaluation
  best_metric, best_mode = "mse", "min"
  check_keys = ("model", "model_config", "input_shape")
  progress_metrics = ("loss", "mse")
  throughput_name = "sequences_per_s"

  def prepare(self):
    config = self.config
    self.total_steps()  # checks num_train_steps before the data is generated
    if config.model.name not in FORECASTERS:
      raise ValueError(f"config.model.name must be one of {sorted(FORECASTERS)}; found "
                       f"{config.model.name!r}")
    self.builder = make_builder(config.data)
    self.train_frames = load_split(self.builder, config.train_split)
    self.test_frames = load_split(self.builder, config.eval_split)
    self.example_fn = make_example_fn(config.data.num_input_frames, self.train_frames.shape[1])

  def train_batches(self, start_step: int):
    config = self.config
    return pipeline.make_array_train_iterator(
        {"frames": self.train_frames}, self.example_fn, global_batch_size=config.batch_size,
        seed=config.seed, start_step=start_step)

  def _model(self):
    return create_model(self.config,
                        self.train_frames.shape[1] - self.config.data.num_input_frames)

  def create_state(self, example_batch, mesh, *, abstract: bool):
    config = self.config
    input_shape = example_batch["inputs"].shape[1:]
    meta = {"model": config.model.name,
            # JSON round trip: tuples become lists, as in the stored meta it is compared with.
            "model_config": json.loads(json.dumps(config.model.to_dict())),
            "input_shape": [int(d) for d in input_shape],
            "dataset": f"{self.builder.name}/{self.builder.builder_config.name}"}
    tx, self._schedule = optim.make_optimizer(config.optimizer, self.total_steps())
    state = state_lib.create_train_state(self._model(), tx, input_shape=input_shape,
                                         rng=jax.random.PRNGKey(config.seed), mesh=mesh,
                                         abstract=abstract)
    return state, meta

  def make_train_step(self):
    return make_train_step()

  def learning_rate(self, step: int) -> float:
    return float(self._schedule(step))

  def make_evaluator(self, run) -> Evaluator:
    config = self.config
    return Evaluator(self.test_frames, example_fn=self.example_fn, split=config.eval_split,
                     batch_size=config.eval_batch_size, mesh=run.mesh)

  def summary_line(self, ev: dict) -> str:
    return (f"[eval] step {ev['step']}: {ev['split']} MSE {ev['mse']:.5f} BCE {ev['bce']:.4f} "
            f"| copy-last-frame MSE {ev['baseline_mse']:.5f} BCE {ev['baseline_bce']:.4f} | "
            f"blank MSE {ev['blank_mse']:.5f} ({ev['num_examples']} sequences)")

  def results_info(self, run) -> dict:
    return {"dataset": {"name": self.builder.name,
                        "builder_config": self.builder.builder_config.name,
                        "num_examples": {"train": len(self.train_frames),
                                         "test": len(self.test_frames)},
                        "frames": list(self.train_frames.shape[1:])},
            "baseline_bce_eps": BASELINE_EPS}

  def write_outputs(self, run, state, results: dict):
    config = self.config
    k = min(config.get("num_plot_sequences", 4), len(self.test_frames))
    inputs, targets = moving_mnist.split_inputs_targets(
        self.test_frames[:k].astype(np.float32) / 255.0, config.data.num_input_frames)
    predictions = np.asarray(jax.jit(predict_step)(state, jnp.asarray(inputs)))
    ev = results["eval"]
    plot_sequences(inputs, targets, predictions, run.workdir / "plots" / "predictions.png",
                   title=(f"step {results['steps']}: test MSE {ev['mse']:.4f} "
                          f"(copy-last-frame {ev['baseline_mse']:.4f})"))

  def restore_target(self, meta: dict, mesh):
    if not hasattr(self, "train_frames"):
      self.prepare()
    tx, _ = optim.make_optimizer(self.config.optimizer, self.total_steps())
    state = state_lib.create_train_state(self._model(), tx, input_shape=meta["input_shape"],
                                         rng=jax.random.PRNGKey(0), mesh=mesh, abstract=True)
    expected = {"model": self.config.model.name,
                "model_config": json.loads(json.dumps(self.config.model.to_dict())),
                "input_shape": meta["input_shape"]}
    return state, expected


  def serving(self, state, meta: dict):
    """float32 frames ``[N, T_in, H, W, C]`` in [0, 1] (stored uint8 / 255) to the predicted
    frames ``sigmoid(logits)`` ``[N, T_out, H, W, C]`` (see ``export.sequence_serving``)."""
    return export_lib.sequence_serving(self._model(), {"params": state.params},
                                       input_shape=meta["input_shape"], name=meta["model"])

  export = export_lib.export_mode


def plot_sequences(inputs, targets, predictions, path, *, title: str = ""):
  """A PNG strip per sequence: a row of inputs, a row of targets, a row of predictions.

  Args:
    inputs: ``[S, T_in, H, W, 1]`` in ``[0, 1]``.
    targets, predictions: ``[S, T_out, H, W, 1]`` in ``[0, 1]``.
    path: output PNG.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  s, t_in = inputs.shape[:2]
  t_out = targets.shape[1]
  cols = max(t_in, t_out)
  fig, axes = plt.subplots(3 * s, cols, figsize=(1.1 * cols, 1.2 * 3 * s), squeeze=False)
  for i in range(s):
    rows = (("input", inputs[i], 0), ("target", targets[i], t_in),
            ("predicted", predictions[i], t_in))
    for r, (label, frames, first_t) in enumerate(rows):
      for c in range(cols):
        ax = axes[3 * i + r, c]
        ax.set_xticks([])
        ax.set_yticks([])
        if c < len(frames):
          ax.imshow(frames[c, ..., 0], cmap="gray", vmin=0.0, vmax=1.0)
          if i == 0 and r < 2:
            ax.set_title(f"t={first_t + c + 1}", fontsize=7)
        else:
          ax.axis("off")
        if c == 0:
          ax.set_ylabel(f"#{i} {label}", fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
