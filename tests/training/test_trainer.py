"""The trainer runs a task it has never seen: a toy linear-regression task defined here.

It trains, stops on a crash, resumes to the same parameters as an uninterrupted run, ranks
its checkpoints by its own metric (lowest MSE) and restores for evaluation, with no edit to
``train/main.py``, the trainer or another task: one class and one ``register_task`` call.
"""

import itertools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxvision import tasks
from jaxvision.training import checkpoint as ckpt_lib
from jaxvision.training import optim, state as state_lib, trainer
from jaxvision.training.task import Task

W_TRUE = np.array([1.5, -2.0, 0.5, 3.0], np.float32)
B_TRUE = 0.25


@pytest.fixture(autouse=True)
def _scratch_task_registry(monkeypatch):
  """Tasks registered by a test here are gone after it (other tests of this process list the
  registered tasks)."""
  monkeypatch.setattr(tasks, "_registered", dict(tasks._registered))


def _examples(rng: np.random.Generator, n: int):
  x = rng.standard_normal((n, 4)).astype(np.float32)
  return x, (x @ W_TRUE + B_TRUE).astype(np.float32)


class Linear(nn.Module):

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    return nn.Dense(1)(x)[:, 0], {}


class _Evaluator:

  def __init__(self, x, y):
    self.x, self.y = x, y
    self._predict = jax.jit(lambda state, x: state.apply_fn({"params": state.params}, x,
                                                            train=False)[0])

  def run(self, state):
    pred = np.asarray(self._predict(state, self.x), np.float64)
    return {"split": "test", "step": int(state.step),
            "mse": float(np.mean((pred - self.y) ** 2))}


class ToyRegression(Task):
  name = "toy_regression"
  best_metric, best_mode = "mse", "min"
  check_keys = ("model", "input_shape")

  def train_batches(self, start_step):
    for step in itertools.count(start_step):  # endless; batch k depends on (seed, k) only
      x, y = _examples(np.random.default_rng([self.config.seed, step]), self.config.batch_size)
      yield {"x": x, "y": y}

  def create_state(self, example_batch, mesh, *, abstract):
    tx, _ = optim.make_optimizer({"name": "sgd", "learning_rate": 0.1, "momentum": 0.0},
                                 self.total_steps())
    state = state_lib.create_train_state(Linear(), tx, input_shape=example_batch["x"].shape[1:],
                                         rng=jax.random.PRNGKey(self.config.seed), mesh=mesh,
                                         abstract=abstract)
    return state, {"model": "Linear", "input_shape": [4]}

  def make_train_step(self):

    def train_step(state, batch):

      def loss_fn(params):
        pred, _ = state.apply_fn({"params": params}, batch["x"], train=True)
        return jnp.mean((pred - batch["y"]) ** 2)

      loss, grads = jax.value_and_grad(loss_fn)(state.params)
      return state.apply_gradients(grads=grads), {"loss": loss,
                                                  "grad_norm": optax.tree.norm(grads)}

    return train_step

  def make_evaluator(self, run):
    return _Evaluator(*_examples(np.random.default_rng(123), 64))

  def restore_target(self, meta, mesh):
    return self.create_state({"x": np.zeros((1, 4), np.float32)}, mesh, abstract=True)


def _config(**overrides):
  c = ml_collections.ConfigDict(dict(
      task="toy_regression", seed=0, batch_size=8, num_train_steps=12, eval_every_steps=4,
      checkpoint_every_steps=2, log_every_steps=2, disable_progress_bar=True))
  c.update(overrides)
  return c


class _Crash(RuntimeError):
  pass


def test_a_new_task_trains_resumes_ranks_and_restores(tmp_path):
  tasks.register_task(ToyRegression)
  assert "toy_regression" in tasks.registered_tasks()
  full = trainer.train(tasks.create_task(_config()), tmp_path / "full")
  assert full["steps"] == 12 and full["eval"]["mse"] < 0.1  # starts near sum(w^2)+b^2 = 15.9
  evals = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text()
           .splitlines() if '"eval"' in line]
  assert [r["step"] for r in evals] == [4, 8, 12]
  assert json.loads((tmp_path / "full" / "config.json").read_text())["task"] == "toy_regression"

  real = ToyRegression.train_batches

  def crashing(self, start_step):
    for i, batch in enumerate(real(self, start_step)):
      if start_step + i >= 7:
        raise _Crash("simulated crash before step 8")
      yield batch

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(ToyRegression, "train_batches", crashing)
    with pytest.raises(_Crash):
      trainer.train(tasks.create_task(_config()), tmp_path / "resumed")
  resumed = trainer.train(tasks.create_task(_config()), tmp_path / "resumed")
  assert resumed["resumed_from_step"] == 6 and resumed["steps"] == 12
  assert resumed["eval"]["mse"] == full["eval"]["mse"]

  # The best checkpoint by lowest MSE is the last one (the loss falls monotonically here).
  ckpt = ckpt_lib.Checkpointer(tmp_path / "full" / "checkpoints", best_metric="mse",
                               best_mode="min")
  assert ckpt.best_step() == 12
  ckpt.close()
  task = tasks.create_task(trainer.load_config(tmp_path / "full"))
  restored = trainer.restore(task, tmp_path / "full")
  a = jax.device_get(restored.state.params)
  b = jax.device_get(trainer.restore(task, tmp_path / "resumed").state.params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6)
  np.testing.assert_allclose(a["Dense_0"]["kernel"][:, 0], W_TRUE, atol=0.3)  # 12 SGD steps
  assert task.make_evaluator(None).run(restored.state)["mse"] == full["eval"]["mse"]


def test_nan_in_a_guarded_metric_stops_before_the_next_checkpoint(tmp_path, monkeypatch):
  tasks.register_task(ToyRegression)
  real = ToyRegression.train_batches

  def poisoned(self, start_step):
    for i, batch in enumerate(real(self, start_step)):
      yield dict(batch, x=np.full_like(batch["x"], np.nan)) if start_step + i == 4 else batch

  monkeypatch.setattr(ToyRegression, "train_batches", poisoned)
  with pytest.raises(trainer.DivergenceError, match="loss became nan at step 5"):
    trainer.train(tasks.create_task(_config()), tmp_path)
  ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [2, 4]
  ckpt.close()


def test_unknown_task_lists_the_registered_ones():
  with pytest.raises(ValueError, match=r"unknown task 'nope'.*'classification'.*'gan'"):
    tasks.create_task(ml_collections.ConfigDict({"task": "nope"}))


def test_a_second_training_process_in_the_workdir_is_refused(tmp_path, monkeypatch):
  tasks.register_task(ToyRegression)
  prepared = []
  original_prepare = ToyRegression.prepare
  monkeypatch.setattr(ToyRegression, "prepare",
                      lambda self: (prepared.append(1), original_prepare(self))[1])
  tmp_path.joinpath(".lock").touch()
  with trainer.workdir_lock(tmp_path):  # as another process holding it would
    with pytest.raises(trainer.WorkdirInUseError,
                       match=rf"workdir {tmp_path} is in use by another training run \(pid "
                             rf"{os.getpid()}\)"):
      trainer.train(tasks.create_task(_config()), tmp_path)
  assert not prepared  # refused before any data is prepared
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
  # Released: the same run now trains.
  assert trainer.train(tasks.create_task(_config(num_train_steps=2)), tmp_path)["steps"] == 2


def test_a_broken_metrics_line_is_skipped_not_fatal(tmp_path):
  tasks.register_task(ToyRegression)
  trainer.train(tasks.create_task(_config(num_train_steps=4)), tmp_path)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "kind": "tra')  # a write cut short (disk full)
  results = trainer.train(tasks.create_task(_config(num_train_steps=8)), tmp_path)
  assert results["steps"] == 8 and results["resumed_from_step"] == 4
  assert (tmp_path / "plots" / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("eval_batch_size", 0),
                                         ("keep_checkpoints", -1), ("log_every_steps", 0)])
def test_run_settings_out_of_range_fail_before_any_work(tmp_path, field, value):
  tasks.register_task(ToyRegression)
  with pytest.raises(ValueError, match=rf"config.{field} must be an integer >= 1; found "
                                       rf"{value}"):
    trainer.train(tasks.create_task(_config(**{field: value})), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_resuming_with_another_config_names_the_changed_fields(tmp_path, capsys):
  tasks.register_task(ToyRegression)
  trainer.train(tasks.create_task(_config(num_train_steps=4)), tmp_path)
  capsys.readouterr()
  trainer.train(tasks.create_task(_config(num_train_steps=4)), tmp_path)  # the same: no note
  assert "Note:" not in capsys.readouterr().out
  trainer.train(tasks.create_task(_config(num_train_steps=6, log_every_steps=3)), tmp_path)
  lines = capsys.readouterr().out.splitlines()
  assert ("Note: this config differs from the workdir's config.json in log_every_steps (2 -> 3), "
          "num_train_steps (4 -> 6); config.json and results.json will record this one") in lines
  assert json.loads((tmp_path / "results.json").read_text())["config"]["log_every_steps"] == 3


def _damage(workdir, step):
  """Truncates every array file of checkpoint ``step`` to 40% of its bytes."""
  files = [f for f in (workdir / "checkpoints" / str(step) / "state").rglob("*")
           if f.is_file() and f.stat().st_size > 64 and "metadata" not in f.name.lower()]
  assert files
  for f in files:
    f.write_bytes(f.read_bytes()[:int(f.stat().st_size * 0.4)])


def test_damaged_checkpoints_are_set_aside_and_the_newest_intact_one_used(tmp_path, capsys):
  tasks.register_task(ToyRegression)
  full = trainer.train(tasks.create_task(_config(num_train_steps=10)), tmp_path / "full")
  workdir = tmp_path / "run"
  trainer.train(tasks.create_task(_config(num_train_steps=6)), workdir)  # steps 4, 6 kept
  (workdir / "checkpoints" / "9999").mkdir()  # a stray, empty step folder
  _damage(workdir, 6)
  capsys.readouterr()

  # Evaluation falls back without touching the workdir.
  restored = trainer.restore(tasks.create_task(_config()), workdir, "latest")
  assert restored.step == 4
  out = capsys.readouterr().out
  assert "checkpoint 9999 is damaged" in out and "checkpoint 6 is damaged" in out
  assert (workdir / "checkpoints" / "9999").is_dir()

  # Training sets the damaged steps aside and resumes from the newest intact one.
  resumed = trainer.train(tasks.create_task(_config(num_train_steps=10)), workdir)
  out = capsys.readouterr().out
  assert "checkpoint 6 is damaged" in out and "using 4" in out
  assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 10
  assert resumed["eval"]["mse"] == full["eval"]["mse"]
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert "6.damaged" in names and "9999.damaged" in names and "10" in names
