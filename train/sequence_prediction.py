"""Image-sequence prediction trainer (Moving-MNIST, ConvLSTM): ``train_and_evaluate``.

Reads ``config.data.num_input_frames`` frames of each sequence and predicts the rest; trained
with per-pixel sigmoid BCE against targets in ``[0, 1]`` (``jaxvision.training.sequence_steps``
defines the losses, metrics and baselines).

Data: ``jaxvision.data.moving_mnist.MovingMnist`` prepared into ``paths.tfds_dir()``, loaded
into memory and served by ``pipeline.make_array_train_iterator`` (the batch at step ``k`` is a
function of ``(config.seed, k)``; resume skips to it) and ``make_array_eval_iterator`` (every
test sequence exactly once).

Workdir layout::

    <workdir>/checkpoints/<step>/   Orbax steps (latest N + best by eval MSE)
    <workdir>/metrics.jsonl         one JSON record per log or eval
    <workdir>/tensorboard/          TensorBoard event files
    <workdir>/results.json          config, steps, timings and the final evaluation
    <workdir>/plots/curves.png      loss and MSE over steps
    <workdir>/plots/predictions.png inputs, targets and predictions of a few test sequences

Running the same command with the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision import models
from jaxvision.data import moving_mnist, paths, pipeline
from jaxvision.training import loop, optim, reporting, sharding, state as state_lib
from jaxvision.training import sequence_steps, steps as steps_lib
from train import classification

# Sequence models usable as ``config.model.name``.
FORECASTERS = {"ConvLSTMForecaster": models.ConvLSTMForecaster}
BUILDER_CONFIGS = ("default", "small", "custom")
CHECK_KEYS = ("model", "model_config", "input_shape")


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


def _example_fn(num_input_frames: int, num_frames: int):
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
  dtype = classification._dtype(config)  # pylint: disable=protected-access
  return FORECASTERS[name](num_output_frames=num_output_frames, dtype=dtype, **kwargs)


def evaluate_split(state, eval_step, frames: np.ndarray, *, example_fn, config, mesh) -> dict:
  """Evaluates every sequence of ``frames`` once; returns the ``eval`` results dict."""
  sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  batches = pipeline.make_array_eval_iterator(
      {"frames": frames}, example_fn, global_batch_size=config.eval_batch_size)
  totals = None
  for batch in batches:
    out = eval_step(state, sharding.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  count = int(totals["count"])
  if count != len(frames):
    raise RuntimeError(f"evaluation counted {count} sequences; the split has {len(frames)}")
  per_frame = {k[:-len("_sum")]: np.asarray(v, np.float64) / count
               for k, v in totals.items() if k.endswith("_sum")}
  ev = {"split": config.eval_split, "num_examples": count}
  for name, values in per_frame.items():
    ev[name] = float(values.mean())
    ev[f"per_frame_{name}"] = values.tolist()
  ev["mse_vs_baseline"] = ev["mse"] / ev["baseline_mse"] if ev["baseline_mse"] else float("nan")
  return ev


def _summary_line(step, ev) -> str:
  return (f"[eval] step {step}: {ev['split']} MSE {ev['mse']:.5f} BCE {ev['bce']:.4f} | "
          f"copy-last-frame MSE {ev['baseline_mse']:.5f} BCE {ev['baseline_bce']:.4f} | "
          f"blank MSE {ev['blank_mse']:.5f} ({ev['num_examples']} sequences)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` into ``workdir`` (resuming if it holds checkpoints); returns results."""
  if config.num_train_steps <= 0:
    raise ValueError(f"config.num_train_steps must be > 0; found {config.num_train_steps}")
  total_steps = int(config.num_train_steps)
  builder = make_builder(config.data)
  train_frames = load_split(builder, config.train_split)
  test_frames = load_split(builder, config.eval_split)
  num_frames = train_frames.shape[1]
  example_fn = _example_fn(config.data.num_input_frames, num_frames)

  with loop.session(config, workdir, best_metric="mse", best_mode="min") as run:
    mesh, start_step = run.mesh, run.start_step
    train_iter = pipeline.make_array_train_iterator(
        {"frames": train_frames}, example_fn, global_batch_size=config.batch_size,
        seed=config.seed, start_step=start_step)
    first = next(train_iter)
    input_shape = first["inputs"].shape[1:]
    model = create_model(config, num_frames - config.data.num_input_frames)
    meta = {"model": config.model.name,
            # JSON round trip: tuples become lists, as in the stored meta it is compared with.
            "model_config": json.loads(json.dumps(config.model.to_dict())),
            "input_shape": [int(d) for d in input_shape],
            "dataset": f"{builder.name}/{builder.builder_config.name}"}

    tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
    state = state_lib.create_train_state(model, tx, input_shape=input_shape,
                                         rng=jax.random.PRNGKey(config.seed), mesh=mesh)
    state = run.resume(state, meta, total_steps, check_keys=CHECK_KEYS)

    train_step, compile_seconds = loop.compile_step(
        steps_lib.jit_train_step(sequence_steps.make_train_step(), mesh), state, first, mesh)
    eval_step = steps_lib.jit_eval_step(sequence_steps.make_eval_step(), mesh)

    def evaluate(state):
      return evaluate_split(state, eval_step, test_frames, example_fn=example_fn, config=config,
                            mesh=mesh)

    eval_every = config.get("eval_every_steps", -1)
    state, last_eval, train_seconds = loop.run(
        state, train_step, itertools.chain([first], train_iter), mesh=mesh,
        start_step=start_step, total_steps=total_steps, batch_size=config.batch_size,
        writer=run.writer, checkpointer=run.checkpointer, meta=meta, schedule=schedule,
        evaluate=evaluate, summary_line=_summary_line, best_metric="mse",
        eval_scalars=lambda ev: {k: v for k, v in ev.items() if isinstance(v, float)},
        eval_every=eval_every if eval_every > 0 else total_steps,
        log_every=config.get("log_every_steps", 50),
        checkpoint_every=config.get("checkpoint_every_steps", -1),
        throughput_name="sequences_per_s", postfix=("loss", "mse"),
        disable_progress_bar=config.get("disable_progress_bar"))
    if last_eval is None:  # Already complete: evaluate what the checkpoint holds.
      last_eval = evaluate(state)
      print(_summary_line(int(state.step), last_eval))
    results = {
        "config": config.to_dict(),
        "dataset": {"name": builder.name, "builder_config": builder.builder_config.name,
                    "num_examples": {"train": len(train_frames), "test": len(test_frames)},
                    "frames": list(train_frames.shape[1:])},
        "steps": int(jax.device_get(state.step)),
        "resumed_from_step": start_step,
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "devices": mesh.devices.size,
        "baseline_bce_eps": sequence_steps.BASELINE_EPS,
        "eval": last_eval,
    }
    if jax.process_index() == 0:
      k = min(config.get("num_plot_sequences", 4), len(test_frames))
      inputs, targets = moving_mnist.split_inputs_targets(
          test_frames[:k].astype(np.float32) / 255.0, config.data.num_input_frames)
      predictions = np.asarray(jax.jit(sequence_steps.predict_step)(state, jnp.asarray(inputs)))
      _write_outputs(run.workdir, results, (inputs, targets, predictions))
    return results


def _write_outputs(workdir: pathlib.Path, results: dict, shown):
  (workdir / "results.json").write_text(json.dumps(results, indent=2))
  records = reporting.read_metrics(workdir / "metrics.jsonl")
  reporting.plot_curves(records, workdir / "plots" / "curves.png", metrics=("loss", "mse"))
  ev = results["eval"]
  plot_sequences(*shown, workdir / "plots" / "predictions.png",
                 title=(f"step {results['steps']}: test MSE {ev['mse']:.4f} "
                        f"(copy-last-frame {ev['baseline_mse']:.4f})"))


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
