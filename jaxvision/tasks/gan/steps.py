"""GAN training state and step: both networks, both optimizers, one jitted D-then-G update.

:class:`GANState` holds everything a GAN run carries from step to step as one pytree (so Orbax
saves and restores it whole): the generator's and discriminator's params and ``batch_stats``
(BatchNorm running averages, spectral-norm power-iteration vectors), both Optax states, the
step, a base rng and, optionally, an exponential moving average (EMA) of the generator's
params. :func:`create_gan_state` builds it directly replicated on a mesh.

:func:`make_train_step` returns ``step(state, batch) -> (state, metrics)``; compile it with
``jaxvision.training.jit.jit_train_step(step, mesh, onednn=False)`` (batch sharded over
``'data'``, state replicated and donated; ``onednn=False``: XLA's convolutions, measured
faster for DCGAN). One step, with randomness from ``fold_in(state.rng, state.step)``:

1. The generator maps ``z ~ N(0, I)`` (and, if conditional, labels) to a fake batch in
   training mode (its BatchNorm uses batch statistics and updates its running averages).
2. The discriminator is updated on the real batch and the fake batch (two separate forward
   passes, so BatchNorm never mixes real and fake statistics).
3. The generator is updated through the *updated* discriminator on the same fake batch: the
   gradient of the generator loss with respect to the fake images is pulled back through the
   generator's forward pass of step 1 (``jax.vjp``), as in the DCGAN reference code.
4. The EMA (if enabled) follows the new generator params.

Conditional models (``ConditionalGenerator`` + ``ProjectionDiscriminator``): the discriminator
sees real images with the batch's labels; fake images are generated for uniformly random labels
(``fake_labels='random'``) or for the real batch's labels (``'batch'``), and are judged
against the labels they were generated for.

Self-conditioned models (``jaxvision.tasks.gan.clustering``): the state carries
``pseudo_labels``, one cluster id per training example, and the batch's ``'label'`` holds the
real images' cluster ids; ``fake_labels='random'`` then draws the generated images' ids from
the empirical cluster distribution (a uniformly random training example's id) instead of
uniformly over the ids.

Batch format: ``{'image': float [B, H, W, C] in [-1, 1], 'label': int32 [B]}``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxvision import losses
from jaxvision.training.jit import jit_step
from jaxvision.training.sharding import batch_sharding, replicated

FAKE_LABEL_MODES = ("random", "batch")
# The initializer runs once: compiling it without XLA's backend optimizations cuts its compile
# time about 3x on CPU (dozens of unrolled threefry blocks) at no cost that matters.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# EMA warm-up: the decay used at step t is min(ema_decay, (1 + t) / (EMA_WARMUP + t)), so the
# average forgets the random initialisation quickly (as tf.train.ExponentialMovingAverage
# with num_updates).
EMA_WARMUP = 10.0


class GANState(struct.PyTreeNode):
  """Everything a GAN run carries between steps, as one pytree.

  Attributes:
    step: int32 scalar, number of completed steps.
    g_params, g_batch_stats: generator variables (``batch_stats`` is ``{}`` when it has none).
    d_params, d_batch_stats: discriminator variables.
    g_opt_state, d_opt_state: Optax states of ``g_tx`` and ``d_tx``.
    rng: raw ``uint32[2]`` base key; step ``t`` draws from ``fold_in(rng, t)``, so a resumed run
      draws what an uninterrupted one draws.
    g_ema_params: EMA of ``g_params`` (same structure), or ``None`` when EMA is disabled.
    pseudo_labels: int32 ``[N]`` cluster id of each training example (self-conditioned runs),
      or ``None``; the label pool that random generator labels are drawn from.
    g_tx, d_tx: the optimizers (static, not saved).
  """
  step: jax.Array
  g_params: Any
  g_batch_stats: Any
  d_params: Any
  d_batch_stats: Any
  g_opt_state: Any
  d_opt_state: Any
  rng: jax.Array
  g_ema_params: Any = None
  pseudo_labels: Any = None
  g_tx: optax.GradientTransformation = struct.field(pytree_node=False, default=None)
  d_tx: optax.GradientTransformation = struct.field(pytree_node=False, default=None)

  @property
  def has_ema(self) -> bool:
    return self.g_ema_params is not None


def num_classes_of(generator: nn.Module, discriminator: nn.Module) -> int | None:
  """The number of classes of a conditional pair, ``None`` for an unconditional one.

  Raises:
    ValueError: one network is conditional and the other not, or their class counts differ.
  """
  g_classes = getattr(generator, "num_classes", None)
  d_classes = getattr(discriminator, "num_classes", None)
  if g_classes != d_classes:
    raise ValueError(
        f"generator {type(generator).__name__} (num_classes={g_classes}) and discriminator "
        f"{type(discriminator).__name__} (num_classes={d_classes}) must both be unconditional "
        f"or both conditional on the same number of classes")
  return g_classes


def _label_args(labels, num_classes):
  return () if num_classes is None else (labels,)


def _init_variables(generator: nn.Module, discriminator: nn.Module, image_shape: tuple,
                    rng: jax.Array):
  """``(generator variables, discriminator variables, base key)`` from ``rng``.

  Jitted with the modules static: modules compare by value, so a later run of the same
  architecture in the same process reuses the compiled initializer.
  """
  num_classes = num_classes_of(generator, discriminator)
  g_rng, d_rng, state_rng = jax.random.split(rng, 3)
  labels = _label_args(jnp.zeros((1,), jnp.int32), num_classes)
  g_vars = generator.init(g_rng, jnp.zeros((1, generator.latent_dim), jnp.float32), *labels,
                          train=False)
  d_vars = discriminator.init(d_rng, jnp.zeros((1, *image_shape), jnp.float32), *labels,
                              train=False)
  return g_vars, d_vars, state_rng


def create_gan_state(generator: nn.Module, discriminator: nn.Module,
                     g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation, *,
                     image_shape, rng: jax.Array, ema: bool = False,
                     num_pseudo_labels: int = 0, mesh=None,
                     abstract: bool = False) -> GANState:
  """Initializes a :class:`GANState` (replicated on ``mesh`` when given).

  Args:
    generator: ``Generator`` or ``ConditionalGenerator`` (has ``latent_dim``).
    discriminator: ``Discriminator`` or ``ProjectionDiscriminator`` (conditional iff the
      generator is).
    g_tx, d_tx: Optax optimizers of the generator and the discriminator.
    image_shape: ``(H, W, C)`` of the images.
    rng: ``jax.random.PRNGKey``; split into the two init keys and the state's base key.
    ema: keep an EMA of the generator params (initialised to a copy of the params).
    num_pseudo_labels: ``N > 0`` gives the state ``pseudo_labels``, int32 zeros ``[N]`` (a
      self-conditioned run fills them in from its first clustering).
    mesh: if given, the state is created directly replicated on it.
    abstract: return the state's ``jax.ShapeDtypeStruct`` tree (with the replicated sharding
      when ``mesh`` is given) without computing anything: a restore target.
  """
  out_sharding = None if mesh is None else replicated(mesh)
  image_shape = tuple(int(d) for d in image_shape)
  init_variables = jax.jit(_init_variables, static_argnums=(0, 1, 2), out_shardings=out_sharding,
                           compiler_options=INIT_COMPILER_OPTIONS)

  def assemble(g_vars, d_vars, state_rng):
    g_params, d_params = g_vars["params"], d_vars["params"]
    return GANState(
        step=jnp.zeros((), jnp.int32), g_params=g_params,
        g_batch_stats=g_vars.get("batch_stats", {}), d_params=d_params,
        d_batch_stats=d_vars.get("batch_stats", {}), g_opt_state=g_tx.init(g_params),
        d_opt_state=d_tx.init(d_params), rng=state_rng,
        g_ema_params=jax.tree.map(jnp.copy, g_params) if ema else None,
        pseudo_labels=(jnp.zeros((num_pseudo_labels,), jnp.int32) if num_pseudo_labels
                       else None), g_tx=g_tx, d_tx=d_tx)

  if abstract:
    shapes = jax.eval_shape(
        lambda r: assemble(*_init_variables(generator, discriminator, image_shape, r)), rng)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=out_sharding), shapes)
  variables = init_variables(generator, discriminator, image_shape, rng)
  return jax.jit(assemble, out_shardings=out_sharding)(*variables)


def _sample_labels(rng, batch: int, num_classes: int | None, pool=None):
  """``[batch]`` labels: uniform over the classes, or drawn from ``pool`` (int ``[N]``)."""
  if num_classes is None:
    return None
  if pool is not None:
    return pool[jax.random.randint(rng, (batch,), 0, pool.shape[0])]
  return jax.random.randint(rng, (batch,), 0, num_classes, dtype=jnp.int32)


def make_train_step(generator: nn.Module, discriminator: nn.Module, *,
                  loss: str = "non_saturating", ema_decay: float = 0.0,
                  fake_labels: str = "random") -> Callable[[GANState, dict], tuple[GANState,
                                                                                    dict]]:
  """Returns ``step(state, batch) -> (state, metrics)`` (see the module docstring).

  Args:
    generator, discriminator: the modules the state was created for.
    loss: ``'non_saturating'`` or ``'hinge'`` (``jaxvision.losses.get_gan_losses``).
    ema_decay: decay of the generator EMA, in ``[0, 1)``; used when the state has an EMA.
    fake_labels: conditional models only: ``'random'`` (uniform, or drawn from the state's
      ``pseudo_labels`` when it has them) or ``'batch'`` (the real batch's labels) for the
      generated images.

  Metrics (float32 scalars): ``d_loss``, ``g_loss``, ``real_logit`` and ``fake_logit`` (mean
  discriminator logits in the D update), ``d_grad_norm``, ``g_grad_norm``.
  """
  d_loss_fn, g_loss_fn = losses.get_gan_losses(loss)
  num_classes = num_classes_of(generator, discriminator)
  if fake_labels not in FAKE_LABEL_MODES:
    raise ValueError(f"fake_labels must be one of {FAKE_LABEL_MODES}; found {fake_labels!r}")
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError(f"ema_decay must be in [0, 1); found {ema_decay}")

  def d_apply(params, stats, images, labels):
    (logits, _), updates = discriminator.apply(
        {"params": params, **_stats_collection(stats)}, images,
        *_label_args(labels, num_classes), train=True, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", stats)

  def step(state: GANState, batch: dict) -> tuple[GANState, dict]:
    real = batch["image"]
    size = real.shape[0]
    real_labels = batch["label"] if num_classes is not None else None
    z_rng, label_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    z = jax.random.normal(z_rng, (size, generator.latent_dim), jnp.float32)
    labels = (real_labels if fake_labels == "batch" and num_classes is not None
              else _sample_labels(label_rng, size, num_classes, state.pseudo_labels))

    # 1. Generator forward (train mode), kept for the pull-back of step 3.
    def g_forward(g_params):
      images, updates = generator.apply(
          {"params": g_params, **_stats_collection(state.g_batch_stats)}, z,
          *_label_args(labels, num_classes), train=True, mutable=["batch_stats"])
      return images, updates.get("batch_stats", state.g_batch_stats)

    fake, g_pullback, g_batch_stats = jax.vjp(g_forward, state.g_params, has_aux=True)

    # 2. Discriminator update on real and (constant) fake images.
    def d_objective(d_params):
      real_logits, stats = d_apply(d_params, state.d_batch_stats, real, real_labels)
      fake_logits, stats = d_apply(d_params, stats, fake, labels)
      return d_loss_fn(real_logits, fake_logits), (stats, real_logits, fake_logits)

    (d_loss, (d_batch_stats, real_logits, fake_logits)), d_grads = jax.value_and_grad(
        d_objective, has_aux=True)(state.d_params)
    d_updates, d_opt_state = state.d_tx.update(d_grads, state.d_opt_state, state.d_params)
    d_params = optax.apply_updates(state.d_params, d_updates)

    # 3. Generator update through the updated discriminator (its statistics from this pass
    #    are discarded: the D update above owns them).
    def g_objective(images):
      logits, _ = d_apply(d_params, d_batch_stats, images, labels)
      return g_loss_fn(logits)

    g_loss, fake_grads = jax.value_and_grad(g_objective)(fake)
    (g_grads,) = g_pullback(fake_grads)
    g_updates, g_opt_state = state.g_tx.update(g_grads, state.g_opt_state, state.g_params)
    g_params = optax.apply_updates(state.g_params, g_updates)

    # 4. EMA of the generator.
    g_ema_params = state.g_ema_params
    if g_ema_params is not None:
      t = state.step.astype(jnp.float32)
      decay = jnp.minimum(ema_decay, (1.0 + t) / (EMA_WARMUP + t))
      g_ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, g_ema_params,
                                  g_params)

    new_state = state.replace(
        step=state.step + 1, g_params=g_params, g_batch_stats=g_batch_stats, d_params=d_params,
        d_batch_stats=d_batch_stats, g_opt_state=g_opt_state, d_opt_state=d_opt_state,
        g_ema_params=g_ema_params)
    metrics = {
        "d_loss": d_loss, "g_loss": g_loss,
        "real_logit": jnp.mean(real_logits), "fake_logit": jnp.mean(fake_logits),
        "d_grad_norm": optax.tree.norm(d_grads), "g_grad_norm": optax.tree.norm(g_grads),
    }
    return new_state, metrics

  # Callers jit it with jit_train_step(..., onednn=False): DCGAN's step was measured faster
  # with XLA's convolutions than with oneDNN's (benchmarks/RESULTS.md).
  return step


def _stats_collection(stats) -> dict:
  return {"batch_stats": stats} if stats else {}


def standing_batch_stats(generator: nn.Module, params, batch_stats, rng: jax.Array, *,
                         num_samples: int = 1024, label_pool=None):
  """BatchNorm statistics of ``params`` measured on one batch of ``num_samples`` latents.

  The generator's running averages track the *trained* params; for other params (the EMA)
  the statistics are re-measured: the generator runs once in training mode with momentum 0,
  so each running average becomes the batch statistic of ``num_samples`` samples (random
  labels for a conditional generator: uniform, or drawn from ``label_pool`` int ``[N]``, the
  state's ``pseudo_labels`` of a self-conditioned run).

  Returns:
    The new ``batch_stats`` (the input, unchanged, if the generator has none).
  """
  if not batch_stats:
    return batch_stats
  z_rng, label_rng = jax.random.split(rng)
  z = jax.random.normal(z_rng, (num_samples, generator.latent_dim), jnp.float32)
  num_classes = getattr(generator, "num_classes", None)
  labels = _sample_labels(label_rng, num_samples, num_classes, label_pool)
  _, updates = generator.clone(bn_momentum=0.0).apply(
      {"params": params, "batch_stats": batch_stats}, z, *_label_args(labels, num_classes),
      train=True, mutable=["batch_stats"])
  return updates["batch_stats"]


def generator_variables(generator: nn.Module, state: GANState, *, use_ema: bool = True,
                        rng: jax.Array | None = None, num_samples: int = 1024) -> dict:
  """Variables for sampling (``generator.apply(variables, z[, y], train=False)``).

  With ``use_ema`` and an EMA in ``state``: the EMA params with
  :func:`standing_batch_stats` (measured with ``rng``, default ``PRNGKey(0)``, and labels
  from the state's ``pseudo_labels`` when it has them); otherwise the trained params with
  their running averages.
  """
  if not (use_ema and state.has_ema):
    return {"params": state.g_params, **_stats_collection(state.g_batch_stats)}
  rng = jax.random.PRNGKey(0) if rng is None else rng
  stats = jax.jit(standing_batch_stats, static_argnums=0, static_argnames="num_samples")(
      generator, state.g_ema_params, state.g_batch_stats, rng, num_samples=num_samples,
      label_pool=state.pseudo_labels)
  return {"params": state.g_ema_params, **_stats_collection(stats)}


def make_sample_fn(generator: nn.Module, mesh=None) -> Callable[..., jax.Array]:
  """Jitted ``sample(variables, z[, labels]) -> images [B, H, W, C]`` in inference mode.

  With ``mesh``: variables replicated, ``z`` and labels sharded over ``'data'`` (``B`` must be
  divisible by the mesh size), images returned replicated (readable on every host).
  """
  num_classes = getattr(generator, "num_classes", None)

  def sample(variables, z, *labels):
    return generator.apply(variables, z, *labels, train=False)

  # As the GAN step (make_train_step): on CPU, DCGAN's transposed convolutions run their
  # forward pass faster on XLA's convolutions than on oneDNN's.
  if mesh is None:
    return jit_step(sample, None, onednn=False)
  inputs = (replicated(mesh),) + (batch_sharding(mesh),) * (1 if num_classes is None else 2)
  return jit_step(sample, mesh, in_shardings=inputs, out_shardings=replicated(mesh),
                  onednn=False)


def slerp(z0, z1, t) -> np.ndarray:
  """Spherical interpolation between latents (the usual path for Gaussian latents), on host.

  Args:
    z0, z1: ``[B, D]`` end points.
    t: ``[T]`` fractions in ``[0, 1]``.

  Returns:
    float32 ``[B, T, D]``: ``sin((1-t) w) / sin(w) z0 + sin(t w) / sin(w) z1`` with ``w`` the
    angle between ``z0`` and ``z1`` (linear interpolation where ``sin(w)`` is ~0).
  """
  z0, z1, t = (np.asarray(a, np.float64) for a in (z0, z1, t))
  unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  cos = np.clip(np.sum(unit(z0) * unit(z1), axis=-1), -1.0, 1.0)[:, None, None]  # [B, 1, 1]
  omega = np.arccos(cos)
  sin = np.sin(omega)
  t = t[None, :, None]  # [1, T, 1]
  safe = sin > 1e-6
  sin = np.where(safe, sin, 1.0)
  w0 = np.where(safe, np.sin((1.0 - t) * omega) / sin, 1.0 - t)
  w1 = np.where(safe, np.sin(t * omega) / sin, t)
  return (w0 * z0[:, None, :] + w1 * z1[:, None, :]).astype(np.float32)
