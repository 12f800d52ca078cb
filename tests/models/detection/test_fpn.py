"""FPN: output levels and shapes, the top-down wiring against NumPy, missing-level errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.detection import fpn as fpn_lib


def _features(levels, channels=None, batch=1, size=64, seed=0):
  rng = np.random.default_rng(seed)
  channels = channels or {l: 4 + l for l in levels}
  return {l: jnp.asarray(rng.normal(size=(batch, size // 2 ** l, size // 2 ** l, channels[l])),
                         jnp.float32) for l in levels}


def _shapes(model, feats):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), feats))
  out = jax.eval_shape(lambda v: model.apply(v, feats), variables)
  return {k: v.shape for k, v in out.items()}, variables


@pytest.mark.parametrize("min_level,max_level,norm", [(3, 5, None), (3, 7, "group"),
                                                      (2, 6, None), (4, 6, "group")])
def test_level_shapes(min_level, max_level, norm):
  feats = _features([2, 3, 4, 5], batch=2, size=256)
  out, variables = _shapes(fpn_lib.FPN(16, min_level, max_level, norm=norm, groups=4), feats)
  assert out == {l: (2, 256 // 2 ** l, 256 // 2 ** l, 16) for l in range(min_level, max_level + 1)}
  names = set(variables["params"])
  assert {f"lateral_{l}" for l in range(min_level, min(max_level, 5) + 1)} <= names
  assert {f"extra_{l}" for l in range(6, max_level + 1)} <= names
  assert any(n.endswith("_norm") for n in names) == (norm == "group")


def test_single_level_backbone_vgg_style():
  out, _ = _shapes(fpn_lib.FPN(8, 4, 6), _features([4], size=128))
  assert out == {4: (1, 8, 8, 8), 5: (1, 4, 4, 8), 6: (1, 2, 2, 8)}


def test_missing_levels_are_clear_errors():
  with pytest.raises(ValueError, match=r"missing \[3\]"):
    _shapes(fpn_lib.FPN(8, 3, 5), _features([4]))
  with pytest.raises(ValueError, match=r"missing \[4\]"):
    _shapes(fpn_lib.FPN(8, 3, 5), _features([2, 3, 5]))
  with pytest.raises(ValueError, match="needs backbone levels from 3"):
    _shapes(fpn_lib.FPN(8, 3, 5), _features([2]))
  with pytest.raises(ValueError, match="norm"):
    _shapes(fpn_lib.FPN(8, 3, 5, norm="batch"), _features([3, 4, 5]))


def _np_conv(x, kernel, bias, stride):
  """NumPy float64 'conv with padding k // 2' of x [H, W, Cin], kernel [k, k, Cin, Cout]."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((p, p), (p, p), (0, 0)))
  h, w = x.shape[0], x.shape[1]
  ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
  out = np.zeros((ho, wo, kernel.shape[-1])) + bias
  for i in range(ho):
    for j in range(wo):
      patch = xp[i * stride:i * stride + k, j * stride:j * stride + k]  # [k, k, Cin]
      out[i, j] += np.einsum("abc,abcd->d", patch, kernel)
  return out


def test_top_down_and_extra_levels_match_numpy():
  feats = _features([2, 3, 4, 5], size=64, seed=3)
  model = fpn_lib.FPN(5, 3, 7)
  params = jax.jit(model.init)(jax.random.key(1, impl="rbg"), feats)["params"]
  params = jax.tree.map(lambda a: a + 0.1, params)  # non-zero biases
  out = jax.jit(model.apply)({"params": params}, feats)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  f = {l: np.asarray(v[0], np.float64) for l, v in feats.items()}

  def conv(name, x, stride=1):
    return _np_conv(x, p[name]["kernel"], p[name]["bias"], stride)

  merged5 = conv("lateral_5", f[5])
  merged4 = conv("lateral_4", f[4]) + merged5.repeat(2, 0).repeat(2, 1)
  merged3 = conv("lateral_3", f[3]) + merged4.repeat(2, 0).repeat(2, 1)
  want = {3: conv("output_3", merged3), 4: conv("output_4", merged4),
          5: conv("output_5", merged5)}
  want[6] = conv("extra_6", want[5], 2)
  want[7] = conv("extra_7", np.maximum(want[6], 0), 2)
  assert sorted(out) == [3, 4, 5, 6, 7]
  for level in want:
    np.testing.assert_allclose(np.asarray(out[level][0]), want[level], rtol=1e-4, atol=1e-4)


def test_upsample_nearest():
  x = jnp.arange(2 * 3 * 4 * 2, dtype=jnp.float32).reshape(2, 3, 4, 2)
  want = np.asarray(x).repeat(2, 1).repeat(2, 2)
  np.testing.assert_array_equal(np.asarray(fpn_lib.upsample_nearest(x, (6, 8))), want)
  assert fpn_lib.upsample_nearest(x, (3, 4)) is x
  assert fpn_lib.upsample_nearest(x, (5, 7)).shape == (2, 5, 7, 2)
