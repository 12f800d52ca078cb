"""Recurrent models: stacked (bi)LSTM/GRU encoders, sequence classifiers, ConvLSTM forecasting.

Every recurrence runs through ``nn.RNN`` (a lifted ``nn.scan``), so a sequence of any length
compiles to one loop rather than a Python-unrolled graph.

Classifiers follow the library's model contract: ``__call__(x, *, train)`` returns
``(logits, intermediates)`` where ``intermediates['pre_logits']`` holds the penultimate
features.

Shapes use ``B`` batch, ``T`` time steps, ``F`` input features, ``D`` output features
(``features`` or ``2 * features`` when bidirectional).

Variable-length batches: pass ``seq_lengths`` ``[B]`` (int, each in ``[1, T]``; values outside
are clipped). Steps at ``t >= seq_lengths[b]`` are padding: they never influence the outputs at
valid steps (the backward direction of a bidirectional layer reverses each sequence within its
own length), and the encoders return zeros there.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models import layers
from jaxvision.models.layers import Conv

Array = jax.Array
Dtype = Any

# Recurrent cells selectable by name. ``OptimizedLSTMCell`` has the same parameters (names,
# shapes and equations) as ``nn.LSTMCell`` but does one fused matmul per step.
CELLS = {
    'lstm': nn.OptimizedLSTMCell,
    'gru': nn.GRUCell,
}
POOLINGS = ('last', 'mean')


def _check_choice(what: str, value: str, choices) -> None:
  if value not in choices:
    raise ValueError(f'{what} must be one of {sorted(choices)}, got {value!r}')


def _hidden(carry) -> Array:
  """The output state ``h`` of a cell's carry: ``(c, h)`` for LSTM cells, ``h`` for GRU."""
  return carry[1] if isinstance(carry, tuple) else carry


def length_mask(seq_lengths: Array, num_steps: int) -> Array:
  """Returns a bool mask ``[B, T]``: ``mask[b, t] = t < seq_lengths[b]``."""
  return jnp.arange(num_steps)[None, :] < seq_lengths[:, None]


def depth_to_space(x: Array, block: int) -> Array:
  """``[N, H, W, block * block * C]`` -> ``[N, H * block, W * block, C]``.

  Channel ``(dy * block + dx) * C + c`` of pixel ``(y, x)`` goes to pixel
  ``(y * block + dy, x * block + dx)``, channel ``c`` (TensorFlow's ``depth_to_space``, NHWC).
  """
  n, h, w, channels = x.shape
  if channels % (block * block):
    raise ValueError(f'channels ({channels}) must be divisible by block**2 ({block * block})')
  c = channels // (block * block)
  x = x.reshape(n, h, w, block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * block, w * block, c)


class StackedRNN(nn.Module):
  """Stacked, optionally bidirectional LSTM/GRU over ``[B, T, F]`` sequences.

  Attributes:
    features: hidden units per direction per layer.
    num_layers: number of stacked recurrent layers.
    cell: ``'lstm'`` (``nn.OptimizedLSTMCell``) or ``'gru'`` (``nn.GRUCell``).
    bidirectional: run a second, reversed recurrence per layer and concatenate the two
      outputs (``[forward, backward]``) along features.
    dropout_rate: dropout applied to the outputs of every layer but the last (only when
      ``train=True``; needs a ``'dropout'`` rng).
    unroll: time steps unrolled per scan iteration (a speed knob; results are identical).
    dtype: computation dtype (parameters stay float32).
  """

  features: int
  num_layers: int = 1
  cell: str = 'lstm'
  bidirectional: bool = False
  dropout_rate: float = 0.0
  unroll: int = 1
  dtype: Dtype | None = None

  def _rnn(self, name: str) -> nn.RNN:
    # The cell carries the parameters (and the name); nn.RNN itself owns none.
    cell = CELLS[self.cell](features=self.features, dtype=self.dtype, name=name)
    return nn.RNN(cell, unroll=self.unroll)

  @nn.compact
  def __call__(self, x: Array, seq_lengths: Array | None = None, *,
               train: bool) -> tuple[Array, Array]:
    """Runs the stack.

    Args:
      x: ``[B, T, F]`` float inputs.
      seq_lengths: optional ``[B]`` int valid lengths (see module docstring).
      train: enables dropout between layers.

    Returns:
      ``(sequence, last)``: ``sequence`` ``[B, T, D]`` is the top layer's output at every step
      (zeros at padded steps); ``last`` ``[B, D]`` is the top layer's final state, i.e. the
      forward state after the last valid step, concatenated (when bidirectional) with the
      backward state after reading back to step 0.
    """
    _check_choice('cell', self.cell, CELLS)
    if self.num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {self.num_layers}')
    if x.ndim != 3:
      raise ValueError(f'expected inputs [B, T, F], got shape {x.shape}')
    batch, num_steps = x.shape[:2]
    mask = None
    if seq_lengths is not None:
      seq_lengths = jnp.asarray(seq_lengths)
      if seq_lengths.shape != (batch,):
        raise ValueError(f'seq_lengths must have shape [B]=({batch},), got {seq_lengths.shape}')
      seq_lengths = jnp.clip(seq_lengths.astype(jnp.int32), 1, num_steps)
      mask = length_mask(seq_lengths, num_steps)[..., None]

    for i in range(self.num_layers):
      if i > 0 and self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      if self.bidirectional:
        layer = nn.Bidirectional(self._rnn(f'layer_{i}_forward'), self._rnn(f'layer_{i}_backward'))
      else:
        layer = self._rnn(f'layer_{i}')
      carry, x = layer(x, seq_lengths=seq_lengths, return_carry=True)
      if mask is not None:
        x = jnp.where(mask, x, 0)
    if self.bidirectional:
      last = jnp.concatenate([_hidden(carry[0]), _hidden(carry[1])], axis=-1)
    else:
      last = _hidden(carry)
    return x, last


LSTM = functools.partial(StackedRNN, cell='lstm')
GRU = functools.partial(StackedRNN, cell='gru')


class SequenceClassifier(nn.Module):
  """Stacked (bi)LSTM/GRU encoder + linear head over a pooled sequence representation.

  ``__call__(x [B, T, F], *, train, seq_lengths=None)`` returns ``(logits [B, num_classes],
  {'pre_logits': [B, D], 'sequence': [B, T, D]})``.

  Attributes:
    num_classes: number of output classes.
    features: hidden units per direction per layer.
    num_layers: stacked recurrent layers.
    cell: ``'lstm'`` or ``'gru'``.
    bidirectional: concatenate forward and backward outputs (``D = 2 * features``).
    pooling: ``'last'`` (the encoder's final valid state, see ``StackedRNN``) or ``'mean'``
      (mean of the top layer's outputs over the valid steps).
    dropout_rate: dropout between recurrent layers and on the pooled features (train only).
    unroll: scan unroll factor (speed only).
    dtype: computation dtype.
  """

  num_classes: int
  features: int = 128
  num_layers: int = 2
  cell: str = 'lstm'
  bidirectional: bool = False
  pooling: str = 'last'
  dropout_rate: float = 0.0
  unroll: int = 1
  dtype: Dtype | None = None

  @nn.nowrap
  def to_sequence(self, x: Array) -> Array:
    """Maps the model input to ``[B, T, F]``; subclasses adapt other input layouts."""
    if x.ndim != 3:
      raise ValueError(f'{type(self).__name__} expects sequences [B, T, F], got shape {x.shape}')
    return x

  @nn.compact
  def __call__(self, x: Array, *, train: bool,
               seq_lengths: Array | None = None) -> tuple[Array, dict[str, Array]]:
    _check_choice('pooling', self.pooling, POOLINGS)
    x = jnp.asarray(self.to_sequence(x), self.dtype or jnp.float32)
    sequence, last = StackedRNN(
        features=self.features, num_layers=self.num_layers, cell=self.cell,
        bidirectional=self.bidirectional, dropout_rate=self.dropout_rate, unroll=self.unroll,
        dtype=self.dtype, name='encoder')(x, seq_lengths, train=train)
    if self.pooling == 'last':
      pooled = last
    elif seq_lengths is None:
      pooled = sequence.mean(axis=1)
    else:
      # ``sequence`` is already zero at padded steps.
      lengths = jnp.clip(jnp.asarray(seq_lengths), 1, x.shape[1]).astype(sequence.dtype)
      pooled = sequence.sum(axis=1) / lengths[:, None]
    head_in = pooled
    if self.dropout_rate > 0:
      head_in = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(head_in)
    return logits, {'pre_logits': pooled, 'sequence': sequence}


class RowLSTMClassifier(SequenceClassifier):
  """Reads an image ``[B, H, W, C]`` row by row: ``H`` time steps of ``W * C`` features.

  On MNIST that is 28 steps of 28 features. Same contract as ``SequenceClassifier``:
  ``(logits [B, num_classes], {'pre_logits': [B, D], 'sequence': [B, H, D]})``, so an image
  classification trainer can train it unchanged.

  The defaults (2-layer bidirectional LSTM with 128 units, last-state pooling, D = 256,
  558k parameters) are the size usually reported to reach >= 99% on row-by-row MNIST with
  Adam (lr ~1e-3, batch 128, ~10 epochs); here 200 steps reached ~94% (full runs not yet
  measured). ``bidirectional=False`` (213k parameters) is ~2x cheaper per step.
  """

  features: int = 128
  num_layers: int = 2
  bidirectional: bool = True

  @nn.nowrap
  def to_sequence(self, x: Array) -> Array:
    if x.ndim != 4:
      raise ValueError(f'RowLSTMClassifier expects images [B, H, W, C], got shape {x.shape}')
    b, h, w, c = x.shape
    return x.reshape(b, h, w * c)


class SameConv2D(nn.Module):
  """Stride-1, SAME-padded 2D convolution with ``Conv``'s parameters and initializers.

  ``kernel [kh, kw, C, features]`` (LeCun normal), ``bias [features]`` (zeros); inputs
  ``[..., H, W, C]`` -> ``[..., H, W, features]``. SAME pads ``(k - 1) // 2`` before and the rest
  after, as XLA does.

  With ``as_matmul=True`` the convolution is computed as one matmul of the ``kh * kw`` shifted
  copies of the input (im2col) with the reshaped kernel: the same numbers. ``as_matmul=False``
  uses ``layers.conv_general_dilated`` (e.g. cuDNN on GPU), whose CPU-backend gradients stay
  fast inside a ``scan`` on XLA:CPU (``lax``'s own kernel gradient there is much slower,
  jax-ml/jax#12868). On CPU the matmul form measured faster per ``ConvLSTMForecaster`` train
  step (``benchmarks/RESULTS.md``), hence the default.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  as_matmul: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    if len(self.kernel_size) != 2:
      raise ValueError(f'kernel_size must be 2D (kh, kw), got {tuple(self.kernel_size)}')
    kh, kw = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (kh, kw, z.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    z, kernel, bias = nn.dtypes.promote_dtype(z, kernel, bias, dtype=self.dtype)
    batch_shape, (height, width, channels) = z.shape[:-3], z.shape[-3:]
    z = z.reshape(-1, height, width, channels)
    if self.as_matmul:
      pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in (kh, kw)]
      zp = jnp.pad(z, [(0, 0), *pads, (0, 0)])
      # lax slices, not zp[:, dy:dy + height, ...]: traced with a symbolic batch (jax.export)
      # NumPy-style indexing becomes a dynamic gather, which TFLite cannot convert.
      patches = jnp.concatenate([
          jax.lax.slice_in_dim(jax.lax.slice_in_dim(zp, dy, dy + height, axis=1),
                               dx, dx + width, axis=2)
          for dy in range(kh) for dx in range(kw)], axis=-1)
      y = patches @ kernel.reshape(kh * kw * channels, self.features)
    else:
      y = layers.conv_general_dilated(z, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return (y + bias).reshape(*batch_shape, height, width, self.features)


class ConvLSTMCell(nn.RNNCellBase):
  """Convolutional LSTM cell (Shi et al., 2015) for use with ``nn.RNN``.

  With ``z = concat([x, h], -1)`` and one SAME-padded convolution ``W * z + b`` giving
  ``4 * features`` channels split into ``(i, f, g, o)``::

    c' = sigmoid(f + forget_bias) * c + sigmoid(i) * tanh(g)
    h' = sigmoid(o) * tanh(c')

  Parameters: ``gates/kernel [kh, kw, C + features, 4 * features]``, ``gates/bias
  [4 * features]``.

  Attributes:
    features: channels of the state.
    kernel_size: 2D kernel size of the gate convolution.
    forget_bias: constant added to the forget-gate pre-activation (1.0 keeps memory early
      in training).
    conv_as_matmul: compute the gate convolution as an im2col matmul (see ``SameConv2D``;
      faster to train on CPU, ``benchmarks/RESULTS.md``); False uses
      ``layers.conv_general_dilated``.
    dtype: computation dtype; ``param_dtype`` the parameter dtype.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  forget_bias: float = 1.0
  conv_as_matmul: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], inputs: Array):
    """One step.

    Args:
      carry: ``(c, h)``, each ``[B, H, W, features]``.
      inputs: ``[B, H, W, C]``.

    Returns:
      ``((c', h'), h')``.
    """
    c, h = carry
    z = jnp.concatenate([inputs.astype(h.dtype), h], axis=-1)
    gates = SameConv2D(4 * self.features, tuple(self.kernel_size), self.conv_as_matmul,
                       dtype=self.dtype, param_dtype=self.param_dtype, name='gates')(z)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    new_c = nn.sigmoid(f + self.forget_bias) * c + nn.sigmoid(i) * jnp.tanh(g)
    new_h = nn.sigmoid(o) * jnp.tanh(new_c)
    return (new_c, new_h), new_h

  @nn.nowrap
  def initialize_carry(self, rng, input_shape: tuple[int, ...]) -> tuple[Array, Array]:
    """Zero state ``(c, h)`` of shape ``input_shape[:-1] + (features,)``."""
    del rng
    shape = tuple(input_shape[:-1]) + (self.features,)
    return jnp.zeros(shape, self.param_dtype), jnp.zeros(shape, self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return len(self.kernel_size) + 1


class ConvLSTMForecaster(nn.Module):
  """Encoder-forecaster for image sequences: ``[B, T_in, H, W, C]`` -> ``[B, T_out, H, W, C]``.

  1. Each input frame is downsampled by ``2 ** len(stem_features)`` with stride-2 3x3 convs
     (64x64 -> 16x16 with the defaults).
  2. A stack of ConvLSTM layers (``hidden_features``) encodes the ``T_in`` frames.
  3. A forecaster stack of ConvLSTM layers with its own parameters starts from the encoder's
     final states (layer ``i`` from encoder layer ``i``) and runs ``num_output_frames`` steps
     on zero inputs.
  4. The concatenated forecaster outputs of all layers are decoded per frame with stride-2
     learned upsamplings (sub-pixel convs, ``depth_to_space``) back to ``H x W`` and a 3x3
     conv to ``C`` channels.

  ``__call__(frames, *, train)`` returns ``(logits, {})``; ``sigmoid(logits)`` are the predicted
  pixel intensities in ``[0, 1]`` (train with sigmoid cross-entropy against targets in
  ``[0, 1]``). Inputs are floats, typically ``uint8 / 255``.

  Attributes:
    num_output_frames: ``T_out``.
    stem_features: channels of the stride-2 downsampling convs (and, reversed, of the
      upsampling stages).
    hidden_features: channels of each ConvLSTM layer (encoder and forecaster alike).
    kernel_size: ConvLSTM gate kernel size.
    conv_as_matmul: ConvLSTM gate convolutions as im2col matmuls (``SameConv2D``).
    unroll: scan unroll factor of the ConvLSTM layers (``True``: fully unrolled, no loop, as
      exported for TFLite and ONNX; speed only otherwise).
    dtype: computation dtype.
  """

  num_output_frames: int = 10
  stem_features: Sequence[int] = (16, 32)
  hidden_features: Sequence[int] = (32, 32)
  kernel_size: Sequence[int] = (3, 3)
  conv_as_matmul: bool = True
  unroll: int | bool = 1
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, frames: Array, *, train: bool) -> tuple[Array, dict[str, Array]]:
    del train  # No dropout or batch statistics.
    if frames.ndim != 5:
      raise ValueError(f'expected frames [B, T, H, W, C], got shape {frames.shape}')
    b, t_in, height, width, channels = frames.shape
    factor = 2 ** len(self.stem_features)
    if height % factor or width % factor:
      raise ValueError(f'frame size {height}x{width} must be divisible by {factor} '
                       f'(2 ** len(stem_features={tuple(self.stem_features)}))')
    if not self.hidden_features:
      raise ValueError('hidden_features must name at least one ConvLSTM layer')
    kernel = tuple(self.kernel_size)

    y = jnp.asarray(frames, self.dtype or jnp.float32).reshape(-1, height, width, channels)
    for i, feat in enumerate(self.stem_features):
      y = nn.relu(Conv(feat, (3, 3), strides=2, padding='SAME', dtype=self.dtype,
                       name=f'stem_{i}')(y))
    y = y.reshape(b, t_in, *y.shape[1:])  # [B, T_in, h, w, stem]

    states = []
    for i, feat in enumerate(self.hidden_features):
      cell = ConvLSTMCell(feat, kernel, conv_as_matmul=self.conv_as_matmul, dtype=self.dtype,
                          name=f'encoder_{i}')
      carry, y = nn.RNN(cell, unroll=self.unroll)(y, return_carry=True)
      states.append(carry)

    h, w = y.shape[2:4]
    y = jnp.zeros((b, self.num_output_frames, h, w, 1), y.dtype)
    outputs = []
    for i, feat in enumerate(self.hidden_features):
      cell = ConvLSTMCell(feat, kernel, conv_as_matmul=self.conv_as_matmul, dtype=self.dtype,
                          name=f'forecaster_{i}')
      y = nn.RNN(cell, unroll=self.unroll)(y, initial_carry=states[i])
      outputs.append(y)
    y = jnp.concatenate(outputs, axis=-1)  # [B, T_out, h, w, sum(hidden)]

    y = y.reshape(b * self.num_output_frames, h, w, y.shape[-1])
    for i, feat in enumerate(reversed(self.stem_features)):
      # Learned stride-2 upsampling in sub-pixel form: a 3x3 conv to 4 * feat channels, then
      # each pixel's channels become a 2x2 block. It can express any 4x4 stride-2 transposed
      # conv and is far cheaper to differentiate on XLA:CPU than nn.ConvTranspose.
      y = Conv(4 * feat, (3, 3), padding='SAME', dtype=self.dtype, name=f'up_{i}')(y)
      y = nn.relu(depth_to_space(y, 2))
    logits = Conv(channels, (3, 3), padding='SAME', dtype=self.dtype, name='to_frames')(y)
    logits = logits.reshape(b, self.num_output_frames, height, width, channels)
    return logits, {}
