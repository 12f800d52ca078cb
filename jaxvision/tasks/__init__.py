"""Tasks the trainer runs, by name (``config.task``; default ``'classification'``).

Each task is one module holding what is specific to it (steps, evaluator, outputs, modes) as a
:class:`jaxvision.training.task.Task` subclass. Adding a task is one new module plus one line
in :data:`TASKS` (or a :func:`register_task` call for a task defined outside the package).
Task modules are imported on first use, so naming a task imports only that task.
"""

from __future__ import annotations

import importlib

import ml_collections

from jaxvision.training.task import Task

# name -> "module:class"
TASKS = {
    "classification": "jaxvision.tasks.classification:ClassificationTask",
    "sequence_prediction": "jaxvision.tasks.sequence_prediction:SequencePredictionTask",
    "gan": "jaxvision.tasks.gan:GANTask",
    "detection": "jaxvision.tasks.detection:DetectionTask",
    "multilabel": "jaxvision.tasks.multilabel:MultiLabelTask",
}
_registered: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
  """Registers a task class under ``cls.name`` (usable as a class decorator)."""
  if not (isinstance(cls, type) and issubclass(cls, Task)) or not cls.name:
    raise TypeError(f"expected a Task subclass with a name; found {cls!r}")
  _registered[cls.name] = cls
  return cls


def registered_tasks() -> list[str]:
  """Names of every task: the package's and those registered at run time."""
  return sorted(set(TASKS) | set(_registered))


def get_task(name: str) -> type[Task]:
  """The task class registered as ``name``."""
  if name in _registered:
    return _registered[name]
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; expected one of {registered_tasks()}")
  module, cls = TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def create_task(config: ml_collections.ConfigDict) -> Task:
  """The task named by ``config.task`` (default ``'classification'``), built from ``config``."""
  return get_task(config.get("task", "classification"))(config)
