"""Helpers shared by tests (importable as ``tests.support``; no test imports another test module).

* :func:`require_data`: a dataset folder under the data root, or skip.
* NumPy float64 references of Flax's LSTM/GRU cells and of ``StackedRNN``: :func:`np_stacked`.
* :func:`run_cli`: ``python -m train.main`` in a subprocess, with its own prepared-data folder.
* :func:`train_digits_cnn`: a few SGD steps of SimpleCNN on digits over every device (the
  multi-host test runs it in two processes and in one); :func:`flat_leaves`.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxvision.data import paths


def require_data(name: str):
  """Returns the folder ``name`` under the data root, or skips (fails in CI) if absent."""
  path = paths.local_dataset_dir(name)
  if not path.exists():
    msg = f"dataset folder {path} not found (set ${paths.ENV_VAR} to the shared data root)"
    if os.environ.get("CI"):
      pytest.fail(msg)
    pytest.skip(msg)
  return path


REPO = pathlib.Path(__file__).resolve().parents[1]


def require_module(module: str, extra: str = "test,pretrained"):
  """``module`` imported; skips (fails in CI) when it is absent: the extras of ``make test``."""
  try:
    return __import__(module)
  except ImportError:
    msg = f"{module} is not installed (pip install \"jaxvision[{extra}]\")"
    if os.environ.get("CI"):
      pytest.fail(msg)
    pytest.skip(msg)


def run_cli(*args, tfds_dir, timeout=300) -> subprocess.CompletedProcess:
  """``python -m train.main *args`` from the repository root (stdout and stderr captured as
  text: pipes, not a terminal); prepared records go to ``tfds_dir``."""
  env = dict(os.environ, JAXVISION_TFDS_DIR=str(tfds_dir))
  return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------ NumPy float64 references of jaxvision.models.rnn
# Flax's cells (flax/linen/recurrent.py): Dense kernels are [in, out];
#   LSTM: ii/if/ig/io input kernels (no bias), hi/hf/hg/ho recurrent kernels with bias.
#   GRU:  ir/iz/in input kernels with bias, hr/hz recurrent kernels without bias, hn with bias.


def np_sigmoid(x):
  """The logistic function ``1 / (1 + exp(-x))`` in NumPy."""
  return 1.0 / (1.0 + np.exp(-x))


def np_lstm_step(p, carry, x):
  """One step of Flax's ``LSTMCell``: ``carry = (c, h)``, each ``[features]``; x ``[F]``."""
  c, h = carry

  def pre(k):
    return x @ p["i" + k]["kernel"] + h @ p["h" + k]["kernel"] + p["h" + k]["bias"]

  i, f, o = np_sigmoid(pre("i")), np_sigmoid(pre("f")), np_sigmoid(pre("o"))
  g = np.tanh(pre("g"))
  c = f * c + i * g
  h = o * np.tanh(c)
  return (c, h), h


def np_gru_step(p, h, x):
  """One step of Flax's ``GRUCell``: ``h [features]``, ``x [F]``; returns ``(h, h)``."""
  r = np_sigmoid(x @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
  z = np_sigmoid(x @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
  n = np.tanh(x @ p["in"]["kernel"] + p["in"]["bias"]
              + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
  h = (1.0 - z) * n + z * h
  return h, h


NP_STEPS = {"lstm": np_lstm_step, "gru": np_gru_step}


def np_run(cell, p, xs, features):
  """Runs a cell over xs [T, F] from a zero state; returns (outputs [T, features], last h)."""
  h = np.zeros(features)
  carry = (np.zeros(features), h) if cell == "lstm" else h
  outs = []
  for x in xs:
    carry, y = NP_STEPS[cell](p, carry, x)
    outs.append(y)
  return np.stack(outs), outs[-1]


def np_stacked(cell, params, xs, length, features, num_layers, bidirectional):
  """float64 reference of StackedRNN for one sequence xs [T, F] with `length` valid steps.

  Returns (sequence [T, D] with zeros beyond length, last [D]).
  """
  x = xs[:length]
  for i in range(num_layers):
    if bidirectional:
      fwd, last_f = np_run(cell, params[f"layer_{i}_forward"], x, features)
      bwd, last_b = np_run(cell, params[f"layer_{i}_backward"], x[::-1], features)
      x = np.concatenate([fwd, bwd[::-1]], axis=-1)
      last = np.concatenate([last_f, last_b])
    else:
      x, last = np_run(cell, params[f"layer_{i}"], x, features)
  seq = np.zeros((xs.shape[0], x.shape[-1]))
  seq[:length] = x
  return seq, last


# ------------------------------------------------------------------- multi-host training run


def train_digits_cnn(num_steps: int = 4):
  """Trains SimpleCNN on digits for ``num_steps`` SGD steps over all devices of all processes.

  Global batch 32 sharded on a mesh of every device; the same seeds everywhere, so one process
  with 8 devices and two processes with 4 each give the same parameters.

  Returns:
    The params pytree on the host.
  """
  # Imported here, not at the top: conftest imports this module before any test runs.
  import jax
  from jaxvision import data, models
  from jaxvision.tasks import classification
  from jaxvision.training import jit, optim, sharding, state as state_lib

  builder, info = data.get_dataset("digits")
  mesh = sharding.make_mesh()
  it = data.make_train_iterator(builder, info, split="train", global_batch_size=32,
                                pp="resize(16)|random_crop(16, pad=1)|value_range(0, 1)", seed=3)
  tx, _ = optim.make_optimizer(name="sgd", learning_rate=0.05, schedule="constant")
  state = state_lib.create_train_state(models.SimpleCNN(num_classes=10, dropout_rate=0.2), tx,
                                       input_shape=(16, 16, 1), rng=jax.random.PRNGKey(0),
                                       mesh=mesh)
  step = jit.jit_train_step(classification.make_train_step(), mesh)
  for _ in range(num_steps):
    state, _ = step(state, sharding.shard_batch(next(it), mesh))
  return jax.device_get(state.params)


def flat_leaves(tree) -> dict[str, np.ndarray]:
  """``{'a/b/c': leaf}`` for every leaf of a nested-dict pytree (keys joined with '/')."""
  import jax
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}
