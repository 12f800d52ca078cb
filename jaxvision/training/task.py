"""The task protocol: what the one trainer (``training.trainer``) needs to know about a task.

A task is a kind of model plus its data, step, evaluation and outputs (classification,
sequence prediction, GAN, ...), the way scenic's base models and big_vision's evaluators
split the work: the trainer owns everything every run shares (workdir, mesh, resume,
ahead-of-time compilation, the step loop, logging, NaN stop, checkpoints ranked by the
task's metric, ``results.json``, ``metrics.jsonl``, TensorBoard, curves), and a task only
says what is specific to it. A subclass of :class:`Task` fills in, in the order the trainer
calls them:

1. :meth:`Task.prepare`: host set-up before any long work (load the dataset, check the
   config; bad input fails here with a clear error).
2. :meth:`Task.total_steps`, :meth:`Task.train_batches` (host-local batches from a step on).
3. :meth:`Task.create_state`: the train state (abstract when resuming: a restore target) and
   the checkpoint ``meta`` (a JSON dict; :attr:`Task.check_keys` of it must match on resume).
4. :meth:`Task.on_start`: anything before the first step (e.g. the GAN's first clustering).
5. :meth:`Task.make_train_step`: the pure ``(state, batch) -> (state, metrics)``.
6. :meth:`Task.make_evaluator`: an :class:`Evaluator` (``run(state) -> dict``) run every
   :meth:`Task.eval_every` steps and at the end; ``eval[best_metric]`` ranks checkpoints.
7. :meth:`Task.hooks`: periodic :class:`Hook` actions besides evaluation.
8. :meth:`Task.results_info` and :meth:`Task.write_outputs` (plots, sample grids).

Restore for inference: :meth:`Task.restore_target` gives the abstract state and the expected
meta for a stored checkpoint (``trainer.restore`` does the rest). Modes other than ``train``
(``evaluate``, ``predict``, ``generate``, ``export``) are methods named like the mode, listed
in :attr:`Task.modes`; ``train/main.py`` calls them with the matching flags.

Serving (optional): :meth:`Task.serving` gives the inference function of a restored state as
a :class:`ServingSpec` (its named, batched inputs and outputs); ``jaxvision.export`` writes it
as StableHLO, a TensorFlow SavedModel, TFLite and ONNX (``--mode=export``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax.numpy as jnp
import ml_collections

# ``Run`` below is ``jaxvision.training.trainer.Run`` (the open run: workdir, mesh,
# checkpointer, writer, start and total steps, ``replace_batches``).
Run = Any
Batch = Mapping[str, Any]


class Evaluator(Protocol):
  """Evaluates a train state: ``run(state) -> dict`` (host-side reductions allowed)."""

  def run(self, state) -> dict:
    ...


@dataclasses.dataclass
class Hook:
  """A periodic action of the step loop, run after the evaluation due at the same step.

  Attributes:
    name: shown in logs.
    every: run after every ``every`` steps (never when <= 0).
    fn: ``fn(run, state, step) -> state`` (may return a changed state, and may replace the
      train batches with ``run.replace_batches``).
    at_last_step: also run after the last step (default: not).
    checkpoint: save a checkpoint after it runs (its state is what the next steps use).
  """
  name: str
  every: int
  fn: Callable[[Any, Any, int], Any]
  at_last_step: bool = False
  checkpoint: bool = False

  def due(self, step: int, total_steps: int) -> bool:
    return self.every > 0 and step % self.every == 0 and (self.at_last_step
                                                          or step < total_steps)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One input of a served function.

  Attributes:
    name: the input's name in every exported format (a Python identifier).
    shape: ``(None, *dims)``: the first axis is the batch (any size), the rest fixed.
    dtype: ``'uint8'``, ``'float32'`` or ``'int32'``.
    minval, maxval: the valid values, for example inputs (integers: ``[minval, maxval]``;
      floats: uniform in ``[minval, maxval]``, or standard normal when both are None).
  """
  name: str
  shape: tuple[int | None, ...]
  dtype: str
  minval: float | None = None
  maxval: float | None = None


@dataclasses.dataclass(frozen=True)
class ServingSpec:
  """A task's inference function, ready to export (``jaxvision.export``).

  Attributes:
    fn: ``fn(variables, *inputs) -> {output name: array [N, ...]}``, inputs in the order of
      ``inputs``; a pure JAX function of fixed shapes but the batch (any preprocessing of the
      inputs included, so exported models take what the dataset stores, e.g. uint8 images).
    variables: the model's variables (a pytree of arrays; constants of the exported programs).
    inputs: the inputs' :class:`TensorSpec`.
    outputs: the names of ``fn``'s outputs, in the order they are listed.
    name: the model's name (for summaries).
    metadata: JSON-serialisable facts a user of the export needs (class names, the
      preprocessing applied inside ``fn``, the latent size, ...).
  """
  fn: Callable[..., Mapping[str, Any]]
  variables: Any
  inputs: tuple[TensorSpec, ...]
  outputs: tuple[str, ...]
  name: str
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Task:
  """Base class of the tasks (see the module docstring for the protocol).

  Class attributes a subclass sets:
    name: the registry name (``config.task``).
    modes: CLI modes it supports; each mode but ``train`` is a method of that name.
    best_metric, best_mode: the eval key that ranks checkpoints, ``'max'`` or ``'min'``.
    check_keys: meta keys that must equal the checkpoint's to resume or restore.
    guarded_metrics: train metrics that must stay finite (NaN/inf stops the run).
    divergence_hint: the remedy named when they do not.
    progress_metrics: train metrics shown on the progress bar and log lines.
    throughput_name: name of the examples-per-second figure.
    train_onednn: whether the train step may use the CPU backend's oneDNN convolutions.
  """
  name: str = ""
  modes: tuple[str, ...] = ("train",)
  best_metric: str = "loss"
  best_mode: str = "min"
  check_keys: tuple[str, ...] = ("model", "input_shape")
  guarded_metrics: tuple[str, ...] = ("loss", "grad_norm")
  divergence_hint: str = "lower optimizer.learning_rate or enable grad_clip_norm"
  progress_metrics: tuple[str, ...] = ("loss",)
  throughput_name: str = "examples_per_s"
  train_onednn: bool = True

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  # -- Training, in the order the trainer calls these. ------------------------------------------

  def prepare(self) -> None:
    """Host set-up before the run opens (datasets, config checks). Default: nothing."""

  def steps_per_epoch(self) -> int | None:
    """Train steps in one pass over the train split, or None (the default) where a task has
    no epochs (``config.num_epochs`` is then not read)."""
    return None

  def total_steps(self) -> int:
    """Number of train steps of the run: ``config.num_train_steps`` when > 0, else
    ``config.num_epochs`` epochs of :meth:`steps_per_epoch` (at least one step)."""
    steps = int(self.config.get("num_train_steps", -1))
    if steps > 0:
      return steps
    per_epoch = self.steps_per_epoch()
    if per_epoch is None:
      raise ValueError(f"config.num_train_steps must be > 0; found {steps}")
    return max(1, int(self.config.num_epochs * per_epoch))

  def eval_every(self) -> int:
    """Steps between evaluations: ``config.eval_every_steps`` when > 0, else once per epoch
    (or only at the end where the task has no epochs)."""
    every = int(self.config.get("eval_every_steps", -1))
    if every > 0:
      return every
    return self.steps_per_epoch() or self.total_steps()

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    """Endless host-local train batches; the first is the batch of step ``start_step + 1``
    (a function of the seed and the step only, so a resumed run sees what an uninterrupted
    run sees)."""
    raise NotImplementedError

  def create_state(self, example_batch: Batch, mesh, *, abstract: bool) -> tuple[Any, dict]:
    """``(state, meta)``: the initial train state, replicated on ``mesh`` (only shapes and
    shardings when ``abstract``: a restore target), and the checkpoint's JSON metadata."""
    raise NotImplementedError

  def on_start(self, run: Run, state):
    """Called once before the first step (after resuming); returns the state to train."""
    del run
    return state

  def make_train_step(self) -> Callable:
    """The pure ``train_step(state, batch) -> (state, metrics)`` (scalar metrics)."""
    raise NotImplementedError

  def learning_rate(self, step: int) -> float | None:
    """The learning rate at ``step`` (logged when not None). Default: None."""
    del step
    return None

  def make_evaluator(self, run: Run) -> Evaluator:
    """The evaluator of the run (``run(state) -> dict``)."""
    raise NotImplementedError

  def summary_line(self, ev: dict) -> str:
    """One line printed after each evaluation. Default: the float values."""
    return "[eval] " + " ".join(f"{k} {v:.4f}" for k, v in ev.items() if isinstance(v, float))

  def eval_scalars(self, ev: dict) -> dict:
    """What of an evaluation is written to ``metrics.jsonl``. Default: its float values."""
    return {k: v for k, v in ev.items() if isinstance(v, float)}

  def hooks(self, run: Run) -> list[Hook]:
    """Periodic actions besides evaluation. Default: none."""
    del run
    return []

  def results_info(self, run: Run) -> dict:
    """Task-specific entries of ``results.json`` (e.g. the dataset). Default: none."""
    del run
    return {}

  def curve_metrics(self, ev: dict) -> tuple[str, ...]:
    """Metrics drawn in ``plots/curves.png``. Default: the progress metrics."""
    del ev
    return self.progress_metrics

  def final_evaluation(self, run: Run, state, last_eval: dict) -> dict:
    """The ``eval`` entry of ``results.json``, once the last step is done and every checkpoint
    written. Default: the last evaluation (a task may instead evaluate its best checkpoint on
    a held-out test split)."""
    del run, state
    return last_eval

  def write_outputs(self, run: Run, state, results: dict) -> None:
    """Writes the task's outputs at the end (process 0 only). Default: nothing."""

  # -- Restoring. -------------------------------------------------------------------------------

  def restore_target(self, meta: dict, mesh) -> tuple[Any, dict]:
    """``(abstract state, expected meta)`` to restore a checkpoint whose meta is ``meta``.

    ``expected meta`` holds this task's (the config's) values of :attr:`check_keys`; the
    restore fails with a clear error where they differ from the checkpoint's.
    """
    raise NotImplementedError

  # -- Serving (optional). -----------------------------------------------------------------------

  def serving(self, state, meta: dict) -> ServingSpec:
    """The inference function of a restored ``state`` (checkpoint ``meta``) as a
    :class:`ServingSpec`, for ``jaxvision.export`` and ``--mode=export``.

    The function computes in float32 whatever ``config.dtype`` trained in, in inference mode
    (BatchNorm running averages, no dropout), and takes the inputs as the task's data stores
    them (a classifier: uint8 images, with the evaluation preprocessing inside). Tasks that
    support it list ``'export'`` in :attr:`modes`. Default: not supported.
    """
    del state, meta
    raise NotImplementedError(f"task {self.name!r} defines no serving function (Task.serving): "
                              f"it cannot be exported")

  def format_result(self, mode: str, result) -> str:
    """What ``train/main.py`` prints after a non-train mode. Default: JSON."""
    del mode
    return json.dumps(result, indent=2)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ml_collections.ConfigDict):
  """The computation dtype named by ``config.dtype`` (default float32; params stay float32)."""
  name = config.get("dtype", "float32")
  if name not in DTYPES:
    raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}; found {name!r}")
  return DTYPES[name]
