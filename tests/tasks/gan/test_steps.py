"""GANState and the compiled D-then-G step on 1 and 8 CPU devices (tiny 8x8 models)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision import losses
from jaxvision.models import gan
from jaxvision.tasks.gan import steps as gan_lib
from jaxvision.training import jit, sharding

SHAPE = (16, 16, 1)
LATENT = 16
F = 8
BATCH = 16
NUM_CLASSES = 10


def _batches(n, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.uniform(-1, 1, (BATCH, *SHAPE)).astype(np.float32),
           "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)} for _ in range(n)]


def _models(conditional):
  if conditional:
    return (gan.ConditionalGenerator(NUM_CLASSES, LATENT, SHAPE, embed_dim=4, base_features=F),
            gan.ProjectionDiscriminator(NUM_CLASSES, base_features=F, normalization="spectral"))
  return (gan.Generator(LATENT, SHAPE, base_features=F),
          gan.Discriminator(base_features=F, normalization="batch"))


def _run(num_devices, batches, *, conditional=False, ema_decay=0.999, tx=None, **step_kwargs):
  mesh = sharding.make_mesh(num_devices)
  generator, discriminator = _models(conditional)
  tx = tx or optax.adam(2e-4, b1=0.5)
  state = gan_lib.create_gan_state(generator, discriminator, tx, tx, image_shape=SHAPE,
                                   rng=jax.random.PRNGKey(0), ema=ema_decay > 0, mesh=mesh)
  init = jax.device_get(state)
  step = jit.jit_train_step(
      gan_lib.make_train_step(generator, discriminator, ema_decay=ema_decay, **step_kwargs), mesh,
      onednn=False)
  states, metrics = [], []
  for b in batches:
    state, m = step(state, sharding.shard_batch(b, mesh))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return init, states, metrics


def _changed(a, b):
  return any(not np.allclose(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                   jax.tree_util.tree_leaves(b)))


def _finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(tree))


def _assert_trees_close(got, want, **tolerances):
  got, want = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, **tolerances)


def _reference_step(state, batch, lr, ema_decay):
  """One SGD step with gradients taken directly through G and D (no vjp pull-back).

  Randomness as documented: ``z_rng, _ = split(fold_in(rng, step))``, ``z ~ N(0, I)``. The
  discriminator sees the real batch, then the fake one (statistics chained); the generator is
  trained through the updated discriminator on the same fake batch; the EMA decay at step 0
  is ``min(decay, 1 / 10)``.
  """
  generator, discriminator = _models(False)
  d_loss_fn, g_loss_fn = losses.get_gan_losses("non_saturating")
  z_rng, _ = jax.random.split(jax.random.fold_in(state.rng, 0))
  z = jax.random.normal(z_rng, (BATCH, LATENT))
  g_train = functools.partial(generator.apply, train=True, mutable=["batch_stats"])
  d_train = functools.partial(discriminator.apply, train=True, mutable=["batch_stats"])

  def fake_images(g_params):
    images, updates = g_train({"params": g_params, "batch_stats": state.g_batch_stats}, z)
    return images, updates["batch_stats"]

  def d_objective(d_params):
    (real_logits, _), upd = d_train({"params": d_params, "batch_stats": state.d_batch_stats},
                                    batch["image"])
    fake, _ = fake_images(state.g_params)
    (fake_logits, _), upd = d_train({"params": d_params, **upd}, fake)
    return d_loss_fn(real_logits, fake_logits), upd["batch_stats"]

  (d_loss, d_stats), d_grads = jax.value_and_grad(d_objective, has_aux=True)(state.d_params)
  d_params = jax.tree.map(lambda p, g: p - lr * g, state.d_params, d_grads)

  def g_objective(g_params):
    fake, _ = fake_images(g_params)
    (logits, _), _ = d_train({"params": d_params, "batch_stats": d_stats}, fake)
    return g_loss_fn(logits)

  g_loss, g_grads = jax.value_and_grad(g_objective)(state.g_params)
  g_params = jax.tree.map(lambda p, g: p - lr * g, state.g_params, g_grads)
  decay = min(ema_decay, 0.1)
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.g_ema_params, g_params)
  _, g_stats = fake_images(state.g_params)
  return {"d_loss": d_loss, "g_loss": g_loss, "d_params": d_params, "g_params": g_params,
          "d_batch_stats": d_stats, "g_batch_stats": g_stats, "g_ema_params": ema}


def test_step_on_one_and_eight_devices_matches_plain_autodiff():
  assert jax.device_count() == 8, "conftest should give JAX 8 CPU devices"
  lr, ema_decay = 0.1, 0.999
  batches = _batches(2)
  init, (first, s1), m1 = _run(1, batches, tx=optax.sgd(lr), ema_decay=ema_decay)
  _, (_, s8), m8 = _run(8, batches, tx=optax.sgd(lr), ema_decay=ema_decay)
  assert int(s1.step) == int(s8.step) == 2
  for key in ("d_loss", "g_loss", "real_logit", "fake_logit", "d_grad_norm", "g_grad_norm"):
    np.testing.assert_allclose([m[key] for m in m1], [m[key] for m in m8], atol=1e-5, rtol=0)
  _assert_trees_close(s1, s8, atol=1e-5, rtol=0)
  # Both networks (params and BatchNorm statistics) and the EMA moved; all finite.
  for field in ("g_params", "g_batch_stats", "d_params", "d_batch_stats", "g_ema_params"):
    assert _changed(getattr(init, field), getattr(s1, field)), field
  assert _finite(s1) and all(_finite(m) for m in m1)
  # Non-saturating loss at near-zero initial logits: d_loss ~ 2 log 2.
  np.testing.assert_allclose(m1[0]["d_loss"], 2 * np.log(2), atol=0.05)

  # The first step against the reference.
  want = jax.jit(_reference_step, static_argnums=(2, 3))(init, batches[0], lr, ema_decay)
  np.testing.assert_allclose(m1[0]["d_loss"], want["d_loss"], rtol=1e-5)
  np.testing.assert_allclose(m1[0]["g_loss"], want["g_loss"], rtol=1e-5)
  for field in ("d_params", "g_params", "d_batch_stats", "g_batch_stats", "g_ema_params"):
    _assert_trees_close(getattr(first, field), want[field], rtol=1e-4, atol=1e-6)


def test_conditional_step_changes_both_networks_and_stays_finite():
  init, (_, state), metrics = _run(1, _batches(2, seed=1), conditional=True, ema_decay=0.0,
                                   loss="hinge", fake_labels="batch")
  assert state.g_ema_params is None and not state.has_ema
  for field in ("g_params", "g_batch_stats", "d_params", "d_batch_stats", "g_opt_state",
                "d_opt_state"):
    assert _changed(getattr(init, field), getattr(state, field)), field
  # The class embeddings of both networks learn.
  assert _changed(init.g_params["label_embed"], state.g_params["label_embed"])
  assert _changed(init.d_params["class_embed"], state.d_params["class_embed"])
  assert _finite(state) and all(_finite(m) for m in metrics)


def test_bad_configurations_are_clear_errors():
  g, _ = _models(True)
  _, d = _models(False)
  with pytest.raises(ValueError, match="both be unconditional or both conditional"):
    gan_lib.make_train_step(g, d)
  g, d = _models(False)
  with pytest.raises(ValueError, match="fake_labels must be one of"):
    gan_lib.make_train_step(g, d, fake_labels="shuffled")
  with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
    gan_lib.make_train_step(g, d, ema_decay=1.0)
  with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
    gan_lib.make_train_step(g, d, loss="wgan")


def test_slerp_against_numpy():
  rng = np.random.default_rng(0)
  z0, z1 = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
  t = np.linspace(0, 1, 4)
  got = gan_lib.slerp(z0, z1, t)
  for b in range(3):
    omega = np.arccos(np.dot(z0[b], z1[b]) / np.linalg.norm(z0[b]) / np.linalg.norm(z1[b]))
    for i, ti in enumerate(t):
      want = (np.sin((1 - ti) * omega) * z0[b] + np.sin(ti * omega) * z1[b]) / np.sin(omega)
      np.testing.assert_allclose(got[b, i], want, rtol=1e-5, atol=1e-5)
  # Identical end points: the path stays at the point (the linear fallback).
  np.testing.assert_allclose(gan_lib.slerp(z0, z0, t)[:, 1], z0, rtol=1e-6)


def test_standing_batch_stats_are_the_batch_moments():
  generator, _ = _models(False)
  variables = jax.jit(functools.partial(generator.init, train=False))(jax.random.PRNGKey(0),
                                                                      jnp.zeros((1, LATENT)))
  stats = gan_lib.standing_batch_stats(generator, variables["params"],
                                       variables["batch_stats"], jax.random.PRNGKey(1),
                                       num_samples=256)
  # The projection's BatchNorm sees Dense(z) reshaped to [B, 4, 4, 2F] (16x16: two 2x steps): its moments are
  # the mean and (biased) variance over batch and space, computed here in float64.
  z_rng, _ = jax.random.split(jax.random.PRNGKey(1))
  z = np.asarray(jax.random.normal(z_rng, (256, LATENT)), np.float64)
  kernel = np.asarray(variables["params"]["body"]["project"]["kernel"], np.float64)
  h = (z @ kernel).reshape(256, 4, 4, 2 * F)
  np.testing.assert_allclose(stats["body"]["project_bn"]["mean"], h.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["body"]["project_bn"]["var"], h.var(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_random_fake_labels_are_drawn_from_the_pseudo_label_pool():
  """A pool of one id: 'random' fake labels equal that id, so the step matches 'batch' fake
  labels on a batch of that id exactly; a pool of another id gives another step."""
  generator, _ = _models(True)
  # An unnormalised critic compiles fastest; the labels' path is the same.
  discriminator = gan.ProjectionDiscriminator(NUM_CLASSES, base_features=F, normalization="none")
  tx = optax.sgd(0.1)
  batch = dict(_batches(1)[0], label=np.full(BATCH, 7, np.int32))
  make = functools.partial(gan_lib.create_gan_state, generator, discriminator, tx, tx,
                           image_shape=SHAPE, rng=jax.random.PRNGKey(0))
  pooled_shape = make(num_pseudo_labels=40, abstract=True).pseudo_labels
  assert pooled_shape.shape == (40,) and pooled_shape.dtype == jnp.int32
  state = make()
  assert state.pseudo_labels is None

  random_step, batch_step = (
      jax.jit(gan_lib.make_train_step(generator, discriminator, fake_labels=mode))
      for mode in ("random", "batch"))

  def pooled(cluster):
    pool = jnp.full((40,), cluster, jnp.int32)
    return jax.device_get(random_step(state.replace(pseudo_labels=pool), batch)[0])

  sevens = pooled(7)
  _assert_trees_close(sevens.g_params, jax.device_get(batch_step(state, batch)[0]).g_params,
                      rtol=1e-6, atol=1e-7)
  assert _changed(sevens.g_params, pooled(3).g_params)
  np.testing.assert_array_equal(sevens.pseudo_labels, np.full(40, 7))  # carried unchanged


def test_gan_step_and_sampler_keep_xla_convolutions():
  # Measured faster for DCGAN on CPU (benchmarks/RESULTS.md): the GAN step and the sampler
  # are jitted with onednn=False (make_train_step's documented use; make_sample_fn does it).
  mesh = sharding.make_mesh(1)
  generator, discriminator = _models(False)
  tx = optax.adam(2e-4, b1=0.5)
  state = gan_lib.create_gan_state(generator, discriminator, tx, tx, image_shape=SHAPE,
                                   rng=jax.random.PRNGKey(0), ema=False, mesh=mesh)
  step = jit.jit_train_step(gan_lib.make_train_step(generator, discriminator), mesh,
                            onednn=False)
  text = step.lower(state, sharding.shard_batch(_batches(1)[0], mesh)).as_text()
  assert "stablehlo.convolution" in text and "JvConv" not in text
  sample = gan_lib.make_sample_fn(generator)
  variables = {"params": state.g_params, "batch_stats": state.g_batch_stats}
  text = sample.lower(variables, jnp.zeros((4, LATENT))).as_text()
  assert "stablehlo.convolution" in text and "JvConv" not in text
