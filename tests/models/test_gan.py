"""DCGAN modules: shapes, ranges, parameter layout, projection formula and one GAN step.

Compilation dominates on CPU, so shape-only checks use ``jax.eval_shape`` and most value checks
fill the variables from NumPy (see ``_fast_init``) and compile only the apply.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision import losses as gan_losses
from jaxvision.models import gan

F = 8  # tiny base_features keeps every test fast
LATENT = 16
NUM_CLASSES = 10


def _fast_init(model, *args):
  """Variables with the structure of ``model.init`` filled from NumPy (no compilation).

  Compiling the random initialisers costs seconds on CPU, so only
  ``test_generator_init_and_values_28x28`` runs the real ``init``. Kernels, embeddings and
  spectral-norm vectors are N(0, 0.05); BatchNorm scales, variances and sigmas are 1; biases
  and means are 0.
  """
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), *args)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = str(path[-1].key)
    if name in ("scale", "var") or name.endswith("/sigma"):
      value = np.ones(leaf.shape)
    elif name in ("bias", "mean"):
      value = np.zeros(leaf.shape)
    else:
      value = rng.normal(0.0, 0.05, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model, variables, *args, train):
  """Jitted apply; with ``train=True`` returns ``(outputs, updates)``."""
  if train:
    fn = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  else:
    fn = functools.partial(model.apply, train=False)
  return jax.jit(fn)(variables, *args)


def _shapes(model, *args, train):
  """``(variable shapes, output shapes)`` without compiling."""
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), *args)
  kwargs = dict(train=True, mutable=["batch_stats"]) if train else dict(train=False)
  outputs = jax.eval_shape(functools.partial(model.apply, **kwargs), variables, *args)
  return variables, outputs[0] if train else outputs


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _tree_changed(a, b):
  return any(not np.allclose(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                   jax.tree_util.tree_leaves(b)))


def _all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("image_shape, plan", [((28, 28, 1), (7, 7, 2)), ((32, 32, 3), (4, 4, 3)),
                                               ((64, 48, 3), (4, 3, 4)),
                                               ((56, 40, 1), (7, 5, 3))])
def test_spatial_plan(image_shape, plan):
  assert gan.spatial_plan(*image_shape[:2]) == plan


@pytest.mark.parametrize("height, width", [(7, 7), (27, 27), (30, 30), (28, 30), (0, 4)])
def test_spatial_plan_rejects_unsupported_sizes(height, width):
  with pytest.raises(ValueError, match="not supported|positive"):
    gan.spatial_plan(height, width)


def test_generator_init_and_values_28x28():
  gen = gan.Generator(LATENT, (28, 28, 1), base_features=F)
  z = 3.0 * jax.random.normal(jax.random.key(0), (5, LATENT))
  variables = jax.jit(functools.partial(gen.init, train=False))(jax.random.key(1), z)
  # DCGAN initialisation: kernels ~ N(0, 0.02), BatchNorm scale 1.
  kernel = np.asarray(variables["params"]["body"]["deconv0"]["kernel"])
  np.testing.assert_allclose(np.std(kernel), 0.02, rtol=0.1)
  np.testing.assert_array_equal(variables["params"]["body"]["project_bn"]["scale"], 1.0)
  images, updates = _apply(gen, variables, z, train=True)
  assert images.shape == (5, 28, 28, 1) and images.dtype == jnp.float32
  assert np.all(np.abs(images) <= 1.0) and np.all(np.isfinite(images))
  assert np.std(images) > 1e-3  # not a constant image
  assert np.max(np.abs(images[0] - images[1])) > 1e-4  # different z, different image
  # Training mode updated BatchNorm's running statistics.
  assert _tree_changed(variables["batch_stats"], updates["batch_stats"])


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3)])
@pytest.mark.parametrize("train", [True, False])
def test_generator_shapes(image_shape, train):
  gen = gan.Generator(LATENT, image_shape, base_features=F)
  _, images = _shapes(gen, jnp.zeros((5, LATENT)), train=train)
  assert images.shape == (5,) + image_shape and images.dtype == jnp.float32


def test_generator_parameter_layout_28x28():
  # DCGAN-MNIST at F=64: Dense 100 -> 7*7*128 (no bias), BN(128), ConvT 4x4 128->64 (no bias),
  # BN(64), ConvT 4x4 64->1 (+ bias).
  variables, _ = _shapes(gan.Generator(100, (28, 28, 1)), jnp.zeros((1, 100)), train=False)
  expected = 100 * 7 * 7 * 128 + 2 * 128 + 4 * 4 * 128 * 64 + 2 * 64 + 4 * 4 * 64 * 1 + 1
  assert _count(variables["params"]) == expected
  assert _count(variables["batch_stats"]) == 2 * (128 + 64)


def test_discriminator_parameter_layout_32x32():
  # Conv 3->64 (+bias, no BN), Conv 64->128 + BN, Conv 128->256 + BN, Dense 4*4*256 -> 1.
  variables, _ = _shapes(gan.Discriminator(), jnp.zeros((1, 32, 32, 3)), train=False)
  expected = (16 * 3 * 64 + 64 + 16 * 64 * 128 + 2 * 128 + 16 * 128 * 256 + 2 * 256
              + 4 * 4 * 256 + 1)
  assert _count(variables["params"]) == expected
  assert set(variables["params"]["trunk"]) == {"conv0", "conv1", "conv1_bn", "conv2", "conv2_bn"}


def test_discriminator_stride1_convs_layout_28x28():
  # SN-GAN-style trunk: each strided conv is preceded by a 3x3 stride-1 conv of the block's
  # input width (the image's 1 channel -> 48 in block 0, 48 -> 48 in block 1).
  variables, (logits, aux) = _shapes(
      gan.Discriminator(base_features=48, normalization="batch", stride1_convs=True),
      jnp.zeros((2, 28, 28, 1)), train=False)
  params = variables["params"]["trunk"]
  assert set(params) == {"conv0_3x3", "conv0", "conv1_3x3", "conv1_3x3_bn", "conv1",
                         "conv1_bn"}
  assert params["conv0_3x3"]["kernel"].shape == (3, 3, 1, 48)
  assert params["conv1_3x3"]["kernel"].shape == (3, 3, 48, 48)
  assert "bias" not in params["conv1_3x3"]  # BatchNorm follows it
  assert params["conv1"]["kernel"].shape == (4, 4, 48, 96)
  assert logits.shape == (2,) and aux["features"].shape == (2, 7 * 7 * 96)


@pytest.mark.parametrize("image_shape, feature_dim", [((28, 28, 1), 7 * 7 * 2 * F),
                                                      ((32, 32, 3), 4 * 4 * 4 * F)])
@pytest.mark.parametrize("normalization", ["batch", "spectral", "none"])
@pytest.mark.parametrize("train", [True, False])
def test_discriminator_shapes(image_shape, feature_dim, normalization, train):
  disc = gan.Discriminator(base_features=F, normalization=normalization)
  variables, (logits, aux) = _shapes(disc, jnp.zeros((3,) + image_shape), train=train)
  assert logits.shape == (3,) and logits.dtype == jnp.float32
  assert aux["features"].shape == (3, feature_dim)
  has_stats = "batch_stats" in variables
  assert has_stats == (normalization != "none")


def test_spectral_norm_converges_to_top_singular_value():
  # Power iteration state is carried across training calls; after enough calls the stored
  # sigma of each layer equals the kernel's largest singular value (NumPy SVD).
  disc = gan.Discriminator(base_features=F, normalization="spectral", spectral_norm_steps=4)
  x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1), minval=-1, maxval=1)
  variables = _fast_init(disc, x)
  train_apply = jax.jit(functools.partial(disc.apply, train=True, mutable=["batch_stats"]))
  for _ in range(15):
    _, updates = train_apply(variables, x)
    variables = {"params": variables["params"], **updates}
  stats = variables["batch_stats"]
  for sigma, kernel in [(stats["trunk"]["conv1_sn"]["conv1/kernel/sigma"],
                         variables["params"]["trunk"]["conv1"]["kernel"]),
                        (stats["logit_sn"]["logit/kernel/sigma"],
                         variables["params"]["logit"]["kernel"])]:
    kernel = np.asarray(kernel, np.float64)
    top = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    np.testing.assert_allclose(sigma, top, rtol=1e-3)


def test_unknown_normalization_and_bad_inputs():
  x = jnp.zeros((2, 28, 28, 1))
  with pytest.raises(ValueError, match="unknown discriminator normalization 'layer'"):
    _shapes(gan.Discriminator(normalization="layer"), x, train=False)
  with pytest.raises(ValueError, match=r"z must have shape \[B, 16\]"):
    _shapes(gan.Generator(LATENT, (28, 28, 1)), jnp.zeros((2, 8)), train=False)
  with pytest.raises(ValueError, match="not supported"):
    _shapes(gan.Generator(LATENT, (30, 30, 1)), jnp.zeros((2, LATENT)), train=False)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    _shapes(gan.Discriminator(), jnp.zeros((2, 28, 28)), train=False)
  with pytest.raises(ValueError, match="integer class ids"):
    _shapes(gan.ProjectionDiscriminator(NUM_CLASSES), x, jnp.zeros(2), train=False)
  with pytest.raises(ValueError, match="batch size 3, expected 2"):
    _shapes(gan.ConditionalGenerator(NUM_CLASSES, LATENT, (28, 28, 1)), jnp.zeros((2, LATENT)),
            jnp.zeros(3, jnp.int32), train=False)


def test_conditional_generator_values_28x28():
  gen = gan.ConditionalGenerator(NUM_CLASSES, LATENT, (28, 28, 1), embed_dim=6, base_features=F)
  z = jax.random.normal(jax.random.key(0), (4, LATENT))
  z = z.at[1].set(z[0])  # rows 0 and 1: same z, different labels
  y = jnp.array([1, 2, 9, 3])
  variables = _fast_init(gen, z, y)
  images = _apply(gen, variables, z, y, train=False)
  assert variables["params"]["label_embed"]["embedding"].shape == (NUM_CLASSES, 6)
  assert variables["params"]["body"]["project"]["kernel"].shape[0] == LATENT + 6
  assert images.shape == (4, 28, 28, 1)
  assert np.all(np.abs(images) <= 1.0) and np.all(np.isfinite(images))
  assert np.max(np.abs(images[0] - images[1])) > 1e-4  # the label changes the image


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("train", [True, False])
def test_conditional_shapes(image_shape, train):
  gen = gan.ConditionalGenerator(NUM_CLASSES, LATENT, image_shape, base_features=F)
  y = jnp.array([0, 3, 9])
  _, images = _shapes(gen, jnp.zeros((3, LATENT)), y, train=train)
  assert images.shape == (3,) + image_shape
  disc = gan.ProjectionDiscriminator(NUM_CLASSES, base_features=F)
  _, (logits, aux) = _shapes(disc, jnp.zeros((3,) + image_shape), y, train=train)
  assert logits.shape == (3,) and logits.dtype == jnp.float32
  assert aux["features"].shape == (3, 4 * 4 * 4 * F if image_shape[0] == 32 else 7 * 7 * 2 * F)
  assert aux["class_projection"].shape == aux["unconditional_logits"].shape == (3,)


@pytest.mark.parametrize("image_shape, normalization", [((28, 28, 1), "none"),
                                                        ((32, 32, 3), "spectral")])
def test_projection_discriminator_values(image_shape, normalization):
  disc = gan.ProjectionDiscriminator(NUM_CLASSES, base_features=F, normalization=normalization)
  x = jax.random.uniform(jax.random.key(0), (2,) + image_shape, minval=-1, maxval=1)
  x = jnp.concatenate([x[:1], x[:1], x[1:]])  # the same image twice, then another
  y = jnp.array([2, 7, 2])
  variables = _fast_init(disc, x, y)
  logits, aux = _apply(disc, variables, x, y, train=False)
  phi = np.asarray(aux["features"], np.float64)
  assert logits.shape == (3,) and np.all(np.isfinite(logits))
  assert abs(logits[0] - logits[1]) > 1e-4  # the label changes the logit of the same image
  np.testing.assert_allclose(phi[0], phi[1], rtol=1e-6)  # ...but not the features
  if normalization == "none":
    # logit = w . phi + b + E[y] . phi, from the parameters in float64.
    params = variables["params"]
    w = np.asarray(params["psi"]["kernel"], np.float64)[:, 0]
    b = float(params["psi"]["bias"][0])
    emb = np.asarray(params["class_embed"]["embedding"], np.float64)
    expected = phi @ w + b + np.sum(emb[np.asarray(y)] * phi, axis=1)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def _make_gan_step(gen, disc, d_loss_fn, g_loss_fn, g_opt, d_opt, num_classes=None):
  """A minimal D-then-G step; ``num_classes`` set means both networks take labels."""

  def g_apply(params, stats, z, y):
    args = (z,) if num_classes is None else (z, y)
    return gen.apply({"params": params, **stats}, *args, train=True, mutable=["batch_stats"])

  def d_apply(params, stats, x, y):
    args = (x,) if num_classes is None else (x, y)
    (logits, _), updates = disc.apply({"params": params, **stats}, *args, train=True,
                                      mutable=["batch_stats"])
    return logits, updates

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, real, real_labels, rng, step_index):
    rng_zd, rng_zg, rng_yd, rng_yg = jax.random.split(jax.random.fold_in(rng, step_index), 4)
    batch = real.shape[0]
    g_stats = {k: v for k, v in state["g"].items() if k != "params"}
    d_stats = {k: v for k, v in state["d"].items() if k != "params"}
    sample_labels = lambda key: (None if num_classes is None else
                                 jax.random.randint(key, (batch,), 0, num_classes))

    # Discriminator update on real images and (stopped) generated ones.
    fake_labels = sample_labels(rng_yd)
    fake, g_stats = g_apply(state["g"]["params"], g_stats,
                            jax.random.normal(rng_zd, (batch, gen.latent_dim)), fake_labels)

    def d_objective(d_params):
      real_logits, stats = d_apply(d_params, d_stats, real, real_labels)
      fake_logits, stats = d_apply(d_params, stats, jax.lax.stop_gradient(fake), fake_labels)
      return d_loss_fn(real_logits, fake_logits), stats

    (d_loss, d_stats), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
        state["d"]["params"])
    d_updates, d_opt_state = d_opt.update(d_grads, state["d_opt"], state["d"]["params"])
    d_params = optax.apply_updates(state["d"]["params"], d_updates)

    # Generator update through the updated discriminator (its statistics left as they are).
    g_labels = sample_labels(rng_yg)

    def g_objective(g_params):
      z = jax.random.normal(rng_zg, (batch, gen.latent_dim))
      fake, stats = g_apply(g_params, g_stats, z, g_labels)
      fake_logits, _ = d_apply(d_params, d_stats, fake, g_labels)
      return g_loss_fn(fake_logits), stats

    (g_loss, g_stats), g_grads = jax.value_and_grad(g_objective, has_aux=True)(
        state["g"]["params"])
    g_updates, g_opt_state = g_opt.update(g_grads, state["g_opt"], state["g"]["params"])
    g_params = optax.apply_updates(state["g"]["params"], g_updates)
    new_state = dict(g={"params": g_params, **g_stats}, d={"params": d_params, **d_stats},
                     g_opt=g_opt_state, d_opt=d_opt_state)
    return new_state, {"d_loss": d_loss, "g_loss": g_loss}

  return step


@pytest.mark.parametrize("conditional", [False, True])
def test_one_gan_step(conditional):
  batch = 8
  real = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1), minval=-1, maxval=1)
  real_labels = jnp.arange(batch) % NUM_CLASSES
  z = jnp.zeros((batch, LATENT))
  if conditional:  # hinge loss, cGAN generator, spectrally normalised projection critic
    gen = gan.ConditionalGenerator(NUM_CLASSES, LATENT, (28, 28, 1), base_features=F)
    disc = gan.ProjectionDiscriminator(NUM_CLASSES, base_features=F, normalization="spectral")
    losses, g_args, d_args = "hinge", (z, real_labels), (real, real_labels)
  else:  # the DCGAN recipe: non-saturating loss, BatchNorm in both networks
    gen = gan.Generator(LATENT, (28, 28, 1), base_features=F)
    disc = gan.Discriminator(base_features=F, normalization="batch")
    losses, g_args, d_args = "non_saturating", (z,), (real,)
  d_loss_fn, g_loss_fn = gan_losses.get_gan_losses(losses)
  g_vars, d_vars = _fast_init(gen, *g_args), _fast_init(disc, *d_args)
  g_opt, d_opt = optax.adam(2e-4, b1=0.5), optax.adam(2e-4, b1=0.5)
  state = dict(g=g_vars, d=d_vars, g_opt=g_opt.init(g_vars["params"]),
               d_opt=d_opt.init(d_vars["params"]))
  step = _make_gan_step(gen, disc, d_loss_fn, g_loss_fn, g_opt, d_opt,
                        NUM_CLASSES if conditional else None)

  old = jax.tree_util.tree_map(lambda x: np.array(x, copy=True), state)  # state is donated
  new, metrics = step(state, real, real_labels, jax.random.key(3), 0)
  assert np.isfinite(metrics["d_loss"]) and np.isfinite(metrics["g_loss"])
  if not conditional:
    # Near-zero initial logits: d_loss ~ 2 log 2.
    np.testing.assert_allclose(metrics["d_loss"], 2 * np.log(2), atol=0.3)
  for net in ("g", "d"):
    assert _tree_changed(old[net]["params"], new[net]["params"])
    assert _tree_changed(old[net]["batch_stats"], new[net]["batch_stats"])
  assert _all_finite(new)
  # The next step (next fold_in index) stays finite and keeps changing the parameters.
  newer, metrics = step(jax.tree_util.tree_map(jnp.copy, new), real, real_labels,
                        jax.random.key(3), 1)
  assert _all_finite(newer) and np.isfinite(metrics["g_loss"])
  assert _tree_changed(new["g"]["params"], newer["g"]["params"])
