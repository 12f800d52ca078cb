"""``benchmarks.detection``: the torchvision twin has our architecture, the peer's optimizer
takes our optimizer's steps, and the synthetic batch is what it says. No timing."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from benchmarks import detection  # noqa: E402
from jaxvision.training import optim  # noqa: E402

SIZE = 64  # parameters do not depend on the canvas; the model just has to accept it


def _jax_leaf_sizes(model):
  import jax
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.PRNGKey(0)}, jax.numpy.zeros((1, SIZE, SIZE, 3)), train=False))
  params = shapes["params"]
  return {part: sorted(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params[key]))
          for part, key in (("backbone", "backbone"), ("fpn", "fpn"))}


def _torch_leaf_sizes(model):
  return {"backbone": sorted(p.numel() for p in model.backbone.body.parameters()),
          "fpn": sorted(p.numel() for p in model.backbone.fpn.parameters())}


@pytest.mark.parametrize("name", detection.CONFIGS)
def test_torch_twin_has_the_same_parameters_by_part(name):
  config = detection.load_config(name, size=SIZE, batch=2)
  model = detection.make_jax_model(config, 3)
  twin = detection.make_torch_detector(config.model.to_dict(), model, 3, SIZE)
  ours, theirs = detection.jax_param_counts(model, SIZE), detection.torch_param_counts(twin)
  diff = {k: ours[k] - theirs[k] for k in ours}
  # FCOS: our 3 per-level scales; Faster R-CNN: torchvision's background box regressor,
  # (256 + 1) * 4 with the configs' 256-wide FC layer.
  assert diff == ({"backbone": 0, "fpn": 0, "head": 3, "total": 3} if name == "bccd_fcos" else
                  {"backbone": 0, "fpn": 0, "rpn": 0, "box_head": -1028, "total": -1028})
  assert diff == detection.expected_param_difference(model)
  # Tensor by tensor (sizes), not only in total: the same layers, not a coincidence of sums.
  assert _jax_leaf_sizes(model) == _torch_leaf_sizes(twin)
  # The backbone's widths: 1600016 parameters for stage sizes (1, 2, 2, 1), widths
  # (32, 64, 128, 256), counted by hand: convs 3x3 without bias, GroupNorm scale + bias.
  stem = 27 * 16 + 2 * 16 + 9 * 16 * 32 + 2 * 32
  block = lambda cin, c, proj: 9 * cin * c + 9 * c * c + 4 * c + (cin * c + 2 * c) * proj
  stages = (block(32, 32, 0) + block(32, 64, 1) + block(64, 64, 0) + block(64, 128, 1)
            + block(128, 128, 0) + block(128, 256, 1))
  assert ours["backbone"] == stem + stages == 1600016


def test_fcos_twin_uses_the_configs_group_norm_groups():
  config = detection.load_config("bccd_fcos", size=SIZE, batch=2)
  twin = detection.make_torch_detector(config.model.to_dict(),
                                       detection.make_jax_model(config, 3), 3, SIZE)
  head_norms = [m for m in twin.head.modules() if isinstance(m, torch.nn.GroupNorm)]
  assert len(head_norms) == 2 * 3  # two towers of num_convs=3
  assert {(m.num_groups, m.num_channels) for m in head_norms} == {(16, 96)}
  fpn_norms = [m for m in twin.backbone.fpn.modules() if isinstance(m, torch.nn.GroupNorm)]
  assert {(m.num_groups, m.num_channels) for m in fpn_norms} == {(16, 96)}
  assert twin.transform._skip_resize and twin.transform.min_size == (SIZE,)


def test_torch_optimizer_takes_the_steps_of_ours():
  """Three AdamW steps with decay on matrices only: torch's parameters equal optax's."""
  import jax.numpy as jnp
  cfg = {"name": "adamw", "learning_rate": 0.1, "weight_decay": 0.2}
  rng = np.random.default_rng(0)
  w0, b0 = rng.normal(size=(3, 4)), rng.normal(size=(4,))
  grads = [(rng.normal(size=(3, 4)), rng.normal(size=(4,))) for _ in range(3)]
  tx, _ = optim.make_optimizer(cfg)
  params = {"w": jnp.asarray(w0, jnp.float32), "b": jnp.asarray(b0, jnp.float32)}
  opt_state = tx.init(params)
  for gw, gb in grads:
    g = {"w": jnp.asarray(gw, jnp.float32), "b": jnp.asarray(gb, jnp.float32)}
    updates, opt_state = tx.update(g, opt_state, params)
    params = {k: params[k] + updates[k] for k in params}
  layer = torch.nn.Linear(3, 4)
  with torch.no_grad():
    layer.weight.copy_(torch.tensor(w0.T))
    layer.bias.copy_(torch.tensor(b0))
  opt = detection.make_torch_optimizer(layer, cfg)
  for gw, gb in grads:
    layer.weight.grad = torch.tensor(gw.T, dtype=torch.float32)
    layer.bias.grad = torch.tensor(gb, dtype=torch.float32)
    opt.step()
  np.testing.assert_allclose(layer.weight.detach().numpy().T, params["w"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layer.bias.detach().numpy(), params["b"], rtol=1e-5, atol=1e-6)
  # The decay reached the matrix only: without it the bias ends the same, the matrix not.
  tx0, _ = optim.make_optimizer(dict(cfg, weight_decay=0.0))
  p0 = {"w": jnp.asarray(w0, jnp.float32), "b": jnp.asarray(b0, jnp.float32)}
  s0 = tx0.init(p0)
  for gw, gb in grads:
    u, s0 = tx0.update({"w": jnp.asarray(gw, jnp.float32), "b": jnp.asarray(gb, jnp.float32)},
                       s0, p0)
    p0 = {k: p0[k] + u[k] for k in p0}
  np.testing.assert_allclose(p0["b"], params["b"], rtol=1e-6)
  assert np.abs(np.asarray(p0["w"]) - np.asarray(params["w"])).max() > 1e-3


def test_synthetic_batch_has_bccd_like_boxes():
  b = detection.synthetic_batch(3, 384, max_boxes=64, boxes_per_image=20, seed=1)
  assert b["image"].shape == (3, 384, 384, 3) and b["image"].dtype == np.float32
  assert b["mask"].sum(-1).tolist() == [20, 20, 20]
  assert not b["mask"][:, 20:].any() and (b["labels"][:, 20:] == -1).all()
  boxes, labels = b["boxes"][:, :20], b["labels"][:, :20]
  assert (np.bincount(labels.ravel(), minlength=3) == [3 * 2, 3 * 17, 3 * 1]).all()
  assert (boxes >= 0).all() and (boxes <= 384).all()
  wh = boxes[..., 2:] - boxes[..., :2]
  assert (wh >= 2).all()
  # Unclipped sides lie within +-20% of the class size (24, 60, 110 px at 384).
  inside = ((boxes[..., :2] > 0) & (boxes[..., 2:] < 384)).all(-1)
  for cls, size in ((0, 24.0), (1, 60.0), (2, 110.0)):
    sel = inside & (labels == cls)
    assert sel.any()
    assert (wh[sel] >= 0.8 * size - 1e-3).all() and (wh[sel] <= 1.2 * size + 1e-3).all()
  # At a 128 px canvas the sizes scale by 1/3.
  small = detection.synthetic_batch(1, 128, seed=1)
  assert np.max(small["boxes"][..., 2:] - small["boxes"][..., :2]) <= 1.2 * 110 / 3 + 1e-3


def test_torch_inputs_keep_the_real_boxes_and_shift_labels():
  b = detection.synthetic_batch(2, 64, max_boxes=8, boxes_per_image=5)
  b["mask"][1, 3:] = False
  images, targets = detection.torch_inputs(b, label_offset=1)
  assert len(images) == 2 and tuple(images[0].shape) == (3, 64, 64)
  np.testing.assert_array_equal(images[1].numpy(), b["image"][1].transpose(2, 0, 1))
  assert [len(t["boxes"]) for t in targets] == [5, 3]
  np.testing.assert_array_equal(targets[1]["boxes"].numpy(), b["boxes"][1, :3])
  assert targets[1]["labels"].dtype == torch.int64
  np.testing.assert_array_equal(targets[0]["labels"].numpy(), b["labels"][0, :5] + 1)
