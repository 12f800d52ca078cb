"""The one trainer: runs any :class:`jaxvision.training.task.Task` in a workdir.

:func:`train` opens the run (mesh, checkpointer, metric writer, the step to resume from),
asks the task for its batches, state and step, compiles the step ahead of time (compile
time is measured apart), and drives it to ``task.total_steps()``. Per-step metrics stay on
device until a log point, where they are fetched together, checked for NaN/inf
(:class:`DivergenceError`, raised before any later checkpoint is written) and their mean
written. The evaluator runs every ``task.eval_every()`` steps and at the end; checkpoints are
saved at every evaluation (ranked by ``task.best_metric``), every
``config.checkpoint_every_steps`` steps and after hooks that ask for one. :func:`restore`
loads a workdir's best or latest checkpoint for inference.

Workdir layout (every task)::

    <workdir>/config.json           the run's config (written when the run starts)
    <workdir>/checkpoints/<step>/   Orbax steps: the latest ``config.keep_checkpoints`` (2)
                                    and the best by the task's metric, each with its meta
    <workdir>/metrics.jsonl         one JSON record per log, evaluation or hook
    <workdir>/tensorboard/          TensorBoard event files
    <workdir>/results.json          config, steps, timings and the final evaluation
    <workdir>/plots/curves.png      train metrics and evaluations over steps
    <workdir>/plots/...             the task's own outputs

Running the same command with the same workdir resumes from the latest checkpoint (a config
that differs from the workdir's ``config.json`` is named in a note; one with fewer steps than
the checkpoint is refused). Bad settings and workdirs fail first, in one line
(:func:`check_run_config`, :func:`check_workdir`), before any data is prepared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from jaxvision.training import checkpoint as ckpt_lib
from jaxvision.training import jit as jit_lib
from jaxvision.training import optim, reporting, sharding
from jaxvision.training.task import Task, compute_dtype

CONFIG_FILE = "config.json"


class DivergenceError(FloatingPointError):
  """The training loss (or another guarded metric) became NaN or infinite."""


class WorkdirInUseError(RuntimeError):
  """Another training process holds the workdir."""


@dataclasses.dataclass
class Run:
  """An open run in ``workdir`` (what tasks and hooks see).

  Attributes:
    config: the run's config.
    workdir: the resolved run directory.
    mesh: the 1-D ``'data'`` mesh over ``config.num_devices`` devices (default all).
    checkpointer: ``checkpoint.Checkpointer`` of ``workdir/checkpoints``.
    writer: ``reporting.MetricWriter`` of ``workdir``.
    start_step: the latest checkpointed step (0 for a fresh run).
    total_steps: the step the run ends at.
  """
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  mesh: Any
  checkpointer: ckpt_lib.Checkpointer
  writer: reporting.MetricWriter
  start_step: int
  total_steps: int
  batches: Iterator[Mapping[str, Any]] | None = None
  _next_batch: Mapping[str, Any] | None = None

  def replace_batches(self, batches: Iterator[Mapping[str, Any]]):
    """The following steps draw from ``batches`` (its first batch is the next step's)."""
    self.batches, self._next_batch = batches, None

  def next_batch(self) -> Mapping[str, Any]:
    batch, self._next_batch = self._next_batch, None
    return batch if batch is not None else next(self.batches)


# Config fields every run reads, and the smallest value each may take.
_POSITIVE_FIELDS = {"batch_size": 1, "eval_batch_size": 1, "keep_checkpoints": 1,
                    "log_every_steps": 1}


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _fields(config: ml_collections.ConfigDict, prefix: str = "config") -> Iterator[tuple]:
  """``(dotted name, key, value)`` of every field of ``config``, nested ones included."""
  for key, value in config.items():
    yield f"{prefix}.{key}", key, value
    if isinstance(value, ml_collections.ConfigDict):
      yield from _fields(value, f"{prefix}.{key}")


def check_run_config(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ValueError naming the field, the range expected and the value found for
  run settings that cannot work (called first, before any data is prepared or the workdir is
  created):

  * ``batch_size``, ``eval_batch_size``, ``keep_checkpoints``, ``log_every_steps``: integers
    >= 1;
  * the run's length: ``num_train_steps`` an integer, and > 0 unless ``num_epochs`` (a number
    > 0) gives the length;
  * every optimizer (``optimizer``, ``g_optimizer``, ... : ``optim.check_config``): known name,
    schedule and fields, ``learning_rate`` > 0 and the other values in range;
  * every ``dropout_rate`` (``model.dropout_rate``, ...): a number in [0, 1);
  * ``dtype`` a known compute dtype; ``num_devices`` (when set) at most the devices there are,
    and dividing ``batch_size``.
  """
  for name, lowest in _POSITIVE_FIELDS.items():
    value = config.get(name)
    if value is not None and not (_is_int(value) and value >= lowest):
      raise ValueError(f"config.{name} must be an integer >= {lowest}; found {value!r}")
  steps = config.get("num_train_steps", -1)
  if not _is_int(steps):
    raise ValueError(f"config.num_train_steps must be an integer (> 0, or -1 to use "
                     f"num_epochs); found {steps!r}")
  if steps <= 0:
    if "num_epochs" in config:
      epochs = config.num_epochs
      if not (isinstance(epochs, (int, float)) and not isinstance(epochs, bool)
              and math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"config.num_epochs must be > 0 (or set config.num_train_steps > 0); "
                         f"found num_epochs={epochs!r}")
    elif "num_train_steps" in config:
      raise ValueError(f"config.num_train_steps must be an integer > 0; found {steps!r}")
  for where, key, value in _fields(config):
    if isinstance(value, ml_collections.ConfigDict) and (key == "optimizer"
                                                         or key.endswith("_optimizer")):
      optim.check_config(value, where)
    elif key == "dropout_rate" or key.endswith("_dropout_rate"):
      if not (isinstance(value, (int, float)) and not isinstance(value, bool)
              and 0 <= value < 1):
        raise ValueError(f"{where} must be in [0, 1); found {value!r}")
  compute_dtype(config)
  if config.get("batch_size") is not None:
    sharding.check_batch_size(config.batch_size, sharding.make_mesh(config.get("num_devices")))


def check_workdir(workdir) -> pathlib.Path:
  """The resolved ``workdir`` after checking that a run can write there, before any data is
  prepared: it is a folder (or does not exist yet and its nearest existing parent is a
  folder), and that folder is writable.

  Raises:
    NotADirectoryError: the workdir, or a parent of it, is a file.
    PermissionError: the folder cannot be written.
  """
  workdir = pathlib.Path(workdir).expanduser().resolve()
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(f"--workdir {workdir} is a file; expected a folder (or a path "
                             f"where one can be created)")
  existing = workdir
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise NotADirectoryError(f"--workdir {workdir}: {existing} is a file, so no folder can be "
                             f"created below it")
  if not os.access(existing, os.W_OK | os.X_OK):
    what = "is" if existing == workdir else f"cannot be created: {existing} is"
    raise PermissionError(f"--workdir {workdir} {what} not writable; choose a folder you can "
                          f"write to")
  return workdir


def check_not_in_use(workdir: pathlib.Path) -> None:
  """Fails at once, before any data is prepared, when another training process holds
  ``workdir``'s lock (:func:`workdir_lock` takes it for the run itself, later)."""
  path = pathlib.Path(workdir) / ".lock"
  if jax.process_index() != 0 or not path.is_file():
    return
  with workdir_lock(pathlib.Path(workdir), write_pid=False):
    pass


@contextlib.contextmanager
def workdir_lock(workdir: pathlib.Path, *, write_pid: bool = True) -> Iterator[None]:
  """Holds an exclusive lock on ``workdir`` (its ``.lock`` file) while training, so a second
  training process in the same workdir stops at once with the first one's pid. The kernel
  drops the lock when the process ends, however it ends. Only process 0 locks."""
  if jax.process_index() != 0:
    yield
    return
  path = workdir / ".lock"
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      owner = f.read().strip() or "unknown"
      raise WorkdirInUseError(f"workdir {workdir} is in use by another training run (pid "
                              f"{owner}); wait for it to finish or use another --workdir"
                              ) from None
    if write_pid:
      f.seek(0)
      f.truncate()
      f.write(str(os.getpid()))
      f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def open_run(task: Task, workdir) -> Iterator[Run]:
  """Opens a run of ``task`` in ``workdir`` (locked against a second training process);
  closes its checkpointer and writer however the run ends (closing waits for pending
  checkpoint writes)."""
  config = task.config
  total_steps = task.total_steps()
  if total_steps < 1:
    raise ValueError(f"this run has {total_steps} train steps (config.num_epochs="
                     f"{config.get('num_epochs')!r}, num_train_steps="
                     f"{config.get('num_train_steps')!r}); expected at least 1")
  workdir = check_workdir(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / ".lock").touch()
  except OSError as e:  # e.g. a read-only file system, which os.access does not see
    raise PermissionError(f"--workdir {workdir} cannot be written ({e.strerror or e}); choose "
                          f"a folder you can write to") from None
  mesh = sharding.make_mesh(config.get("num_devices"))
  sharding.check_batch_size(config.batch_size, mesh)
  with workdir_lock(workdir):
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints",
                                         keep=config.get("keep_checkpoints", 2),
                                         best_metric=task.best_metric, best_mode=task.best_mode)
    writer = reporting.MetricWriter(workdir)
    run = Run(config, workdir, mesh, checkpointer, writer, checkpointer.latest_step() or 0,
              total_steps)
    try:
      yield run
    finally:
      run.checkpointer.close()  # the run's current one (resuming may have reopened it)
      writer.close()


def save_config(config: ml_collections.ConfigDict, workdir) -> None:
  """Writes ``config`` to ``<workdir>/config.json`` (process 0), atomically."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(workdir) / CONFIG_FILE
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(config.to_dict(), indent=2))
  tmp.replace(path)


def flatten_config(tree, prefix: str = "") -> dict:
  """A nested mapping (a config's ``to_dict()``) as ``{'optimizer.learning_rate': value}``."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten_config(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def changed_fields(workdir, config: ml_collections.ConfigDict) -> dict:
  """``{field: (stored, given)}`` for the flat fields where ``config`` differs from the
  workdir's ``config.json`` (``'<unset>'`` for a field one side lacks); ``{}`` when equal or
  when the workdir has no readable ``config.json``."""
  try:
    stored = json.loads((pathlib.Path(workdir) / CONFIG_FILE).read_text())
  except (OSError, ValueError):
    return {}
  old, new = flatten_config(stored), flatten_config(json.loads(json.dumps(config.to_dict())))
  unset = "<unset>"
  return {k: (old.get(k, unset), new.get(k, unset)) for k in sorted(old.keys() | new.keys())
          if old.get(k, unset) != new.get(k, unset)}


def config_changes(workdir, config: ml_collections.ConfigDict, limit: int = 4) -> str:
  """The fields where ``config`` differs from the workdir's ``config.json``, as
  ``"a.b (old -> new), ..."`` (at most ``limit`` named, then a count); ``""`` when equal or
  when the workdir has no readable ``config.json``."""
  changed = changed_fields(workdir, config)
  named = [f"{k} ({old!r} -> {new!r})" for k, (old, new) in list(changed.items())[:limit]]
  more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
  return ", ".join(named) + more


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its ``config.json``, else ``results.json``)."""
  workdir = pathlib.Path(workdir).resolve()
  if (workdir / CONFIG_FILE).is_file():
    return ml_collections.ConfigDict(json.loads((workdir / CONFIG_FILE).read_text()))
  if (workdir / "results.json").is_file():
    return ml_collections.ConfigDict(json.loads((workdir / "results.json").read_text())["config"])
  raise FileNotFoundError(f"no {CONFIG_FILE} in {workdir}: expected the workdir of a training "
                          f"run (or pass --config)")


def compile_step(step_fn, state, host_batch: Mapping[str, Any], mesh) -> tuple[Any, float]:
  """``(compiled step, compile seconds)``: ``step_fn`` lowered for ``state`` and the sharded
  ``host_batch``, compiled ahead of time (so compile time is measured apart from training)."""
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, sharding.shard_batch(host_batch, mesh)).compile()
  return compiled, time.perf_counter() - t0


def sum_over_batches(eval_step, state, batches, mesh) -> dict:
  """Runs a compiled ``eval_step(state, sharded batch) -> sums`` over host ``batches`` and
  returns the sums added up over batches, fetched to the host (NumPy)."""
  totals = None
  for batch in batches:
    out = eval_step(state, sharding.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    raise ValueError("evaluation got no batches: the split is empty")
  return jax.device_get(totals)


def flush_metrics(pending: list, writer, first_step: int, task: Task) -> dict[str, float]:
  """Fetches queued per-step metrics, stops on NaN/inf, writes and returns their mean.

  ``pending``: per-step metric dicts (device arrays) of steps ``first_step + 1, ...``. The
  task's ``guarded_metrics`` must stay finite (the gradient norm is guarded by default: a
  model can map NaN activations to finite logits, and then only the gradients show it).
  """
  fetched = jax.device_get(pending)
  for i, m in enumerate(fetched):
    for name in task.guarded_metrics:
      if name in m and not math.isfinite(float(m[name])):
        raise DivergenceError(
            f"the {task.name} training {name} became {float(m[name])} at step "
            f"{first_step + i + 1} (expected a finite value): training diverged. No checkpoint "
            f"was written after the divergence; {task.divergence_hint}.")
  means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  writer.write(first_step + len(fetched), "train", means)
  return means


def _reason(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:160] if lines else ''}"


def restore_newest_intact(checkpointer: ckpt_lib.Checkpointer, steps, target, expected: dict,
                          check_keys) -> tuple[Any, int, list[tuple[int, str]]]:
  """Restores the first of ``steps`` (in the order given) that loads; returns ``(state, step,
  damaged)``.

  ``damaged`` lists ``(step, reason)`` of the newer steps that did not load (an empty or
  half-written step folder, a truncated or corrupted array file, a missing item); each is
  reported as "checkpoint N is damaged (...): using M". A checkpoint of another model or
  configuration (``CheckpointMismatchError``) is not damage: it is raised at once.

  Raises:
    FileNotFoundError: no step loads (the reasons are listed).
  """
  damaged = []
  for step in steps:
    try:
      state = checkpointer.restore(step, target, expected, check_keys=check_keys)
    except ckpt_lib.CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      damaged.append((step, _reason(e)))
      continue
    for bad, reason in damaged:
      print(f"checkpoint {bad} is damaged ({reason}): using {step}")
    return state, step, damaged
  raise FileNotFoundError(
      f"no intact checkpoint in {checkpointer.directory}: "
      + "; ".join(f"{bad} is damaged ({reason})" for bad, reason in damaged))


def _move_aside(directory: pathlib.Path, step: int) -> pathlib.Path:
  """Renames the damaged step folder to ``<step>.damaged[.k]`` (kept for inspection, no longer
  a step for Orbax)."""
  target = directory / f"{step}.damaged"
  k = 1
  while target.exists():
    target, k = directory / f"{step}.damaged.{k}", k + 1
  (directory / str(step)).rename(target)
  return target


def train(task: Task, workdir) -> dict:
  """Trains ``task`` into ``workdir`` (resuming if it holds checkpoints); returns the results.

  ``results.json`` holds: ``config``, ``steps``, ``resumed_from_step``, ``train_seconds``,
  ``compile_seconds``, ``eval_seconds``, ``devices``, the task's :meth:`Task.results_info`
  and ``eval`` (:meth:`Task.final_evaluation`: by default the last evaluation; a run that was
  already complete is evaluated again).
  """
  config = task.config
  check_run_config(config)
  check_not_in_use(check_workdir(workdir))
  task.prepare()
  with open_run(task, workdir) as run:
    mesh, start_step, total_steps = run.mesh, run.start_step, run.total_steps
    batches = task.train_batches(start_step)
    first = next(batches)
    state, meta = task.create_state(first, mesh, abstract=bool(start_step))
    if start_step:
      state, step, damaged = restore_newest_intact(
          run.checkpointer, sorted(run.checkpointer.all_steps(), reverse=True), state, meta,
          task.check_keys)
      if damaged:  # Orbax must not see the damaged steps again: set them aside, start over.
        run.checkpointer.close()
        for bad, _ in damaged:
          if jax.process_index() == 0:  # one process renames (a shared filesystem)
            print(f"  moved to {_move_aside(run.checkpointer.directory, bad)}")
        run.checkpointer = ckpt_lib.Checkpointer(
            run.checkpointer.directory, keep=config.get("keep_checkpoints", 2),
            best_metric=task.best_metric, best_mode=task.best_mode)
        run.start_step = start_step = step
        batches = task.train_batches(start_step)
        first = next(batches)
      if start_step > total_steps:
        raise ValueError(
            f"the workdir's latest checkpoint is at step {start_step}, past this run's "
            f"{total_steps} steps (were num_epochs or num_train_steps lowered?): use a fresh "
            f"--workdir, or --mode=evaluate to evaluate what it holds")
      logging.info("resumed from %s at step %d", run.checkpointer.directory, start_step)
      print(f"Resuming from step {start_step} of {total_steps} ({run.checkpointer.directory})")
      changed = config_changes(run.workdir, config)
      if changed:
        print(f"Note: this config differs from the workdir's {CONFIG_FILE} in {changed}; "
              f"{CONFIG_FILE} and results.json will record this one")
    save_config(config, run.workdir)  # only once the checkpoint is known to fit this config
    run.batches, run._next_batch = batches, first  # pylint: disable=protected-access
    state = task.on_start(run, state)
    train_step, compile_seconds = compile_step(
        jit_lib.jit_train_step(task.make_train_step(), mesh, onednn=task.train_onednn),
        state, first, mesh)
    evaluator = task.make_evaluator(run)
    state, last_eval, seconds = _loop(task, run, state, train_step, evaluator, meta)
    if last_eval is None:  # Already complete: evaluate what the checkpoint holds.
      t0 = time.perf_counter()
      last_eval = evaluator.run(state)
      seconds["eval"] += time.perf_counter() - t0
      print(task.summary_line(last_eval))
    run.checkpointer.wait()
    t0 = time.perf_counter()
    final_eval = task.final_evaluation(run, state, last_eval)
    seconds["eval"] += time.perf_counter() - t0
    results = {
        "config": config.to_dict(),
        "steps": int(jax.device_get(state.step)),
        "resumed_from_step": start_step,
        "train_seconds": seconds["train"],
        "compile_seconds": compile_seconds,
        "eval_seconds": seconds["eval"],
        "devices": mesh.devices.size,
        **task.results_info(run),
        "eval": final_eval,
    }
    if jax.process_index() == 0:
      (run.workdir / "results.json").write_text(json.dumps(results, indent=2))
      reporting.plot_curves(reporting.read_metrics(run.workdir / "metrics.jsonl"),
                            run.workdir / "plots" / "curves.png",
                            metrics=task.curve_metrics(last_eval))
      task.write_outputs(run, state, results)
    return results


def _loop(task: Task, run: Run, state, train_step, evaluator, meta):
  """Steps ``run.start_step + 1 .. run.total_steps``; returns ``(state, last eval or None,
  {'train': seconds, 'eval': seconds})``."""
  config, total = task.config, run.total_steps
  eval_every = max(1, task.eval_every())
  log_every = max(1, int(config.get("log_every_steps", 50)))
  ckpt_every = int(config.get("checkpoint_every_steps", -1))
  hooks = task.hooks(run)
  seconds = {"train": 0.0, "eval": 0.0}
  last_eval, pending, pending_from = None, [], run.start_step
  bar = tqdm.tqdm(total=total, initial=run.start_step, desc="train", unit="step",
                  dynamic_ncols=True, disable=config.get("disable_progress_bar", None))
  t_mark, n_mark = time.perf_counter(), 0
  for step in range(run.start_step, total):
    state, metrics = train_step(state, sharding.shard_batch(run.next_batch(), run.mesh))
    pending.append(metrics)
    done = step + 1
    bar.update(1)
    n_mark += 1
    do_eval = done % eval_every == 0 or done == total
    due = [h for h in hooks if h.due(done, total)]
    do_ckpt = (do_eval or (ckpt_every > 0 and done % ckpt_every == 0)
               or any(h.checkpoint for h in due))
    if not (done % log_every == 0 or do_ckpt or due):
      continue
    means = flush_metrics(pending, run.writer, pending_from, task)
    pending, pending_from = [], done
    now = time.perf_counter()
    seconds["train"] += now - t_mark
    throughput = n_mark * config.batch_size / max(now - t_mark, 1e-9)
    shown = {k: means[k] for k in task.progress_metrics if k in means}
    bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()},
                    **{task.throughput_name: f"{throughput:,.1f}"})
    if bar.disable:
      print(f"[train] step {done}/{total}: "
            + " ".join(f"{k} {v:.4f}" for k, v in shown.items())
            + f" ({throughput:,.1f} {task.throughput_name})", flush=True)
    scalars = {task.throughput_name: throughput}
    lr = task.learning_rate(done)
    if lr is not None:
      scalars["learning_rate"] = float(lr)
    run.writer.write(done, "train", scalars)
    if do_eval:
      t0 = time.perf_counter()
      last_eval = evaluator.run(state)
      seconds["eval"] += time.perf_counter() - t0
      run.writer.write(done, "eval", task.eval_scalars(last_eval))
      tqdm.tqdm.write(task.summary_line(last_eval))
    for hook in due:
      state = hook.fn(run, state, done)
    if do_ckpt:
      ranked = do_eval and task.best_metric in last_eval
      run.checkpointer.save(done, state, meta, metrics=(
          {task.best_metric: last_eval[task.best_metric]} if ranked else None))
    t_mark, n_mark = time.perf_counter(), 0
  bar.close()
  return state, last_eval, seconds


@dataclasses.dataclass
class Restored:
  """A checkpoint restored for inference: ``state``, its stored ``meta``, ``step``, ``mesh``."""
  state: Any
  meta: dict
  step: int
  mesh: Any


def restore(task: Task, workdir, checkpoint: str = "best") -> Restored:
  """Restores the best (falling back to the latest when none was ranked) or latest
  checkpoint of ``workdir`` into ``task.restore_target``'s state.

  A damaged checkpoint (one that does not load) is reported and the next one tried: the
  newest intact step is used.

  Raises:
    FileNotFoundError: no checkpoint in the workdir, or none intact.
    CheckpointMismatchError: the checkpoint was written by another model or configuration.
  """
  if checkpoint not in ("best", "latest"):
    raise ValueError(f"checkpoint must be 'best' or 'latest'; found {checkpoint!r}")
  ckpt_dir = pathlib.Path(workdir).resolve() / "checkpoints"
  if not ckpt_dir.is_dir():
    raise FileNotFoundError(f"no checkpoints in {ckpt_dir}: train into this workdir first")
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir, async_save=False,
                                       best_metric=task.best_metric, best_mode=task.best_mode)
  try:
    best = checkpointer.best_step() if checkpoint == "best" else None
    newest_first = sorted(checkpointer.all_steps(), reverse=True)
    order = ([best] if best is not None else []) + [t for t in newest_first if t != best]
    stored = None
    for step in order:  # any readable meta gives the model's shapes (one model per workdir)
      try:
        stored = checkpointer.read_meta(step)
        break
      except Exception:  # pylint: disable=broad-except
        continue
    if stored is None:
      raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    mesh = sharding.make_mesh(task.config.get("num_devices"))
    target, expected = task.restore_target(stored, mesh)
    state, step, _ = restore_newest_intact(checkpointer, order, target, expected,
                                           task.check_keys)
    meta = checkpointer.read_meta(step)
  finally:
    checkpointer.close()
  return Restored(state, meta, step, mesh)
