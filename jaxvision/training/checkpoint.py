"""Orbax checkpoints: periodic and final saves, the N latest plus the best, safe resume.

A checkpoint step holds two items:

* ``state``: the whole train state pytree (params, batch statistics, optimizer state, step,
  rng), saved with ``StandardSave`` and restored against an abstract target built from the same
  code, so sharding and dtypes come from the running program.
* ``meta``: JSON describing what produced it (model name and settings, number of classes,
  input shape, dataset). Restoring into a different model fails with a message that names the
  mismatch, before any array is read.

Orbax writes each step into a temporary directory and renames it when complete, so a crash or
kill during a save leaves the previous checkpoints intact; unfinished temporaries are ignored
(and cleaned up) on the next start. Saves are asynchronous; :meth:`Checkpointer.close` waits for
them and must run before exit (the trainer does so in a ``finally``).
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers


class CheckpointMismatchError(ValueError):
  """The checkpoint on disk was written by a different model or configuration."""


def _path_key(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shapes_by_path(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {tuple(_path_key(e) for e in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in leaves}


def describe_mismatch(expected_tree, stored_tree, limit: int = 6) -> list[str]:
  """Human-readable differences between two pytrees' structure and leaf shapes."""
  expected, stored = _shapes_by_path(expected_tree), _shapes_by_path(stored_tree)
  lines = []
  for path in sorted(expected.keys() | stored.keys()):
    name = "/".join(path)
    if path not in stored:
      lines.append(f"{name}: expected by the model {expected[path]}, absent from the checkpoint")
    elif path not in expected:
      lines.append(f"{name}: in the checkpoint {stored[path]}, not in the model")
    elif expected[path] != stored[path]:
      lines.append(f"{name}: the model expects shape {expected[path]}, "
                   f"the checkpoint has {stored[path]}")
  if len(lines) > limit:
    lines = lines[:limit] + [f"... and {len(lines) - limit} more differences"]
  return lines


class _DropUnrankedSaveWarning(logging.Filter):
  """Drops Orbax's "Requested `tracked_metric`; did not provide metrics." (a save between
  evaluations, or of an evaluation without the ranking metric, is unranked on purpose)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


@contextlib.contextmanager
def _unranked_save():
  """Inside the block only, Orbax's warning for a save without metrics is not logged."""
  logger, drop = logging.getLogger("absl"), _DropUnrankedSaveWarning()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


class Checkpointer:
  """Keeps the ``keep`` latest checkpoints plus the best one by ``best_metric``.

  Args:
    directory: where steps are written (created if missing).
    keep: how many of the latest steps to keep.
    best_metric: key of the metrics dict passed to :meth:`save` that ranks checkpoints.
    best_mode: ``'max'`` or ``'min'``.
    async_save: save in the background (waited for in :meth:`close`).
  """

  def __init__(self, directory, *, keep: int = 2, best_metric: str = "accuracy",
               best_mode: str = "max", async_save: bool = True):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min'; found {best_mode!r}")
    self.directory = pathlib.Path(directory).resolve()
    get_metric = lambda m: m[best_metric]  # noqa: E731
    policy = ocp_managers.AnyPreservationPolicy([
        ocp_managers.LatestN(n=keep),
        ocp_managers.BestN(get_metric_fn=get_metric, reverse=best_mode == "min", n=1,
                           keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        create=True, best_fn=get_metric, best_mode=best_mode, preservation_policy=policy,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, meta: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> bool:
    """Saves ``state`` and ``meta`` at ``step`` (asynchronously); ``metrics`` rank it."""
    if step in self._manager.all_steps():
      return False
    with _unranked_save() if metrics is None else contextlib.nullcontext():
      return self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(dict(meta))),
          metrics=dict(metrics) if metrics is not None else None, force=True)

  def read_meta(self, step: int) -> dict:
    """The JSON ``meta`` item of ``step``."""
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"] or {})

  def restore(self, step: int, target_state, meta: Mapping[str, Any],
              check_keys: tuple[str, ...] = ("model", "num_classes", "input_shape")):
    """Restores ``step`` into the structure, shapes and shardings of ``target_state``.

    Args:
      step: checkpoint step to read.
      target_state: a concrete or abstract (``jax.ShapeDtypeStruct``) state with shardings.
      meta: the running program's meta; ``check_keys`` of it must equal the checkpoint's.

    Raises:
      CheckpointMismatchError: the checkpoint's meta or array shapes differ from the model's,
        with the differing fields or parameter paths named.
    """
    where = f"checkpoint {self.directory}/{step}"
    stored_meta = self.read_meta(step)
    diffs = [f"{k}: this run has {meta.get(k)!r}, the checkpoint has {stored_meta.get(k)!r}"
             for k in check_keys
             if k in stored_meta and _jsonable(meta.get(k)) != _jsonable(stored_meta.get(k))]
    if diffs:
      raise CheckpointMismatchError(
          f"{where} was written by a different model or configuration:\n  " + "\n  ".join(diffs)
          + "\nUse a fresh --workdir, or the settings the checkpoint was trained with.")
    stored = self._manager.item_metadata(step)["state"]
    lines = describe_mismatch(target_state, stored)
    if lines:
      raise CheckpointMismatchError(
          f"{where} does not fit this model's state:\n  " + "\n  ".join(lines))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return restored["state"]

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    """Waits for pending saves and releases resources."""
    self._manager.wait_until_finished()
    self._manager.close()


def _jsonable(value):
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value
