"""What the trainers share: the run session, the step loop, logs, evaluations and checkpoints.

:func:`session` opens a run in a workdir (mesh, checkpointer, metric writer, the step to resume
from) and closes it however the run ends; :func:`compile_step` compiles a train step ahead of
time and times it. :func:`run` drives a compiled ``train_step(state, batch) -> (state, metrics)`` from
``start_step`` to ``total_steps``. Per-step metrics stay on device until a log point, where they
are fetched together, checked for NaN/inf (:class:`DivergenceError`, raised before any later
checkpoint is written) and their mean written. Evaluation runs every ``eval_every`` steps and
at the end; checkpoints are saved at every evaluation (ranked by ``best_metric``) and every
``checkpoint_every`` steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging

from jaxvision.training import checkpoint as ckpt_lib
from jaxvision.training import reporting, sharding


class DivergenceError(FloatingPointError):
  """The training loss (or gradient norm) became NaN or infinite."""


@dataclasses.dataclass
class Session:
  """An open run in ``workdir`` (from :func:`session`).

  Attributes:
    workdir: the resolved run directory.
    mesh: the 1-D ``'data'`` mesh over ``config.num_devices`` devices (default all).
    checkpointer: ``checkpoint.Checkpointer`` of ``workdir/checkpoints``.
    writer: ``reporting.MetricWriter`` of ``workdir``.
    start_step: the latest checkpointed step (0 for a fresh run).
  """
  workdir: pathlib.Path
  mesh: Any
  checkpointer: ckpt_lib.Checkpointer
  writer: reporting.MetricWriter
  start_step: int

  def resume(self, state, meta: Mapping[str, Any], total_steps: int, **restore_kwargs):
    """``state`` restored from ``start_step`` when resuming, else ``state`` unchanged.

    ``meta`` (and ``restore_kwargs``, e.g. ``check_keys``) go to ``Checkpointer.restore``,
    which raises a clear error for a checkpoint of another model or configuration.
    """
    if not self.start_step:
      return state
    state = self.checkpointer.restore(self.start_step, state, meta, **restore_kwargs)
    logging.info("resumed from %s at step %d", self.checkpointer.directory, self.start_step)
    print(f"Resuming from step {self.start_step} of {total_steps} "
          f"({self.checkpointer.directory})")
    return state


@contextlib.contextmanager
def session(config, workdir, *, best_metric: str, best_mode: str) -> Iterator[Session]:
  """Opens a run in ``workdir``; closes its checkpointer and writer however the run ends.

  Creates ``workdir``, the mesh (``config.num_devices``; ``config.batch_size`` must divide
  over it), a checkpointer keeping ``config.keep_checkpoints`` (default 2) latest steps plus
  the best by ``best_metric`` (``best_mode`` 'max' or 'min'), and the metric writer. Closing
  waits for pending checkpoint writes.
  """
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.get("num_devices"))
  sharding.check_batch_size(config.batch_size, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints",
                                       keep=config.get("keep_checkpoints", 2),
                                       best_metric=best_metric, best_mode=best_mode)
  writer = reporting.MetricWriter(workdir)
  try:
    yield Session(workdir, mesh, checkpointer, writer, checkpointer.latest_step() or 0)
  finally:
    checkpointer.close()
    writer.close()


def compile_step(step_fn, state, host_batch: Mapping[str, Any], mesh) -> tuple[Any, float]:
  """``(compiled step, compile seconds)``: ``step_fn`` lowered for ``state`` and the sharded
  ``host_batch``, compiled ahead of time (so compile time is measured apart from training)."""
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, sharding.shard_batch(host_batch, mesh)).compile()
  return compiled, time.perf_counter() - t0


def flush_metrics(pending: list, writer, first_step: int, *,
                  guarded: tuple[str, ...] = ("loss", "grad_norm"), what: str = "training",
                  hint: str = "lower optimizer.learning_rate or enable grad_clip_norm"
                  ) -> dict[str, float]:
  """Fetches queued per-step metrics, stops on NaN/inf, writes and returns their mean.

  Args:
    pending: per-step metric dicts (device arrays) of steps ``first_step + 1, ...``.
    guarded: metric names that must stay finite (those present are checked). The gradient
      norm is guarded by default: a model can map NaN activations to finite logits (XLA:CPU's
      max pooling drops NaN), and then only the gradients show the corruption.
    what, hint: name the run and the remedy in the :class:`DivergenceError` message.
  """
  fetched = jax.device_get(pending)
  for i, m in enumerate(fetched):
    for name in guarded:
      if name in m and not math.isfinite(float(m[name])):
        raise DivergenceError(
            f"the {what} {name} became {float(m[name])} at step {first_step + i + 1} "
            f"(expected a finite value): training diverged. No checkpoint was written after "
            f"the divergence; {hint}.")
  means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  writer.write(first_step + len(fetched), "train", means)
  return means


def run(state, train_step: Callable, batches: Iterator[Mapping[str, Any]], *, mesh,
        start_step: int, total_steps: int, batch_size: int, writer, checkpointer,
        meta: Mapping[str, Any], schedule: Callable[[int], Any],
        evaluate: Callable[[Any], dict], eval_scalars: Callable[[dict], dict],
        summary_line: Callable[[int, dict], str], best_metric: str, eval_every: int,
        log_every: int, checkpoint_every: int = -1, throughput_name: str = "images_per_s",
        postfix: tuple[str, ...] = ("loss",), disable_progress_bar: bool | None = None
        ) -> tuple[Any, dict | None, float]:
  """Trains from ``start_step`` to ``total_steps``.

  Args:
    state: the train state (donated to ``train_step``).
    train_step: compiled ``(state, sharded batch) -> (state, metrics)``; metrics hold ``loss``.
    batches: host-local batches, the first one being the batch of ``start_step``.
    mesh: the batches are sharded over its ``'data'`` axis.
    start_step, total_steps: the steps ``start_step + 1 .. total_steps`` are run.
    batch_size: global batch size (for the throughput figure ``throughput_name``).
    writer: ``reporting.MetricWriter``; checkpointer: ``checkpoint.Checkpointer``; meta: saved
      with every checkpoint.
    schedule: learning-rate schedule (logged).
    evaluate: ``state -> eval dict``; ``eval_scalars(eval dict)`` picks what is logged;
      ``summary_line(step, eval dict)`` is printed; ``eval dict[best_metric]`` ranks
      checkpoints.
    eval_every, log_every, checkpoint_every: intervals in steps (``checkpoint_every <= 0``:
      only at evaluations).
    postfix: train metrics shown on the progress bar.

  Returns:
    ``(state, last evaluation or None if no step ran, train seconds)``.
  """
  log_every = max(1, log_every)
  train_seconds, last_eval = 0.0, None
  pending, pending_from = [], start_step
  bar = tqdm.tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                  dynamic_ncols=True, disable=disable_progress_bar)
  t_mark, n_mark = time.perf_counter(), 0
  for step in range(start_step, total_steps):
    state, metrics = train_step(state, sharding.shard_batch(next(batches), mesh))
    pending.append(metrics)
    done = step + 1
    bar.update(1)
    n_mark += 1
    do_eval = done % eval_every == 0 or done == total_steps
    do_ckpt = do_eval or (checkpoint_every > 0 and done % checkpoint_every == 0)
    if done % log_every == 0 or do_ckpt:
      means = flush_metrics(pending, writer, pending_from)
      pending, pending_from = [], done
      now = time.perf_counter()
      train_seconds += now - t_mark
      throughput = n_mark * batch_size / max(now - t_mark, 1e-9)
      bar.set_postfix({k: f"{means[k]:.4f}" for k in postfix},
                      **{throughput_name: f"{throughput:,.1f}"})
      writer.write(done, "train", {throughput_name: throughput,
                                   "learning_rate": float(schedule(done))})
      if do_eval:
        last_eval = evaluate(state)
        writer.write(done, "eval", eval_scalars(last_eval))
        tqdm.tqdm.write(summary_line(done, last_eval))
      if do_ckpt:
        checkpointer.save(done, state, meta,
                          metrics={best_metric: last_eval[best_metric]} if do_eval else None)
      t_mark, n_mark = time.perf_counter(), 0
  bar.close()
  return state, last_eval, train_seconds
