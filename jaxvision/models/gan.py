"""DCGAN generators and discriminators (Radford et al. 2016), plain and class-conditional.

Images are NHWC float in ``[-1, 1]``; labels are integer class ids in ``[0, num_classes)``.

Spatial plan, shared by generators and discriminators: the image height is halved while it is
even and larger than 7, giving the starting size ``h0 <= 7`` and the number ``n >= 1`` of 2x
(de)convolution steps; the width must be divisible by ``2**n``. So 28x28 (MNIST) runs
7 -> 14 -> 28 (``n = 2``) and 32x32 (CIFAR) runs 4 -> 8 -> 16 -> 32 (``n = 3``); 64x64 runs
4 -> ... -> 64 (``n = 4``). Channel widths are ``base_features * 2**(n - 1 - i)`` for the
generator's ``i``-th upsampling input, mirrored by the discriminator.

Modules:

* :class:`Generator`: ``z [B, latent_dim] -> images [B, H, W, C]``.
* :class:`ConditionalGenerator`: ``(z [B, latent_dim], y [B]) -> images [B, H, W, C]``; a
  learned label embedding ``[B, embed_dim]`` is concatenated to ``z`` (cGAN, Mirza & Osindero
  2014) before the DCGAN generator.
* :class:`Discriminator`: ``x [B, H, W, C] -> (logits [B], {'features': [B, D]})``.
* :class:`ProjectionDiscriminator`: ``(x, y) -> (logits [B], {'features': [B, D], ...})`` with
  ``logit = psi(phi(x)) + <embed(y), phi(x)>`` (Miyato & Koyama 2018).

All modules take ``train`` keyword-only. With ``train=True`` BatchNorm uses batch statistics and
updates its running averages, and spectral norm updates its power-iteration vectors; both live
in the ``'batch_stats'`` collection, so apply with ``mutable=['batch_stats']`` when training.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.layers import Conv, ConvTranspose

Dtype = Any

# DCGAN initialisation: weights ~ N(0, 0.02).
DCGAN_INIT = nn.initializers.normal(stddev=0.02)
# Largest starting feature-map side; larger even sides are halved (28 -> 7, 32 -> 4).
MAX_START_SIZE = 7
LEAKY_RELU_SLOPE = 0.2
DISCRIMINATOR_NORMALIZATIONS = ("batch", "spectral", "none")


def spatial_plan(height: int, width: int) -> tuple[int, int, int]:
  """Returns ``(h0, w0, n)``: starting feature-map size and the number of 2x steps.

  ``height`` is halved while it is even and larger than ``MAX_START_SIZE`` (7); it must end
  at most 7 after ``n >= 1`` halvings, and ``width`` must be divisible by ``2**n``.
  28 -> ``(7, 7, 2)``, 32 -> ``(4, 4, 3)``, 64x48 -> ``(4, 3, 4)``.

  Raises:
    ValueError: the size cannot be reached by doubling (e.g. 7x7, 27x27 or 30x30).
  """
  if height < 1 or width < 1:
    raise ValueError(f"image height and width must be positive, got {height}x{width}")
  h0, n = height, 0
  while h0 % 2 == 0 and h0 > MAX_START_SIZE:
    h0 //= 2
    n += 1
  if n == 0 or h0 > MAX_START_SIZE or width % (2**n):
    raise ValueError(
        f"image size {height}x{width} is not supported: the height must be a starting size "
        f"<= {MAX_START_SIZE} times a power of two (e.g. 28 = 7*4, 32 = 4*8) and the width "
        f"divisible by the same power of two")
  return h0, width // 2**n, n


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
  if len(image_shape) != 3 or min(image_shape) < 1:
    raise ValueError(f"image_shape must be (height, width, channels), got {tuple(image_shape)}")
  return tuple(int(s) for s in image_shape)


def _check_batch_vector(name: str, array: jax.Array, width: int | None, batch: int | None):
  """Checks ``array`` is ``[B, width]`` (or ``[B]`` when ``width`` is None)."""
  expected = "[B]" if width is None else f"[B, {width}]"
  ndim = 1 if width is None else 2
  if array.ndim != ndim or (width is not None and array.shape[-1] != width):
    raise ValueError(f"{name} must have shape {expected}, got {array.shape}")
  if batch is not None and array.shape[0] != batch:
    raise ValueError(f"{name} has batch size {array.shape[0]}, expected {batch}")


def _check_labels(y: jax.Array, batch: int):
  _check_batch_vector("labels y", y, None, batch)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(f"labels y must be integer class ids, got dtype {y.dtype}")


def _batch_norm(module: nn.Module, train: bool, name: str) -> nn.BatchNorm:
  """BatchNorm with ``module``'s momentum and dtype; call inside ``module``'s compact method."""
  return nn.BatchNorm(use_running_average=not train, momentum=module.bn_momentum, epsilon=1e-5,
                      dtype=module.dtype, name=name)


class _GeneratorBody(nn.Module):
  """DCGAN upsampling stack: ``h [B, F] -> images [B, H, W, C]`` in ``[-1, 1]``.

  ``Dense -> reshape [B, h0, w0, base*2**(n-1)] -> BN -> ReLU``, then ``n - 1`` blocks of
  ``ConvTranspose(4x4, stride 2) -> BN -> ReLU`` halving the channels, and a final
  ``ConvTranspose(C, 4x4, stride 2) -> tanh``.
  """

  image_shape: Sequence[int]
  base_features: int = 64
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, *, train: bool) -> jax.Array:
    height, width, channels = _check_image_shape(self.image_shape)
    h0, w0, n = spatial_plan(height, width)
    features = self.base_features * 2**(n - 1)
    x = nn.Dense(h0 * w0 * features, use_bias=False, kernel_init=DCGAN_INIT,
                 dtype=self.dtype, name="project")(h)
    x = x.reshape(h.shape[0], h0, w0, features)  # [B, h0, w0, F0]
    x = nn.relu(_batch_norm(self, train, "project_bn")(x))
    for i in range(n - 1):
      features //= 2
      x = ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", use_bias=False,
                        kernel_init=DCGAN_INIT, dtype=self.dtype, name=f"deconv{i}")(x)
      x = nn.relu(_batch_norm(self, train, f"deconv{i}_bn")(x))  # [B, h0*2**(i+1), ..., F]
    x = ConvTranspose(channels, (4, 4), strides=(2, 2), padding="SAME",
                      kernel_init=DCGAN_INIT, dtype=self.dtype, name="to_image")(x)
    return jnp.tanh(x)  # [B, H, W, C]


class Generator(nn.Module):
  """DCGAN generator: ``z [B, latent_dim] -> images [B, H, W, C]`` in ``[-1, 1]`` (tanh).

  28x28: ``z -> Dense -> [7, 7, 2F] -> [14, 14, F] -> [28, 28, C]``;
  32x32: ``z -> Dense -> [4, 4, 4F] -> [8, 8, 2F] -> [16, 16, F] -> [32, 32, C]``
  (``F = base_features``; see :func:`spatial_plan`). Every layer but the last is followed by
  BatchNorm and ReLU; transposed convolutions are 4x4 with stride 2.

  Attributes:
    latent_dim: size of ``z``.
    image_shape: ``(H, W, C)`` of the generated images.
    base_features: channels of the last hidden feature map (doubling towards the input).
    bn_momentum: BatchNorm running-average momentum.
    dtype: computation dtype (parameters stay float32).
  """

  latent_dim: int
  image_shape: Sequence[int]
  base_features: int = 64
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    """Generates images.

    Args:
      z: latent vectors ``[B, latent_dim]``.
      train: use batch statistics and update BatchNorm's running averages.

    Returns:
      Images ``[B, H, W, C]`` in ``[-1, 1]``.
    """
    z = jnp.asarray(z)
    _check_batch_vector("z", z, self.latent_dim, None)
    return _GeneratorBody(self.image_shape, self.base_features, self.bn_momentum, self.dtype,
                          name="body")(z, train=train)


class ConditionalGenerator(nn.Module):
  """Class-conditional DCGAN generator: ``(z [B, latent_dim], y [B]) -> [B, H, W, C]``.

  The label is mapped by a learned embedding to ``[B, embed_dim]`` and concatenated to ``z``
  (cGAN conditioning); the ``[B, latent_dim + embed_dim]`` vector then goes through the same
  upsampling stack as :class:`Generator`.

  Attributes:
    num_classes: number of classes; labels are ints in ``[0, num_classes)``.
    latent_dim: size of ``z``.
    image_shape: ``(H, W, C)`` of the generated images.
    embed_dim: size of the label embedding.
    base_features, bn_momentum, dtype: as in :class:`Generator`.
  """

  num_classes: int
  latent_dim: int
  image_shape: Sequence[int]
  embed_dim: int = 50
  base_features: int = 64
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, y: jax.Array, *, train: bool) -> jax.Array:
    """Generates images of the requested classes.

    Args:
      z: latent vectors ``[B, latent_dim]``.
      y: requested class ids ``[B]`` (int), each in ``[0, num_classes)``.
      train: use batch statistics and update BatchNorm's running averages.

    Returns:
      Images ``[B, H, W, C]`` in ``[-1, 1]``.
    """
    z, y = jnp.asarray(z), jnp.asarray(y)
    _check_batch_vector("z", z, self.latent_dim, None)
    _check_labels(y, z.shape[0])
    embedding = nn.Embed(self.num_classes, self.embed_dim, dtype=self.dtype,
                         name="label_embed")(y)  # [B, embed_dim]
    h = jnp.concatenate([z.astype(embedding.dtype), embedding], axis=-1)
    return _GeneratorBody(self.image_shape, self.base_features, self.bn_momentum, self.dtype,
                          name="body")(h, train=train)


def _normalized(layer: nn.Module, normalization: str, n_steps: int, x: jax.Array,
                train: bool) -> jax.Array:
  """Applies ``layer`` to ``x``, spectrally normalised when ``normalization == 'spectral'``.

  Must be called inside a compact method (the wrapper binds to the calling module).
  """
  if normalization == "spectral":
    return nn.SpectralNorm(layer, n_steps=n_steps, name=f"{layer.name}_sn")(
        x, update_stats=train)
  return layer(x)


def _check_normalization(normalization: str):
  if normalization not in DISCRIMINATOR_NORMALIZATIONS:
    raise ValueError(f"unknown discriminator normalization {normalization!r}; "
                     f"expected one of {DISCRIMINATOR_NORMALIZATIONS}")


class _DiscriminatorTrunk(nn.Module):
  """DCGAN feature extractor phi: ``x [B, H, W, C] -> features [B, D]``.

  ``n`` blocks of ``Conv(4x4, stride 2) -> [norm] -> LeakyReLU(0.2)`` with
  ``base_features * 2**i`` channels (no BatchNorm in block 0), flattened:
  ``D = h0 * w0 * base_features * 2**(n-1)`` (6272 for 28x28, 4096 for 32x32 at F=64).
  With ``stride1_convs=True`` each block starts with a ``Conv(3x3, stride 1) -> [norm] ->
  LeakyReLU`` of the block's input width, as in the SN-GAN "standard CNN" critic (Miyato
  et al. 2018, table 3): twice the depth, same output size.
  """

  base_features: int = 64
  normalization: str = "batch"
  spectral_norm_steps: int = 1
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32
  stride1_convs: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    _check_normalization(self.normalization)
    if x.ndim != 4:
      raise ValueError(f"images must have shape [B, H, W, C], got {x.shape}")
    _, _, n = spatial_plan(x.shape[1], x.shape[2])
    for i in range(n):
      if self.stride1_convs:
        width = self.base_features * 2**max(i - 1, 0)
        conv = Conv(width, (3, 3), padding="SAME",
                    use_bias=self.normalization != "batch" or i == 0,
                    kernel_init=DCGAN_INIT, dtype=self.dtype, name=f"conv{i}_3x3")
        x = _normalized(conv, self.normalization, self.spectral_norm_steps, x, train)
        if self.normalization == "batch" and i > 0:
          x = _batch_norm(self, train, f"conv{i}_3x3_bn")(x)
        x = nn.leaky_relu(x, LEAKY_RELU_SLOPE)  # [B, H / 2**i, W / 2**i, width]
      conv = Conv(self.base_features * 2**i, (4, 4), strides=(2, 2), padding="SAME",
                  use_bias=self.normalization != "batch" or i == 0,
                  kernel_init=DCGAN_INIT, dtype=self.dtype, name=f"conv{i}")
      x = _normalized(conv, self.normalization, self.spectral_norm_steps, x, train)
      if self.normalization == "batch" and i > 0:
        x = _batch_norm(self, train, f"conv{i}_bn")(x)
      x = nn.leaky_relu(x, LEAKY_RELU_SLOPE)  # [B, H / 2**(i+1), W / 2**(i+1), F * 2**i]
    return x.reshape(x.shape[0], -1)  # [B, D]


class Discriminator(nn.Module):
  """DCGAN discriminator: ``x [B, H, W, C] -> (logits [B], {'features': [B, D]})``.

  Strided 4x4 convolutions with LeakyReLU(0.2) halve the image ``n`` times (28 -> 14 -> 7,
  32 -> 16 -> 8 -> 4; see :func:`spatial_plan`), doubling channels from ``base_features``;
  the flattened last feature map (``D = h0 * w0 * base_features * 2**(n-1)``) goes through a
  linear layer to one logit per image.

  Attributes:
    base_features: channels of the first convolution.
    normalization: ``'batch'`` (DCGAN: BatchNorm after every convolution but the first),
      ``'spectral'`` (spectral norm on every convolution and the output layer, Miyato et al.
      2018) or ``'none'``.
    spectral_norm_steps: power iterations per call for spectral norm.
    bn_momentum: BatchNorm running-average momentum.
    dtype: computation dtype (parameters stay float32; logits are returned as float32).
    stride1_convs: add a 3x3 stride-1 convolution before each strided one (SN-GAN's deeper
      critic; see ``_DiscriminatorTrunk``).
  """

  base_features: int = 64
  normalization: str = "batch"
  spectral_norm_steps: int = 1
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32
  stride1_convs: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scores images.

    Args:
      x: images ``[B, H, W, C]`` in ``[-1, 1]``.
      train: use batch statistics / update running statistics (BatchNorm, spectral norm).

    Returns:
      ``(logits [B] float32, {'features': [B, D]})``; features are the flattened last
      convolutional activations.
    """
    features = _DiscriminatorTrunk(self.base_features, self.normalization,
                                   self.spectral_norm_steps, self.bn_momentum, self.dtype,
                                   self.stride1_convs, name="trunk")(jnp.asarray(x), train=train)
    head = nn.Dense(1, kernel_init=DCGAN_INIT, dtype=self.dtype, name="logit")
    logits = _normalized(head, self.normalization, self.spectral_norm_steps, features, train)
    return logits[:, 0].astype(jnp.float32), {"features": features}


class ProjectionDiscriminator(nn.Module):
  """Projection discriminator (Miyato & Koyama 2018) on the DCGAN trunk.

  ``logit(x, y) = psi(phi(x)) + <embed(y), phi(x)>`` where ``phi`` is the
  :class:`Discriminator` trunk (``[B, D]`` features), ``psi`` a linear layer to one output and
  ``embed`` a learned ``[num_classes, D]`` class embedding.

  Attributes:
    num_classes: number of classes; labels are ints in ``[0, num_classes)``.
    base_features, spectral_norm_steps, bn_momentum, dtype, stride1_convs: as in
      :class:`Discriminator`.
    normalization: as in :class:`Discriminator`, default ``'spectral'`` as in the paper
      (spectral norm then also covers ``psi`` and the class embedding).
  """

  num_classes: int
  base_features: int = 64
  normalization: str = "spectral"
  spectral_norm_steps: int = 1
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32
  stride1_convs: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array, *,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scores images as members of the given classes.

    Args:
      x: images ``[B, H, W, C]`` in ``[-1, 1]``.
      y: class ids ``[B]`` (int), each in ``[0, num_classes)``.
      train: use batch statistics / update running statistics (BatchNorm, spectral norm).

    Returns:
      ``(logits [B] float32, {'features': phi(x) [B, D], 'unconditional_logits': psi [B],
      'class_projection': <embed(y), phi(x)> [B]})``.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 4:
      raise ValueError(f"images must have shape [B, H, W, C], got {x.shape}")
    _check_labels(y, x.shape[0])
    features = _DiscriminatorTrunk(self.base_features, self.normalization,
                                   self.spectral_norm_steps, self.bn_momentum, self.dtype,
                                   self.stride1_convs, name="trunk")(x, train=train)  # [B, D]
    head = nn.Dense(1, kernel_init=DCGAN_INIT, dtype=self.dtype, name="psi")
    psi = _normalized(head, self.normalization, self.spectral_norm_steps, features, train)[:, 0]
    embed = nn.Embed(self.num_classes, features.shape[-1], dtype=self.dtype, name="class_embed")
    class_embedding = _normalized(embed, self.normalization, self.spectral_norm_steps, y, train)
    projection = jnp.sum(class_embedding * features, axis=-1)  # [B]
    logits = (psi + projection).astype(jnp.float32)
    return logits, {"features": features, "unconditional_logits": psi,
                    "class_projection": projection}
