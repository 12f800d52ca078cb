"""Image-classification trainer: ``train_and_evaluate``, ``evaluate`` and ``predict``.

Workdir layout::

    <workdir>/checkpoints/<step>/   Orbax steps (latest N + best by eval accuracy)
    <workdir>/metrics.jsonl         one JSON record per log or eval
    <workdir>/tensorboard/          TensorBoard event files
    <workdir>/results.json          config, steps, timings and the final evaluation
    <workdir>/plots/curves.png      loss and accuracy over steps
    <workdir>/plots/confusion_matrix.png

Running the same command with the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxvision import models
from jaxvision.data import images as image_io
from jaxvision.data import pipeline
from jaxvision.metrics import classification as cls_metrics
from jaxvision.training import checkpoint as ckpt_lib
from jaxvision.training import loop, optim, reporting, sharding, state as state_lib
from jaxvision.training import steps as steps_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


DivergenceError = loop.DivergenceError  # The training loss became NaN or infinite.


def _dtype(config):
  name = config.get("dtype", "float32")
  if name not in DTYPES:
    raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}; found {name!r}")
  return DTYPES[name]


def create_model(config, num_classes: int):
  """Builds ``config.model`` (``name`` plus constructor keywords) for ``num_classes``."""
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  return models.create_model(config.model.name, num_classes=num_classes, dtype=_dtype(config),
                             **kwargs)


def _meta(config, info: pipeline.DatasetInfo, input_shape) -> dict:
  return {
      "model": config.model.name,
      "model_config": config.model.to_dict(),
      "num_classes": info.num_classes,
      "class_names": list(info.class_names),
      "input_shape": [int(d) for d in input_shape],
      "dataset": info.name,
      "dataset_image_shape": [int(d) for d in info.image_shape],
      "pp_eval": config.pp_eval,
  }


def _check_input_shape(config, input_shape):
  expected = config.get("input_shape")
  if expected and tuple(expected) != tuple(input_shape):
    raise ValueError(
        f"the model is configured for images of shape {tuple(expected)} (config.input_shape) but "
        f"the input pipeline produces {tuple(input_shape)}; fix config.pp_train/pp_eval or "
        f"config.input_shape")


def total_train_steps(config, info, split) -> int:
  if config.get("num_train_steps", -1) > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * pipeline.steps_per_epoch(info, split, config.batch_size))


def evaluate_split(state, eval_step, *, builder, info, split, config, mesh) -> dict:
  """Evaluates every example of ``split`` exactly once; returns the ``eval`` results dict."""
  sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  batches = pipeline.make_eval_iterator(builder, info, split=split,
                                        global_batch_size=config.eval_batch_size,
                                        pp=config.pp_eval)
  totals = None
  for batch in batches:
    out = eval_step(state, sharding.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  count = int(totals["count"])
  expected = info.num_examples.get(split)
  if expected is not None and count != expected:
    raise RuntimeError(f"evaluation of split {split!r} counted {count} examples; "
                       f"the split has {expected}")
  report = cls_metrics.classification_report(totals["confusion_matrix"], info.class_names)
  return {
      "split": split,
      "num_examples": count,
      "loss": float(totals["loss_sum"]) / max(count, 1),
      "accuracy": report["accuracy"],
      "macro_f1": report["macro_f1"],
      "per_class": report["per_class"],
      "confusion_matrix": np.asarray(totals["confusion_matrix"]).tolist(),
  }


def _summary_line(step, ev) -> str:
  return (f"[eval] step {step}: {ev['split']} accuracy {ev['accuracy']:.4f} "
          f"loss {ev['loss']:.4f} macro-F1 {ev['macro_f1']:.4f} ({ev['num_examples']} examples)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` into ``workdir`` (resuming if it holds checkpoints); returns results."""
  with loop.session(config, workdir, best_metric="accuracy", best_mode="max") as run:
    mesh = run.mesh
    builder, info = pipeline.get_dataset(config.dataset, data_dir=config.get("data_dir"))
    total_steps = total_train_steps(config, info, config.train_split)
    train_iter = pipeline.make_train_iterator(
        builder, info, split=config.train_split, global_batch_size=config.batch_size,
        pp=config.pp_train, seed=config.seed, start_step=run.start_step)
    first = next(train_iter)
    input_shape = first["image"].shape[1:]
    _check_input_shape(config, input_shape)
    meta = _meta(config, info, input_shape)

    model = create_model(config, info.num_classes)
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps)
    state = state_lib.create_train_state(model, tx, input_shape=input_shape,
                                         rng=jax.random.PRNGKey(config.seed), mesh=mesh)
    state = run.resume(state, meta, total_steps)

    train_step, compile_seconds = loop.compile_step(
        steps_lib.jit_train_step(
            steps_lib.make_train_step(label_smoothing=config.get("label_smoothing", 0.0)),
            mesh), state, first, mesh)
    eval_step = steps_lib.jit_eval_step(steps_lib.make_eval_step(info.num_classes), mesh)

    eval_every = config.get("eval_every_steps", -1)
    if eval_every <= 0:
      eval_every = pipeline.steps_per_epoch(info, config.train_split, config.batch_size)

    def evaluate(state):
      return evaluate_split(state, eval_step, builder=builder, info=info,
                            split=config.eval_split, config=config, mesh=mesh)

    state, last_eval, train_seconds = loop.run(
        state, train_step, itertools.chain([first], train_iter), mesh=mesh,
        start_step=run.start_step, total_steps=total_steps, batch_size=config.batch_size,
        writer=run.writer, checkpointer=run.checkpointer, meta=meta, schedule=schedule,
        evaluate=evaluate, summary_line=_summary_line, best_metric="accuracy",
        eval_scalars=lambda ev: {k: ev[k] for k in ("loss", "accuracy", "macro_f1")},
        eval_every=eval_every, log_every=config.get("log_every_steps", 50),
        checkpoint_every=config.get("checkpoint_every_steps", -1),
        postfix=("loss", "accuracy"), disable_progress_bar=config.get("disable_progress_bar"))
    if last_eval is None:  # Already complete: evaluate what the checkpoint holds.
      last_eval = evaluate(state)
      print(_summary_line(int(state.step), last_eval))
    results = {
        "config": config.to_dict(),
        "dataset": {"name": info.name, "source": info.source,
                    "num_examples": dict(info.num_examples)},
        "steps": int(jax.device_get(state.step)),
        "resumed_from_step": run.start_step,
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "devices": mesh.devices.size,
        "eval": last_eval,
    }
    if jax.process_index() == 0:
      _write_outputs(run.workdir, results, info)
    return results


def _write_outputs(workdir: pathlib.Path, results: dict, info):
  (workdir / "results.json").write_text(json.dumps(results, indent=2))
  records = reporting.read_metrics(workdir / "metrics.jsonl")
  reporting.plot_curves(records, workdir / "plots" / "curves.png")
  ev = results["eval"]
  reporting.plot_confusion_matrix(
      ev["confusion_matrix"], info.class_names, workdir / "plots" / "confusion_matrix.png",
      title=f"{info.name} {ev['split']}: accuracy {ev['accuracy']:.4f}")


def _restore_for_inference(config, workdir, which: str):
  """Restores the best or latest checkpoint of ``workdir`` with its recorded meta."""
  ckpt_dir = pathlib.Path(workdir).resolve() / "checkpoints"
  if not ckpt_dir.is_dir():
    raise FileNotFoundError(f"no checkpoints in {ckpt_dir}: train into this workdir first")
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir, async_save=False)
  try:
    if which not in ("best", "latest"):
      raise ValueError(f"checkpoint must be 'best' or 'latest'; found {which!r}")
    step = checkpointer.best_step() if which == "best" else checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    meta = checkpointer.read_meta(step)
    if meta.get("model") != config.model.name:
      raise ckpt_lib.CheckpointMismatchError(
          f"checkpoint {ckpt_dir}/{step} holds a {meta.get('model')!r} model; the config asks "
          f"for {config.model.name!r}")
    mesh = sharding.make_mesh(config.get("num_devices"))
    model = create_model(config, meta["num_classes"])
    tx, _ = optim.make_optimizer(config.optimizer, max(total_steps_hint(config), 1))
    state = state_lib.create_train_state(model, tx, input_shape=meta["input_shape"],
                                         rng=jax.random.PRNGKey(0), mesh=mesh)
    state = checkpointer.restore(step, state, meta)
    return state, meta, step, mesh
  finally:
    checkpointer.close()


def total_steps_hint(config) -> int:
  """Schedule length for restoring only (the optimizer state's shapes do not depend on it)."""
  return int(config.get("num_train_steps", -1) if config.get("num_train_steps", -1) > 0 else 1000)


def evaluate(config, workdir, *, split: str | None = None, checkpoint: str = "best") -> dict:
  """Evaluates the workdir's best (or latest) checkpoint on ``split``; writes eval_<split>.json."""
  split = split or config.eval_split
  state, meta, step, mesh = _restore_for_inference(config, workdir, checkpoint)
  builder, info = pipeline.get_dataset(config.dataset, data_dir=config.get("data_dir"))
  if list(info.image_shape) != list(meta["dataset_image_shape"]):
    raise ValueError(
        f"checkpoint expects dataset images of shape {tuple(meta['dataset_image_shape'])}; "
        f"dataset {info.name!r} has {tuple(info.image_shape)}")
  eval_step = steps_lib.jit_eval_step(steps_lib.make_eval_step(meta["num_classes"]), mesh)
  ev = evaluate_split(state, eval_step, builder=builder, info=info, split=split, config=config,
                      mesh=mesh)
  print(_summary_line(step, ev))
  out = {"checkpoint_step": step, "checkpoint": checkpoint, "eval": ev}
  if jax.process_index() == 0:
    (pathlib.Path(workdir) / f"eval_{split}.json").write_text(json.dumps(out, indent=2))
  return out


def predict(config, workdir, image_paths, *, top_k: int = 3, checkpoint: str = "best") -> list:
  """Classifies image files with the workdir's checkpoint; returns top-k labels per file."""
  if not image_paths:
    raise ValueError("no images given: pass --images=a.png,b.jpg")
  state, meta, _, _ = _restore_for_inference(config, workdir, checkpoint)
  images = image_io.load_images(image_paths, image_shape=tuple(meta["dataset_image_shape"]),
                                pp=meta["pp_eval"])
  if list(images.shape[1:]) != list(meta["input_shape"]):
    raise ValueError(f"the model expects images of shape {tuple(meta['input_shape'])} after "
                     f"preprocessing; found {tuple(images.shape[1:])}")
  probs = np.asarray(jax.jit(steps_lib.predict_step)(state, jnp.asarray(images)))
  names = meta["class_names"]
  k = min(top_k, len(names))
  results = []
  for path, p in zip(image_paths, probs):
    order = np.argsort(-p, kind="stable")[:k]
    results.append({"file": str(path),
                    "top_k": [{"label": names[i], "class_id": int(i),
                               "probability": float(p[i])} for i in order]})
  return results


def load_classifier(workdir, *, checkpoint: str = "best", config=None):
  """Restores a trained classifier for inference, e.g. to measure generated images.

  Args:
    workdir: a classification workdir (``checkpoints/`` and, unless ``config`` is given, the
      ``results.json`` of its completed run, which records the config it was trained with).
    checkpoint: ``'best'`` or ``'latest'``.
    config: the training config; default: ``results.json``'s ``config``.

  Returns:
    ``(apply_fn, variables, meta)``: ``apply_fn(variables, x, train=False)`` gives
    ``(logits, {'pre_logits': ...})`` for images preprocessed with ``meta['pp_eval']`` from
    stored images of shape ``meta['dataset_image_shape']``; ``meta`` also holds
    ``num_classes``, ``class_names``, ``dataset`` and ``checkpoint_step``.
  """
  workdir = pathlib.Path(workdir).resolve()
  if config is None:
    results = workdir / "results.json"
    if not results.is_file():
      raise FileNotFoundError(
          f"no results.json in classifier workdir {workdir}: finish its training run (e.g. "
          f"python -m train.main --config=train/configs/mnist_cnn.py --workdir={workdir}) or "
          f"pass its config")
    config = ml_collections.ConfigDict(json.loads(results.read_text())["config"])
  state, meta, step, _ = _restore_for_inference(config, workdir, checkpoint)
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return state.apply_fn, variables, dict(meta, checkpoint_step=step)
