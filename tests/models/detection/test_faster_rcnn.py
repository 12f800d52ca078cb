"""FasterRCNN end to end with a stand-in backbone: the detector contract, losses and gradients
(also for images without boxes), single-level and FPN wiring, and a tiny overfit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision.models import layers
from jaxvision.models.detection.faster_rcnn import FasterRCNN
from tests.models.detection import frcnn_reference as ref

S = 64


class TwoLevelBackbone(nn.Module):
  """Stand-in backbone: levels 2 (16x16) and 3 (8x8) of a 64x64 canvas."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    x = nn.relu(layers.Conv(16, (3, 3), strides=(2, 2), padding="SAME")(x))
    x = nn.relu(layers.Conv(32, (3, 3), strides=(2, 2), padding="SAME")(x))
    p2 = nn.relu(layers.Conv(32, (3, 3), padding="SAME")(x))
    p3 = nn.relu(layers.Conv(32, (3, 3), strides=(2, 2), padding="SAME")(p2))
    return {2: p2, 3: p3}


class Level4Backbone(nn.Module):
  """VGG16-like stand-in: the single level 4."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return {4: nn.relu(layers.Conv(8, (3, 3), strides=(16, 16), padding="SAME")(x))}


class StandInFPN(nn.Module):
  """Maps backbone levels to levels 3..5 with 16 channels (P5 by a stride-2 conv)."""

  @nn.compact
  def __call__(self, feats):
    out = {lv: layers.Conv(16, (1, 1), name=f"lat{lv}")(feats[lv]) for lv in (3, 4)}
    out[5] = layers.Conv(16, (3, 3), strides=(2, 2), padding="SAME", name="p5")(out[4])
    return out


def small_model(backbone=None, **kw):
  cfg = dict(num_classes=2, backbone=backbone or TwoLevelBackbone(),
             rpn_anchor_sizes=((16,), (32,)), rpn_pre_nms_top_k_train=200,
             rpn_post_nms_top_k_train=64, rpn_pre_nms_top_k_test=200,
             rpn_post_nms_top_k_test=64, rpn_batch_size_per_image=64,
             box_batch_size_per_image=32, box_fc_dim=64, max_detections=10)
  cfg.update(kw)
  return FasterRCNN(**cfg)


# Two synthetic images with bright rectangles: class 0 reddish, class 1 greenish.
BOXES = np.array([[[6, 8, 26, 22], [36, 30, 58, 58], [40, 4, 56, 20]],
                  [[10, 34, 34, 54], [30, 6, 52, 24], [0, 0, 0, 0]]], np.float32)
LABELS = np.array([[0, 1, 0], [1, 0, -1]], np.int32)
MASK = LABELS >= 0
COLOURS = {0: (1.0, 0.2, 0.2), 1: (0.2, 1.0, 0.2)}


def _images():
  img = np.full((2, S, S, 3), 0.1, np.float32)
  for b in range(2):
    for (x1, y1, x2, y2), label, real in zip(BOXES[b], LABELS[b], MASK[b]):
      if real:
        img[b, int(y1):int(y2), int(x1):int(x2)] = COLOURS[int(label)]
  return jnp.asarray(img)


def _targets(boxes=BOXES, labels=LABELS, mask=MASK):
  return {"boxes": jnp.asarray(boxes), "labels": jnp.asarray(labels), "mask": jnp.asarray(mask)}


@pytest.fixture(scope="module")
def trained():
  """Initialises the small model and trains it 300 Adam steps on the two images (jit)."""
  model = small_model()
  images, targets = _images(), _targets()
  variables = jax.jit(model.init, static_argnames="train")(
      {"params": jax.random.key(0), "sampling": jax.random.key(1)}, images, targets, train=True)

  @jax.jit
  def loss_and_grad(params, images, targets, rng):
    def loss_fn(p):
      terms = model.apply({"params": p}, images, targets, train=True, rngs={"sampling": rng})
      return sum(terms.values()), terms
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  tx = optax.adam(3e-3)

  @jax.jit
  def update(params, opt, grads):
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  params = variables["params"]
  opt = tx.init(params)
  first = None
  for i in range(300):
    (_, terms), grads = loss_and_grad(params, images, targets, jax.random.key(100 + i))
    first = terms if first is None else first
    params, opt = update(params, opt, grads)
  detect = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  return dict(model=model, params=params, first=first, last=terms, detect=detect,
              loss_and_grad=loss_and_grad)


def test_overfit_finds_the_rectangles(trained):
  assert sum(map(float, trained["last"].values())) < 0.3 * sum(map(float,
                                                                    trained["first"].values()))
  det = trained["detect"](trained["params"], _images())
  for b in range(2):
    n_gt = int(MASK[b].sum())
    top_boxes = np.asarray(det["boxes"][b, :n_gt])
    top_classes = np.asarray(det["classes"][b, :n_gt])
    overlap = ref.iou(BOXES[b, :n_gt], top_boxes)  # [gt, top detections]
    for g in range(n_gt):
      hit = (overlap[g] > 0.5) & (top_classes == LABELS[b, g])
      assert hit.any(), (b, g, top_boxes, top_classes, np.asarray(det["scores"][b]))
    assert (np.asarray(det["scores"][b, :n_gt]) > 0.5).all()


def test_detections_follow_the_contract(trained):
  images = _images()
  det = trained["detect"](trained["params"], images)
  assert set(det) == {"boxes", "scores", "classes", "num_valid"}
  assert det["boxes"].shape == (2, 10, 4) and det["boxes"].dtype == jnp.float32
  assert det["scores"].shape == (2, 10) and det["scores"].dtype == jnp.float32
  assert det["classes"].shape == (2, 10) and det["classes"].dtype == jnp.int32
  assert det["num_valid"].shape == (2,) and det["num_valid"].dtype == jnp.int32
  boxes, scores = np.asarray(det["boxes"]), np.asarray(det["scores"])
  classes, num_valid = np.asarray(det["classes"]), np.asarray(det["num_valid"])
  assert (boxes >= 0).all() and (boxes <= S).all()
  for b in range(2):
    n = num_valid[b]
    assert (np.diff(scores[b, :n]) <= 0).all() and (scores[b, :n] > 0.05).all()
    assert ((classes[b, :n] >= 0) & (classes[b, :n] < 2)).all()
    assert (scores[b, n:] == -1).all() and (classes[b, n:] == -1).all()
  # A blank canvas: nothing to find, everything padding or low-scoring, still static.
  blank = trained["detect"](trained["params"], jnp.zeros_like(images))
  assert blank["boxes"].shape == (2, 10, 4)


def test_losses_and_gradients_finite_with_empty_images(trained):
  images = _images()
  params, loss_and_grad = trained["params"], trained["loss_and_grad"]
  # Image 1 without boxes (same shapes as in training: no recompilation).
  mask = MASK.copy()
  mask[1] = False
  labels = np.where(mask, LABELS, -1)
  boxes = BOXES * mask[..., None]
  (total, terms), grads = loss_and_grad(params, images, _targets(boxes, labels, mask),
                                        jax.random.key(0))
  assert set(terms) == {"rpn_cls", "rpn_box", "box_cls", "box_box"}
  assert all(v.shape == () and v.dtype == jnp.float32 for v in terms.values())
  assert np.isfinite(float(total))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # No box at all: the regression terms are exactly 0, classification terms positive.
  empty = np.zeros_like(MASK)
  (total, terms), grads = loss_and_grad(params, images,
                                        _targets(BOXES * 0, np.full_like(LABELS, -1), empty),
                                        jax.random.key(1))
  assert float(terms["rpn_box"]) == 0.0 and float(terms["box_box"]) == 0.0
  assert float(terms["rpn_cls"]) > 0 and float(terms["box_cls"]) > 0
  leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(g).all() for g in leaves) and any(g.any() for g in leaves)


def _shapes(model, with_targets, size=S):
  images = jnp.zeros((2, size, size, 3))
  targets = _targets() if with_targets else None
  rngs = {"params": jax.random.key(0), "sampling": jax.random.key(1)}
  return jax.eval_shape(lambda: model.init_with_output(rngs, images, targets, train=True))


def test_single_level_backbone_with_default_anchors():
  model = small_model(Level4Backbone(), rpn_anchor_sizes=None)
  out, variables = _shapes(model, with_targets=False)
  # Default single-level anchors: 5 sizes x 3 ratios on the stride-16 map.
  assert variables["params"]["rpn_head"]["cls_logits"]["kernel"].shape == (1, 1, 8, 15)
  assert out["boxes"].shape == (2, 10, 4) and out["num_valid"].shape == (2,)
  losses, _ = _shapes(model, with_targets=True)
  assert set(losses) == {"rpn_cls", "rpn_box", "box_cls", "box_box"}


def test_fpn_levels_feed_the_rpn_and_box_head():
  class Backbone(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
      del train
      c3 = layers.Conv(8, (3, 3), strides=(8, 8), padding="SAME")(x)
      return {3: c3, 4: layers.Conv(8, (3, 3), strides=(2, 2), padding="SAME")(c3)}

  model = small_model(Backbone(), fpn=StandInFPN(), rpn_anchor_sizes=None, box_num_convs=1,
                      box_conv_dim=8, box_num_groups=4)
  out, variables = _shapes(model, with_targets=False, size=128)
  params = variables["params"]
  assert set(params["fpn"]) == {"lat3", "lat4", "p5"}
  # The RPN runs on the FPN's 16 channels, one size per level (64, 128, 256) x 3 ratios.
  assert params["rpn_head"]["conv"]["kernel"].shape == (3, 3, 16, 16)
  assert params["rpn_head"]["cls_logits"]["kernel"].shape == (1, 1, 16, 3)
  assert params["box_head"]["conv0"]["kernel"].shape == (3, 3, 16, 8)
  assert out["scores"].shape == (2, 10)


def test_bad_input_is_reported():
  model = small_model()
  images = jnp.zeros((2, S, S, 3))
  rngs = {"params": jax.random.key(0), "sampling": jax.random.key(1)}
  bad = {"boxes": jnp.zeros((2, 3, 4)), "labels": jnp.zeros((2, 3), jnp.int32)}
  with pytest.raises(ValueError, match="missing"):
    jax.eval_shape(lambda: model.init(rngs, images, bad, train=True))
  bad["mask"] = jnp.zeros((2, 4), bool)
  with pytest.raises(ValueError, match="labels \\[B, M\\], mask \\[B, M\\]"):
    jax.eval_shape(lambda: model.init(rngs, images, bad, train=True))
  uneven = small_model(rpn_anchor_sizes=((16,), (32, 64)))
  with pytest.raises(ValueError, match="same number of anchors"):
    jax.eval_shape(lambda: uneven.init(rngs, images, train=False))
