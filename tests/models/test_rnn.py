"""Tests for jaxvision.models.rnn against NumPy float64 references of the Flax cell equations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import rnn
from tests.support import np_gru_step, np_lstm_step, np_sigmoid, np_stacked

ATOL = 1e-5


# ----------------------------------------------------------------------------- references
# The float64 NumPy cells and StackedRNN (np_lstm_step, np_gru_step, np_stacked) live in
# tests/support.py, shared with tests/train/test_lstm.py.


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def normal(shape, seed, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def random_params(module, *args, seed=0, scale=0.4, **kwargs):
  """Noise for every parameter of ``module`` (biases too, which Flax initializes to zero).

  Shapes come from ``jax.eval_shape`` and values from NumPy, so nothing is compiled.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))['params']
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: (scale * rng.normal(size=s.shape)).astype(s.dtype),
                                shapes)


def jit_apply(module, **kwargs):
  """``module.apply`` compiled once per input shape (eager Flax RNNs recompile every call)."""
  return jax.jit(lambda params, *args: module.apply({'params': params}, *args, **kwargs))


def np_conv_same(z, kernel, bias):
  """Cross-correlation with SAME padding (odd kernels): z [B,H,W,C], kernel [kh,kw,C,O]."""
  kh, kw = kernel.shape[:2]
  _, height, width, _ = z.shape
  zp = np.pad(z, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out = np.zeros(z.shape[:3] + (kernel.shape[-1],))
  for dy in range(kh):
    for dx in range(kw):
      out += zp[:, dy:dy + height, dx:dx + width, :] @ kernel[dy, dx]
  return out + bias


# ----------------------------------------------------------------------------- cells


@pytest.mark.parametrize('cell_cls', [nn.LSTMCell, nn.OptimizedLSTMCell])
def test_lstm_step_matches_numpy(cell_cls):
  cell = cell_cls(features=5)
  x = normal((3, 4), 0)
  carry = (normal((3, 5), 1), normal((3, 5), 2))
  params = random_params(cell, carry, x, scale=0.5)
  (c, h), y = jit_apply(cell)(params, carry, x)
  (c_ref, h_ref), _ = np_lstm_step(_f64(params), _f64(carry), np.float64(x))
  np.testing.assert_allclose(c, c_ref, atol=ATOL)
  np.testing.assert_allclose(h, h_ref, atol=ATOL)
  np.testing.assert_array_equal(y, h)


def test_gru_step_matches_numpy():
  cell = nn.GRUCell(features=5)
  x, h0 = normal((3, 4), 0), normal((3, 5), 1)
  params = random_params(cell, h0, x, scale=0.5)
  h, _ = jit_apply(cell)(params, h0, x)
  h_ref, _ = np_gru_step(_f64(params), np.float64(h0), np.float64(x))
  np.testing.assert_allclose(h, h_ref, atol=ATOL)


@pytest.mark.parametrize('conv_as_matmul', [True, False])
@pytest.mark.parametrize('kernel_size', [(3, 3), (5, 3)])
def test_conv_lstm_step_matches_numpy(kernel_size, conv_as_matmul):
  cell = rnn.ConvLSTMCell(features=4, kernel_size=kernel_size, forget_bias=1.0,
                          conv_as_matmul=conv_as_matmul)
  x = normal((2, 5, 6, 3), 0)
  carry = (normal((2, 5, 6, 4), 1), normal((2, 5, 6, 4), 2))
  params = random_params(cell, carry, x, scale=0.3)
  (c, h), y = jit_apply(cell)(params, carry, x)

  p = _f64(params)['gates']
  c0, h0 = _f64(carry)
  gates = np_conv_same(np.concatenate([np.float64(x), h0], -1), p['kernel'], p['bias'])
  i, f, g, o = np.split(gates, 4, axis=-1)
  c_ref = np_sigmoid(f + 1.0) * c0 + np_sigmoid(i) * np.tanh(g)
  h_ref = np_sigmoid(o) * np.tanh(c_ref)
  np.testing.assert_allclose(c, c_ref, atol=ATOL)
  np.testing.assert_allclose(h, h_ref, atol=ATOL)
  np.testing.assert_array_equal(y, h)


@pytest.mark.parametrize('kernel_size', [(3, 3), (2, 4)])
def test_same_conv_matches_flax_conv(kernel_size):
  x = normal((2, 3, 5, 6, 3), 0)  # Two batch dims.
  conv = nn.Conv(7, kernel_size, padding='SAME')
  params = random_params(conv, x)
  expected = jit_apply(conv)(params, x)
  for as_matmul in (True, False):
    ours = rnn.SameConv2D(7, kernel_size, as_matmul=as_matmul)
    assert jax.tree_util.tree_map(jnp.shape, random_params(ours, x)) == jax.tree_util.tree_map(
        jnp.shape, params)
    np.testing.assert_allclose(jit_apply(ours)(params, x), expected, atol=1e-5)


def test_conv_lstm_cell_runs_under_nn_rnn():
  layer = nn.RNN(rnn.ConvLSTMCell(features=3), return_carry=True)
  x = normal((2, 4, 6, 6, 2), 0)  # [B, T, H, W, C]
  (c, h), ys = jit_apply(layer)(random_params(layer, x), x)
  assert ys.shape == (2, 4, 6, 6, 3)
  assert c.shape == h.shape == (2, 6, 6, 3)
  np.testing.assert_array_equal(h, ys[:, -1])


# ----------------------------------------------------------------------------- StackedRNN


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_stacked_rnn_matches_numpy(cell):
  module = rnn.StackedRNN(features=4, num_layers=2, cell=cell)
  xs = normal((2, 6, 3), 5)
  params = random_params(module, xs, train=False)
  seq, last = jit_apply(module, train=False)(params, xs)
  assert seq.shape == (2, 6, 4) and last.shape == (2, 4)
  for b in range(2):
    seq_ref, last_ref = np_stacked(cell, _f64(params), np.float64(xs[b]), 6, 4, 2, False)
    np.testing.assert_allclose(seq[b], seq_ref, atol=ATOL)
    np.testing.assert_allclose(last[b], last_ref, atol=ATOL)


def test_scanned_layer_equals_python_loop_over_cell():
  module = rnn.StackedRNN(features=6, num_layers=1, cell='lstm')
  xs = normal((3, 7, 5), 0)
  params = random_params(module, xs, train=False)

  @jax.jit
  def loop(params, xs):
    cell = nn.OptimizedLSTMCell(features=6)
    carry = cell.initialize_carry(jax.random.key(0), (3, 5))
    outs = []
    for t in range(xs.shape[1]):  # Python loop: T copies of the cell.
      carry, y = cell.apply({'params': params['layer_0']}, carry, xs[:, t])
      outs.append(y)
    return jnp.stack(outs, axis=1), carry[1]

  seq, last = jit_apply(module, train=False)(params, xs)
  seq_loop, last_loop = loop(params, xs)
  np.testing.assert_allclose(seq, seq_loop, atol=1e-6)
  np.testing.assert_allclose(last, last_loop, atol=1e-6)


def test_time_loop_is_a_scan_not_unrolled():
  module = rnn.StackedRNN(features=4, num_layers=2, bidirectional=True)
  params = random_params(module, np.zeros((2, 3, 3), np.float32), train=False)

  def jaxpr(t):
    return jax.make_jaxpr(lambda x: module.apply({'params': params}, x, train=False))(
        jnp.zeros((2, t, 3)))

  short, long = jaxpr(3), jaxpr(40)
  assert 'scan' in str(short)
  assert len(short.eqns) == len(long.eqns)  # The program does not grow with T.


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_bidirectional_padding_is_ignored(cell):
  module = rnn.StackedRNN(features=4, num_layers=2, cell=cell, bidirectional=True)
  lengths = np.array([6, 3, 1])
  valid = normal((3, 6, 3), 1)
  mask = np.arange(6)[None, :, None] < lengths[:, None, None]
  zeros_padded = np.where(mask, valid, 0.0)
  garbage_padded = np.where(mask, valid, normal(valid.shape, 2, scale=100.0))
  params = random_params(module, valid, train=False)
  run = jit_apply(module, train=False)

  seq_z, last_z = run(params, zeros_padded, lengths)
  seq_g, last_g = run(params, garbage_padded, lengths)
  assert seq_g.shape == (3, 6, 8) and last_g.shape == (3, 8)
  np.testing.assert_allclose(seq_g, seq_z, atol=1e-6)
  np.testing.assert_allclose(last_g, last_z, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(seq_g)[~mask[..., 0]], 0.0)
  for b, n in enumerate(lengths):
    seq_ref, last_ref = np_stacked(cell, _f64(params), np.float64(valid[b]), n, 4, 2, True)
    np.testing.assert_allclose(seq_g[b], seq_ref, atol=ATOL)
    np.testing.assert_allclose(last_g[b], last_ref, atol=ATOL)
  # The middle sequence alone, unpadded: Flax's plain time reversal, no seq_lengths.
  seq_1, last_1 = run(params, valid[1:2, :3])
  np.testing.assert_allclose(seq_g[1, :3], seq_1[0], atol=1e-5)
  np.testing.assert_allclose(last_g[1], last_1[0], atol=1e-5)


def test_stacked_shapes_and_dropout_only_between_layers():
  x = normal((2, 3, 3), 0)
  module = rnn.StackedRNN(features=5, num_layers=3, dropout_rate=0.5)
  params = random_params(module, x, train=False)
  assert sorted(params) == ['layer_0', 'layer_1', 'layer_2']
  assert params['layer_1']['ii']['kernel'].shape == (5, 5)

  @jax.jit
  def run(params, x, key):
    apply = lambda m, p, train: m.apply({'params': p}, x, train=train, rngs={'dropout': key})[0]
    no_dropout = rnn.StackedRNN(features=5, num_layers=3)
    one = rnn.StackedRNN(features=5, num_layers=1, dropout_rate=0.5)
    p1 = {'layer_0': params['layer_0']}
    return (apply(module, params, False), apply(no_dropout, params, False),
            apply(module, params, True), apply(one, p1, True), apply(one, p1, False))

  seq_eval, seq_plain, seq_train, one_train, one_eval = run(params, x, jax.random.key(3))
  assert seq_eval.shape == (2, 3, 5)
  np.testing.assert_array_equal(seq_eval, seq_plain)
  assert not np.allclose(seq_train, seq_eval)
  np.testing.assert_array_equal(one_train, one_eval)  # Nothing between layers to drop.


def test_gru_and_lstm_aliases():
  x = np.zeros((1, 2, 3), np.float32)
  assert 'hn' in random_params(rnn.GRU(features=2), x, train=False)['layer_0']
  assert 'hg' in random_params(rnn.LSTM(features=2), x, train=False)['layer_0']


# ----------------------------------------------------------------------------- classifiers


@pytest.mark.parametrize('pooling', ['last', 'mean'])
def test_classifier_pooling_ignores_padding(pooling):
  model = rnn.SequenceClassifier(num_classes=3, features=4, num_layers=2, bidirectional=True,
                                 pooling=pooling)
  lengths = np.array([5, 2])
  valid = normal((2, 5, 3), 7)
  mask = np.arange(5)[None, :, None] < lengths[:, None, None]
  params = random_params(model, valid, train=False)
  run = jax.jit(lambda p, x, n: model.apply({'params': p}, x, train=False, seq_lengths=n))

  logits_z, aux_z = run(params, np.where(mask, valid, 0.0), lengths)
  logits_g, aux_g = run(params, np.where(mask, valid, -50.0), lengths)
  np.testing.assert_allclose(logits_g, logits_z, atol=1e-6)
  assert logits_g.shape == (2, 3)
  assert aux_g['pre_logits'].shape == (2, 8) and aux_g['sequence'].shape == (2, 5, 8)

  head = _f64(params['head'])
  p64 = _f64(params['encoder'])
  for b, n in enumerate(lengths):
    seq, last = np_stacked('lstm', p64, np.float64(valid[b]), n, 4, 2, True)
    pooled = last if pooling == 'last' else seq[:n].mean(axis=0)
    np.testing.assert_allclose(aux_g['pre_logits'][b], pooled, atol=ATOL)
    np.testing.assert_allclose(logits_g[b], pooled @ head['kernel'] + head['bias'], atol=ATOL)


def test_row_lstm_classifier_reads_rows():
  model = rnn.RowLSTMClassifier(num_classes=10, features=8)
  images = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
  params = random_params(model, images, train=False, scale=0.2)
  assert params['encoder']['layer_0_forward']['ii']['kernel'].shape == (28, 8)
  assert params['encoder']['layer_1_backward']['ii']['kernel'].shape == (16, 8)
  logits, aux = jit_apply(model, train=False)(params, images)
  assert logits.shape == (2, 10)
  assert aux['pre_logits'].shape == (2, 16)  # 2-layer bidirectional by default
  assert aux['sequence'].shape == (2, 28, 16)
  # Step t reads row t (W * C features).
  seq_ref, last_ref = np_stacked('lstm', _f64(params['encoder']), np.float64(images[1, :, :, 0]),
                                 28, 8, 2, True)
  np.testing.assert_allclose(aux['sequence'][1], seq_ref, atol=ATOL)
  np.testing.assert_allclose(aux['pre_logits'][1], last_ref, atol=ATOL)
  rgb = rnn.RowLSTMClassifier(num_classes=2, features=4, num_layers=1, bidirectional=False)
  v = random_params(rgb, np.zeros((1, 5, 6, 3), np.float32), train=False)
  assert v['encoder']['layer_0']['ii']['kernel'].shape == (18, 4)


def test_classifier_gru_dropout_train_path():
  model = rnn.SequenceClassifier(num_classes=4, features=6, cell='gru', dropout_rate=0.3)
  x = normal((2, 5, 3), 0)
  params = random_params(model, x, train=False)

  @jax.jit
  def run(params, x, key):
    evaluated = model.apply({'params': params}, x, train=False)
    trained = model.apply({'params': params}, x, train=True, rngs={'dropout': key})
    return evaluated, trained

  (logits_eval, aux_eval), (logits_train, aux_train) = run(params, x, jax.random.key(2))
  assert logits_train.shape == (2, 4)
  assert not np.allclose(logits_train, logits_eval)
  assert np.isfinite(np.asarray(logits_train)).all()
  # pre_logits are the features before head dropout; layer-1 output is dropped in training.
  assert not np.allclose(aux_train['pre_logits'], aux_eval['pre_logits'])
  seq, last = np_stacked('gru', _f64(params['encoder']), np.float64(x[0]), 5, 6, 2, False)
  np.testing.assert_allclose(aux_eval['pre_logits'][0], last, atol=ATOL)


def test_bad_inputs_raise_clear_errors():
  x = np.zeros((2, 5, 3), np.float32)
  with pytest.raises(ValueError, match='cell must be one of'):
    random_params(rnn.StackedRNN(features=2, cell='rnn'), x, train=False)
  with pytest.raises(ValueError, match='pooling must be one of'):
    random_params(rnn.SequenceClassifier(num_classes=2, pooling='max'), x, train=False)
  with pytest.raises(ValueError, match=r'expects sequences \[B, T, F\]'):
    random_params(rnn.SequenceClassifier(num_classes=2), x[..., None], train=False)
  with pytest.raises(ValueError, match=r'expects images \[B, H, W, C\]'):
    random_params(rnn.RowLSTMClassifier(num_classes=2), x, train=False)
  with pytest.raises(ValueError, match='seq_lengths must have shape'):
    random_params(rnn.StackedRNN(features=2), x, np.array([1, 2, 3]), train=False)


# ----------------------------------------------------------------------------- forecaster


def test_depth_to_space_matches_loop():
  x = normal((2, 3, 4, 2 * 2 * 5), 0)
  y = np.asarray(rnn.depth_to_space(jnp.asarray(x), 2))
  assert y.shape == (2, 6, 8, 5)
  expected = np.zeros((2, 6, 8, 5), np.float32)
  for i in range(3):
    for j in range(4):
      for dy in range(2):
        for dx in range(2):
          k = (dy * 2 + dx) * 5
          expected[:, 2 * i + dy, 2 * j + dx] = x[:, i, j, k:k + 5]
  np.testing.assert_array_equal(y, expected)
  with pytest.raises(ValueError, match='divisible by block'):
    rnn.depth_to_space(jnp.zeros((1, 2, 2, 6)), 2)


def test_forecaster_default_shapes():
  model = rnn.ConvLSTMForecaster()
  frames = jax.ShapeDtypeStruct((2, 10, 64, 64, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), frames)
  logits, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, frames)
  assert logits.shape == (2, 10, 64, 64, 1) and aux == {}
  p = variables['params']
  assert p['encoder_0']['gates']['kernel'].shape == (3, 3, 32 + 32, 128)  # at 16x16
  assert p['forecaster_1']['gates']['kernel'].shape == (3, 3, 32 + 32, 128)


def test_forecaster_small_output_grads_and_state_handoff():
  model = rnn.ConvLSTMForecaster(num_output_frames=3, stem_features=(4,), hidden_features=(4, 6))
  frames = np.random.default_rng(0).uniform(size=(2, 4, 8, 8, 1)).astype(np.float32)
  # The second pair of sequences is the first pair played backwards.
  frames = np.concatenate([frames, frames[:, ::-1]])
  targets = (np.random.default_rng(1).uniform(size=(4, 3, 8, 8, 1)) > 0.5).astype(np.float32)
  params = random_params(model, frames, train=False, scale=0.3)

  @jax.jit
  def loss_and_grad(params):
    def loss(params):
      logits, _ = model.apply({'params': params}, frames, train=True)
      bce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
      return bce.mean(), logits
    return jax.value_and_grad(loss, has_aux=True)(params)

  (loss, logits), grads = loss_and_grad(params)
  assert logits.shape == (4, 3, 8, 8, 1) and np.isfinite(float(loss))
  # The forecast depends on the input frames (through the encoder states).
  assert not np.allclose(logits[:2], logits[2:], atol=1e-4)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.isfinite(np.asarray(g)).all(), path
  # Encoder parameters reach the loss only through the states handed to the forecaster.
  for name in ['stem_0', 'encoder_0', 'encoder_1', 'forecaster_0', 'forecaster_1', 'up_0']:
    total = sum(np.abs(np.asarray(g)).sum() for g in jax.tree_util.tree_leaves(grads[name]))
    assert total > 0, name


def test_forecaster_bad_inputs():
  model = rnn.ConvLSTMForecaster(stem_features=(4, 4), hidden_features=(4,))
  with pytest.raises(ValueError, match=r'expected frames \[B, T, H, W, C\]'):
    random_params(model, np.zeros((2, 8, 8, 1), np.float32), train=False)
  with pytest.raises(ValueError, match='divisible by 4'):
    random_params(model, np.zeros((1, 2, 10, 10, 1), np.float32), train=False)
