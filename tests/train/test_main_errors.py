"""Bad input to ``python -m train.main`` and ``trainer.train``: one line saying what was expected
and what was found, before any data is prepared or the workdir is created; no traceback.

Flag and config-file errors are checked through the CLI (they end before TensorFlow is
imported: the runs below report whether it was); settings through ``trainer.train`` in
process (the CLI prints their message as ``error: <Type>: <message>``).
"""

import errno
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from jaxvision import tasks
from jaxvision.training import trainer
from tests.support import run_cli
from train.configs import bccd_fcos, digits_cnn, mnist_dcgan, moving_mnist_convlstm

REPO = pathlib.Path(__file__).resolve().parents[2]

# Runs train.main as ``python -m train.main`` does, then says on stdout whether TensorFlow
# was imported (atexit handlers run after sys.exit too).
_RUNNER = """
import atexit, runpy, sys
atexit.register(lambda: print("tensorflow imported:", "tensorflow" in sys.modules))
sys.argv = ["train.main"] + sys.argv[1:]
runpy.run_module("train.main", run_name="__main__", alter_sys=True)
"""


def _cli(*args, tmp_path, timeout=120):
  env = dict(os.environ, JAXVISION_TFDS_DIR=str(tmp_path / "tfds"))
  return subprocess.run([sys.executable, "-c", _RUNNER, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


CONFIG = "--config=train/configs/digits_cnn.py"


@pytest.mark.parametrize("args,message", [
    ([CONFIG, "--config.num_epoch=3"],
     "error: --config.num_epoch: train/configs/digits_cnn.py has no field 'num_epoch' (only "
     "existing fields can be set); did you mean --config.num_epochs?"),
    ([CONFIG, "--config.model.dropot_rate=0.3"],
     "error: --config.model.dropot_rate: train/configs/digits_cnn.py has no field "
     "'model.dropot_rate' (only existing fields can be set); did you mean "
     "--config.model.dropout_rate?"),
    ([CONFIG, "--config.optimzer.learning_rate=0.1"],
     "error: --config.optimzer.learning_rate: train/configs/digits_cnn.py has no field "
     "'optimzer.learning_rate' (only existing fields can be set); did you mean "
     "--config.optimizer.learning_rate?"),
    ([CONFIG, "--config.qqqq=1"],
     "error: --config.qqqq: train/configs/digits_cnn.py has no field 'qqqq' (only existing "
     "fields can be set); the fields of config: backbone_lr_multiplier, batch_size, "),
    ([CONFIG, "--config.model.qqqq=1"],
     "error: --config.model.qqqq: train/configs/digits_cnn.py has no field 'model.qqqq' (only "
     "existing fields can be set); the fields of config.model: dropout_rate, name\n"),
    ([CONFIG, "--config.num_epochs.steps=3"],
     "error: --config.num_epochs.steps: train/configs/digits_cnn.py has no field "
     "'num_epochs.steps' (only existing fields can be set); config.num_epochs is one value "
     "(int), not a group of fields\n"),
    ([CONFIG, "--config.num_epochs=abc"],
     "error: flag --config.num_epochs=abc: invalid literal for int() with base 10: 'abc'"),
    (["--config=train/configs/no_such_config.py"],
     "error: --config=train/configs/no_such_config.py: no such file (configs: "
     "bccd_faster_rcnn, bccd_fcos, "),
    (["--config=train/configs/mnist_dcgan.py:bogus"],
     "error: --config=train/configs/mnist_dcgan.py:bogus does not load: ValueError: unknown "
     "mnist_dcgan variant 'bogus'; expected one of ('self_conditioned', 'plain')"),
    (["--mode=predict", "--top_k=0"], "error: flag --top_k=0: 0 is not a positive integer"),
    (["--mode=predict", "--top_k=-1"], "error: flag --top_k=-1: -1 is not a positive integer"),
    (["--workdr=x"], "error: Unknown command line flag 'workdr'. Did you mean: workdir ?"),
    (["--mode=evaluate", "--config.eval_flip_tta=true"],
     "error: --config.eval_flip_tta changes a field of --config, which is not given (a "
     "workdir's config.json is used as it is); pass the run's --config=<file> as well\n"),
])
def test_flag_and_config_file_errors_are_one_line_before_tensorflow(tmp_path, args, message):
  workdir = tmp_path / "run"
  out = _cli(*args, f"--workdir={workdir}", tmp_path=tmp_path)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.count("\n") == 1 and out.stderr.startswith(message), out.stderr
  assert out.stdout == "tensorflow imported: False\n"
  assert not workdir.exists() and not (tmp_path / "tfds").exists()


@pytest.mark.parametrize("args,code,message", [
    ([], 2, "error: flags workdir=None, pretrained=None, list=False: --workdir is required "
            "(unless --pretrained is given with --mode=predict, or --list)\n"),
    (["--workdir=run", "stray"], 1,
     "error: unexpected arguments ['stray'] (flags are --name=value)\n"),
])
def test_missing_workdir_and_stray_arguments_are_one_line(tmp_path, args, code, message):
  out = _cli(*args, tmp_path=tmp_path)
  assert (out.returncode, out.stderr) == (code, message)
  assert out.stdout == "tensorflow imported: False\n"


def test_a_config_file_with_a_syntax_error_is_one_line(tmp_path):
  bad = tmp_path / "bad_config.py"
  bad.write_text("def get_config(:\n  pass\n")
  out = _cli(f"--config={bad}", f"--workdir={tmp_path / 'run'}", tmp_path=tmp_path)
  assert out.returncode == 2
  assert out.stderr.startswith(f"error: --config={bad} does not load: SyntaxError: ")
  assert "bad_config.py, line 1" in out.stderr and out.stderr.count("\n") == 1


# -- Settings: through trainer.train, before any data is prepared or the workdir is created.


def _override(config, **fields):
  for key, value in fields.items():
    node = config
    *parents, leaf = key.split("__")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def _digits(**fields):
  config = digits_cnn.get_config()
  config.num_train_steps = 1
  return _override(config, **fields)


def _gan(**fields):
  config = mnist_dcgan.get_config("plain")
  config.dataset = "digits"
  return _override(config, **fields)


def _expect_early_error(config, tmp_path, monkeypatch, message, error=ValueError):
  monkeypatch.setenv("JAXVISION_TFDS_DIR", str(tmp_path / "tfds"))
  workdir = tmp_path / "run"
  with pytest.raises(error) as info:
    trainer.train(tasks.create_task(config), workdir)
  text = str(info.value)
  assert "\n" not in text and text.startswith(message), text
  assert not workdir.exists()
  assert not (tmp_path / "tfds").exists()  # no data was prepared


NAN = float("nan")


@pytest.mark.parametrize("make,fields,message", [
    (_digits, {"optimizer__learning_rate": 0.0},
     "config.optimizer.learning_rate must be > 0; found 0.0"),
    (_digits, {"optimizer__learning_rate": -1e-3},
     "config.optimizer.learning_rate must be > 0; found -0.001"),
    (_digits, {"optimizer__learning_rate": NAN},
     "config.optimizer.learning_rate must be > 0; found nan"),
    (_digits, {"optimizer__name": "adamx"},
     "config.optimizer.name must be one of 'sgd', 'adam', 'adamw'; found 'adamx'"),
    (_digits, {"optimizer__schedule": "cosine"},
     "config.optimizer.schedule must be one of 'constant', 'warmup_cosine', 'onecycle'; "
     "found 'cosine'"),
    (_digits, {"optimizer__b2": 1.0}, "config.optimizer.b2 must be in [0, 1); found 1.0"),
    (_digits, {"optimizer__warmup_steps": -5},
     "config.optimizer.warmup_steps must be an integer >= 0; found -5"),
    (_digits, {"model__dropout_rate": 1.0},
     "config.model.dropout_rate must be in [0, 1); found 1.0"),
    (_digits, {"model__dropout_rate": -0.25},
     "config.model.dropout_rate must be in [0, 1); found -0.25"),
    (_digits, {"num_train_steps": -1, "num_epochs": 0},
     "config.num_epochs must be > 0 (or set config.num_train_steps > 0); found num_epochs=0"),
    (_digits, {"num_train_steps": -1, "num_epochs": -3},
     "config.num_epochs must be > 0 (or set config.num_train_steps > 0); found num_epochs=-3"),
    (_digits, {"eval_batch_size": 0}, "config.eval_batch_size must be an integer >= 1; found 0"),
    (_digits, {"keep_checkpoints": -1},
     "config.keep_checkpoints must be an integer >= 1; found -1"),
    (_digits, {"label_smoothing": 1.0}, "config.label_smoothing must be a number in [0, 1); "
                                        "found 1.0"),
    (_digits, {"model__name": "SimpleCN"},
     "config.model.name must be one of ['EfficientNetLite0', 'LeNet5', "),
    (_digits, {"dataset": "digitz"}, "unknown dataset 'digitz'; known: digits, mnist, "),
    (_digits, {"pp_train": "resize(16)|bogus"},
     "unknown preprocessing op 'bogus'; registered ops: center_crop, "),
    (_digits, {"dtype": "float16x"},
     "config.dtype must be one of ['bfloat16', 'float32']; found 'float16x'"),
    (_digits, {"num_devices": 9},
     "num_devices must be between 1 and the 8 available devices; found 9"),
    (_digits, {"num_devices": 3}, "batch_size=64 must be divisible by the 3 devices of the mesh"),
    (_gan, {"num_train_steps": 0}, "config.num_train_steps must be an integer > 0; found 0"),
    (_gan, {"g_optimizer__learning_rate": -2e-4},
     "config.g_optimizer.learning_rate must be > 0; found -0.0002"),
    (_gan, {"d_optimizer__b1": 1.5}, "config.d_optimizer.b1 must be in [0, 1); found 1.5"),
    (_gan, {"generator__name": "Generatr"},
     "config.generator.name must be one of ['ConditionalGenerator', 'Generator']; found "
     "'Generatr'"),
])
def test_nonsense_settings_fail_before_data_or_workdir(tmp_path, monkeypatch, make, fields,
                                                       message):
  _expect_early_error(make(**fields), tmp_path, monkeypatch, message)


@pytest.mark.parametrize("config,message", [
    (_override(moving_mnist_convlstm.get_config(), num_train_steps=-1),
     "config.num_train_steps must be an integer > 0; found -1"),
    (_override(moving_mnist_convlstm.get_config(), model__name="ConvLSTM"),
     "config.model.name must be one of ['ConvLSTMForecaster']; found 'ConvLSTM'"),
    (_override(bccd_fcos.get_config(), num_epochs=0),
     "config.num_epochs must be > 0 (or set config.num_train_steps > 0); found num_epochs=0"),
    (_override(bccd_fcos.get_config(), optimizer__learning_rate=0.0),
     "config.optimizer.learning_rate must be > 0; found 0.0"),
    (_override(bccd_fcos.get_config(), eval_batch_size=0),
     "config.eval_batch_size must be an integer >= 1; found 0"),
])
def test_other_tasks_check_their_settings_first(tmp_path, monkeypatch, config, message):
  _expect_early_error(config, tmp_path, monkeypatch, message)


def test_unknown_task_is_one_line():
  with pytest.raises(ValueError, match=r"^unknown task 'clasification'; expected one of "
                                       r"\['classification', 'detection', 'gan', "
                                       r"'multilabel', 'sequence_prediction'"):
    tasks.create_task(ml_collections.ConfigDict({"task": "clasification"}))


def test_an_eval_split_typo_fails_before_the_workdir_is_created(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXVISION_TFDS_DIR", str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match=r"bad split 'tset'.*splits: \['test', 'train'\]"):
    trainer.train(tasks.create_task(_digits(eval_split="tset")), tmp_path / "run")
  assert not (tmp_path / "run").exists()


# -- The workdir.


def test_a_workdir_that_is_a_file_or_below_one(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("x")
  monkeypatch.setenv("JAXVISION_TFDS_DIR", str(tmp_path / "tfds"))
  for workdir, message in [
      (tmp_path / "file", f"--workdir {tmp_path / 'file'} is a file; expected a folder"),
      (tmp_path / "file" / "sub", f"--workdir {tmp_path / 'file' / 'sub'}: "
                                  f"{tmp_path / 'file'} is a file, so no folder can be"),
  ]:
    with pytest.raises(NotADirectoryError) as info:
      trainer.train(tasks.create_task(_digits()), workdir)
    assert "\n" not in str(info.value) and str(info.value).startswith(message)
  assert not (tmp_path / "tfds").exists()
  assert (tmp_path / "file").read_text() == "x"


def test_a_read_only_workdir(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXVISION_TFDS_DIR", str(tmp_path / "tfds"))
  parent = tmp_path / "ro"
  parent.mkdir()
  parent.chmod(0o555)
  if os.access(parent, os.W_OK):  # root: permissions do not stop it; report as they would
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        False if pathlib.Path(path) == parent else real_access(path, mode, **kw)))
  try:
    with pytest.raises(PermissionError) as info:
      trainer.train(tasks.create_task(_digits()), parent / "run")
  finally:
    parent.chmod(0o755)
  assert str(info.value) == (f"--workdir {parent / 'run'} cannot be created: {parent} is not "
                             f"writable; choose a folder you can write to")
  assert not (parent / "run").exists() and not (tmp_path / "tfds").exists()


def test_a_read_only_file_system_found_when_creating_the_workdir(tmp_path, monkeypatch):
  """``os.access`` cannot see a read-only mount: creating the folder then fails, in one line."""
  monkeypatch.setenv("JAXVISION_TFDS_DIR", str(tmp_path / "tfds"))
  real_mkdir = pathlib.Path.mkdir

  def mkdir(self, *args, **kwargs):
    if self == tmp_path / "run":
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
    return real_mkdir(self, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
  with pytest.raises(PermissionError) as info:
    trainer.train(tasks.create_task(_digits()), tmp_path / "run")
  assert str(info.value) == (f"--workdir {tmp_path / 'run'} cannot be written (Read-only file "
                             f"system); choose a folder you can write to")


# -- End to end: the CLI's one-line errors for a finished workdir and a file as --workdir.


@pytest.mark.slow
def test_cli_refuses_fewer_steps_than_a_finished_workdir_and_a_file_workdir(digits_demo_run):
  workdir, tfds_dir, _ = digits_demo_run
  before = {name: (workdir / name).read_bytes() for name in ("results.json", "config.json")}
  assert json.loads(before["results.json"])["steps"] == 2
  out = run_cli(CONFIG, f"--workdir={workdir}", "--config.num_train_steps=1", tfds_dir=tfds_dir)
  assert out.returncode == 1 and out.stderr == (
      "error: ValueError: the workdir's latest checkpoint is at step 2, past this run's 1 "
      "steps (were num_epochs or num_train_steps lowered?): use a fresh --workdir, or "
      "--mode=evaluate to evaluate what it holds\n")
  assert "Resuming" not in out.stdout
  assert {name: (workdir / name).read_bytes() for name in before} == before
  out = run_cli(CONFIG, f"--workdir={workdir / 'results.json'}", tfds_dir=tfds_dir)
  assert out.returncode == 1 and out.stderr == (
      f"error: NotADirectoryError: --workdir {workdir / 'results.json'} is a file; expected a "
      f"folder (or a path where one can be created)\n")
  out = run_cli(f"--workdir={workdir}", "--mode=generate", tfds_dir=tfds_dir)
  assert out.returncode == 1 and out.stderr == (
      "error: --mode=generate is not available for config.task 'classification'; expected one "
      "of ('train', 'evaluate', 'predict', 'export')\n")  # not absl's whole usage text first
