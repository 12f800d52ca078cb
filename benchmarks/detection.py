"""Detection train step: jaxvision beside torchvision, for the BCCD configs, on one machine.

Usage::

    python -m benchmarks.detection                   # bccd_fcos and bccd_faster_rcnn, 384 px,
                                                     # batch 8, 10 timed steps each
    python -m benchmarks.detection --configs bccd_fcos --size 128 --batch 2 --iters 2 \\
        --out /tmp/detection.json                    # a smoke run

For each config (``train/configs/<name>.py``, its ``model`` and ``optimizer`` exactly; the
canvas and batch from the flags):

* **jaxvision**: the task's step, ``tasks.detection.make_train_step()`` jitted by
  ``training.jit.jit_train_step`` on a one-device mesh and compiled ahead of time by
  ``training.trainer.compile_step``, as the trainer does, after
  ``backends.cpu.configure_runtime()`` (as ``benchmarks.run``). The state comes from
  ``training.state.create_train_state`` with the config's optimizer.
* **torchvision** (eager PyTorch on the CPU, ``torch.set_num_threads(--torch-threads)``): the
  same architecture built from torchvision's parts, see :func:`make_torch_detector`: a PyTorch
  twin of ``models.detection.ResNetGN`` (:class:`TorchResNetGN`), ``FeaturePyramidNetwork``
  with the same channels and GroupNorm, and ``FCOS`` (its class and box heads given the same
  GroupNorm groups through ``norm_layer``) or ``FasterRCNN`` with the same anchors, proposal
  counts, RoI sampling and a ``FastRCNNConvFCHead`` box head of the same shape. Its
  ``GeneralizedRCNNTransform`` neither resizes (``_skip_resize``, ``min_size = max_size =
  canvas``) nor normalizes (mean 0, std 1): the images are the canvases JAX gets. A step is
  ``zero_grad``, the loss dict's sum, ``backward``, ``clip_grad_norm_`` (the config's
  ``grad_clip_norm``) and ``AdamW`` (or SGD) with weight decay on tensors of 2 or more dims,
  as ``training.optim``, each step at the rate of the config's schedule for that step (set on
  the parameter groups), so both frameworks take the same steps from the same start.

What still differs, none of it in the layers' shapes: our FCOS has a learned scale per level
(3 parameters) and torchvision's Faster R-CNN regresses a box for the background class too
(``(fc_dim + 1) * 4`` parameters); torchvision's ``MultiScaleRoIAlign`` uses
``aligned=False`` (ours ``True``); GroupNorm's epsilon is 1e-5 in PyTorch and 1e-6 in Flax;
our shapes are static (proposals, RoIs and detections padded to fixed counts) where
torchvision's vary with the data; the initial weights differ (same distributions where the
code says so). The figures are for the CPU (on a machine with an accelerator, run with
``JAX_PLATFORMS=cpu`` to compare like with like).

Both get the same batch: by default one real BCCD training batch read through the task's
pipeline (``DetectionTask.train_batches``, augmentation included) when
``$JAXVISION_DATA_DIR/bccd/BCCD`` exists, else a synthetic one of BCCD-like boxes
(:func:`synthetic_batch`: 17 red cells ~60 px, 2 platelets ~24 px, 1 white cell ~110 px per
384 px image). Per framework: set-up (JAX: lowering plus compilation, reported as
``compile_s``), ``--warmup`` steps, then ``--iters`` timed steps interleaved with the peer's
(one step each in turn, the first alternating), every step a full forward, backward and
update ending in ``jax.block_until_ready`` (JAX) or ``loss.item()`` (PyTorch). Reported:
median and quartiles of ms/step, images/s, parameter counts (total and per part; the two
differ only where the architectures must, see :func:`expected_param_difference`), the first
losses of both, and the ratio jaxvision / torchvision of images/s (> 1: jaxvision is faster)
with the median of the per-step ratios. With real data the record also holds the config's
number of training steps and the time they would take at the median step (steps only: no
evaluation, no input pipeline).

Writes ``--out`` (default ``benchmarks/results/<machine>_<UTC date>_detection-bccd-train-
s<size>-b<batch>.json``, the naming of ``benchmarks/RESULTS.md``, ``-<HHMMSS>`` added for a
repeated run of the day; ``--machine`` defaults to ``cpu-2core-epyc-zen4``) and prints a
table.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import importlib
import json
import math
import os
import pathlib
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402
from jaxvision.backends import cpu  # noqa: E402
from jaxvision.data import paths  # noqa: E402
from jaxvision.tasks import detection  # noqa: E402
from jaxvision.training import jit, optim, sharding, trainer  # noqa: E402
from jaxvision.training import state as state_lib  # noqa: E402

CONFIGS = ("bccd_fcos", "bccd_faster_rcnn")
DATA = ("auto", "bccd", "synthetic")
BCCD_CLASSES = ("Platelets", "RBC", "WBC")
DEFAULT_MACHINE = "cpu-2core-epyc-zen4"
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


# -- Configs and batches. -----------------------------------------------------------------------


def load_config(name: str, *, size: int, batch: int):
  """``train/configs/<name>.py``'s config with ``canvas_size = size``, ``batch_size = batch``."""
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; expected one of {CONFIGS}")
  config = importlib.import_module(f"train.configs.{name}").get_config()
  config.canvas_size = int(size)
  config.batch_size = int(batch)
  return config


def synthetic_batch(batch: int, size: int, *, max_boxes: int = 64, boxes_per_image: int = 20,
                    seed: int = 0) -> dict:
  """A batch of BCCD-like boxes on noise images.

  Per image ``boxes_per_image`` boxes: 5% white cells (class 2, ~110 px at a 384 px canvas),
  10% platelets (class 0, ~24 px), the rest red cells (class 1, ~60 px); sizes scale with
  ``size / 384`` and vary by +-20% (each side apart), centres uniform in the canvas, boxes
  clipped to it and at least 2 px wide and high.

  Returns:
    ``image float32 [B, S, S, 3]`` in [0, 1], ``boxes float32 [B, max_boxes, 4]`` xyxy canvas
    pixels (0 in padding), ``labels int32 [B, max_boxes]`` (-1 in padding), ``mask bool [B,
    max_boxes]`` (NumPy).
  """
  if not 1 <= boxes_per_image <= max_boxes:
    raise ValueError(f"boxes_per_image must be in [1, max_boxes={max_boxes}]; found "
                     f"{boxes_per_image}")
  rng = np.random.default_rng(seed)
  n = boxes_per_image
  n_wbc, n_plt = max(1, round(0.05 * n)), max(1, round(0.10 * n))
  labels = np.array([2] * n_wbc + [0] * n_plt + [1] * (n - n_wbc - n_plt), np.int32)[:n]
  base = np.array([24.0, 60.0, 110.0])[labels] * size / 384.0  # [n] by class
  out = {"image": rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32),
         "boxes": np.zeros((batch, max_boxes, 4), np.float32),
         "labels": np.full((batch, max_boxes), -1, np.int32),
         "mask": np.zeros((batch, max_boxes), bool)}
  for b in range(batch):
    wh = base[:, None] * rng.uniform(0.8, 1.2, (n, 2))
    centre = rng.uniform(0, size, (n, 2))
    xy1 = np.clip(centre - wh / 2, 0, size - 2)
    xy2 = np.clip(centre + wh / 2, xy1 + 2, size)
    out["boxes"][b, :n] = np.concatenate([xy1, xy2], 1)
    out["labels"][b, :n] = labels
    out["mask"][b, :n] = True
  return out


def bccd_available() -> bool:
  return (paths.data_root() / "bccd" / "BCCD").is_dir()


def bccd_batch(config) -> tuple[dict, int, int, tuple[str, ...]]:
  """The first training batch of BCCD through the task's pipeline (augmented, as training
  sees it); returns ``(batch, total training steps of the config, num_classes, class
  names)``. Needs ``$JAXVISION_DATA_DIR/bccd/BCCD``."""
  task = detection.DetectionTask(config)
  task.prepare()
  batch = next(iter(task.train_batches(0)))
  return ({k: np.asarray(v) for k, v in batch.items()}, task.total_steps(),
          task.info.num_classes, tuple(task.info.class_names))


# -- The torchvision twin. ----------------------------------------------------------------------


def _group_norm(channels: int, groups: int):
  """``torch.nn.GroupNorm`` with ``gcd(channels, groups)`` groups, as
  ``models.detection.backbones.group_norm_groups``."""
  import torch
  return torch.nn.GroupNorm(math.gcd(int(channels), int(groups)) or 1, int(channels))


def _torch_modules():
  """The PyTorch module classes, defined on first use (torch is imported only here)."""
  import torch
  from torch import nn
  from torchvision.ops import FeaturePyramidNetwork

  class BasicBlockGN(nn.Module):
    """``backbones._BasicBlockGN``: two 3x3 convs (no bias) with GroupNorm, the last norm's
    scale at 0, a 1x1 projection with GroupNorm where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.norm1 = _group_norm(cout, groups)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.norm2 = _group_norm(cout, groups)
      nn.init.zeros_(self.norm2.weight)
      self.proj = None
      if cin != cout or stride != 1:
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                  _group_norm(cout, groups))

    def forward(self, x):
      y = torch.relu(self.norm1(self.conv1(x)))
      y = self.norm2(self.conv2(y))
      return torch.relu((x if self.proj is None else self.proj(x)) + y)

  class TorchResNetGN(nn.Module):
    """``models.detection.ResNetGN`` in PyTorch: stem 3x3/2 conv to ``widths[0] // 2``, GN,
    ReLU, 3x3/2 conv to ``widths[0]``, GN, ReLU; four stages of basic blocks (strides 1, 2,
    2, 2). ``forward(x [B, 3, H, W]) -> [level 2, 3, 4, 5 maps]`` (NCHW)."""

    def __init__(self, stage_sizes=(1, 1, 1, 1), widths=(32, 64, 128, 256), groups: int = 8):
      super().__init__()
      if len(stage_sizes) != 4 or len(widths) != 4:
        raise ValueError(f"TorchResNetGN needs 4 stage_sizes and 4 widths; found "
                         f"{tuple(stage_sizes)}, {tuple(widths)}")
      stem = max(widths[0] // 2, 1)
      self.stem = nn.Sequential(
          nn.Conv2d(3, stem, 3, 2, 1, bias=False), _group_norm(stem, groups), nn.ReLU(),
          nn.Conv2d(stem, widths[0], 3, 2, 1, bias=False), _group_norm(widths[0], groups),
          nn.ReLU())
      stages, cin = [], widths[0]
      for i, (n, width) in enumerate(zip(stage_sizes, widths)):
        blocks = []
        for j in range(n):
          blocks.append(BasicBlockGN(cin, width, 2 if i > 0 and j == 0 else 1, groups))
          cin = width
        stages.append(nn.Sequential(*blocks))
      self.stages = nn.ModuleList(stages)
      self.widths = tuple(widths)

    def forward(self, x):
      x = self.stem(x)
      out = []
      for stage in self.stages:
        x = stage(x)
        out.append(x)
      return out

  class BackboneWithFPN(nn.Module):
    """``TorchResNetGN`` then torchvision's ``FeaturePyramidNetwork`` over levels
    ``min_level..max_level`` (<= 5, no extra levels) with GroupNorm; returns
    ``OrderedDict('0': P_min, ...)`` and has ``out_channels`` (what torchvision's detectors
    need)."""

    def __init__(self, body, levels, channels: int, groups: int):
      super().__init__()
      self.body, self.levels = body, tuple(levels)
      self.fpn = FeaturePyramidNetwork(
          [body.widths[lv - 2] for lv in self.levels], channels,
          norm_layer=functools.partial(_group_norm, groups=groups))
      self.out_channels = channels

    def forward(self, x):
      feats = self.body(x)
      return self.fpn(collections.OrderedDict(
          (str(i), feats[lv - 2]) for i, lv in enumerate(self.levels)))

  return TorchResNetGN, BackboneWithFPN


def _torch_backbone(model_cfg: dict, levels):
  TorchResNetGN, BackboneWithFPN = _torch_modules()
  spec = dict(model_cfg.get("backbone") or {"name": "resnet_gn"})
  if spec.pop("name", None) != "resnet_gn":
    raise ValueError(f"the torchvision twin has only the 'resnet_gn' backbone; found "
                     f"{model_cfg.get('backbone')}")
  fpn = dict(model_cfg.get("fpn") or {})
  if fpn.get("norm") != "group":
    raise ValueError(f"the torchvision twin needs fpn norm 'group'; found {fpn.get('norm')!r}")
  if max(levels) > 5:
    raise ValueError(f"the torchvision twin has no FPN levels above 5; found {tuple(levels)}")
  body = TorchResNetGN(**spec)
  return BackboneWithFPN(body, levels, fpn.get("num_channels", 128), fpn.get("groups", 32))


def make_torch_detector(model_cfg: dict, jax_model, num_classes: int, size: int):
  """The torchvision detector with the architecture of ``jax_model`` (built from
  ``model_cfg`` by ``tasks.detection.create_model``; its fields supply the defaults the
  config leaves out). Returns a ``torch.nn.Module`` in train mode.

  FCOS: ``num_classes`` logits (labels ``0..C-1`` as ours; torchvision's FCOS has no
  background logit). Faster R-CNN: ``C + 1`` classes with 0 the background (labels are given
  ``+ 1``), so its box regressor has one more class than ours.
  """
  import torch
  from torchvision.models.detection import FCOS, FasterRCNN
  from torchvision.models.detection.anchor_utils import AnchorGenerator
  from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
  from torchvision.models.detection.fcos import (FCOSClassificationHead, FCOSHead,
                                                  FCOSRegressionHead)
  from torchvision.models.detection.rpn import RPNHead
  from torchvision.ops import MultiScaleRoIAlign

  torch.manual_seed(0)
  name = model_cfg["name"]
  common = {"min_size": size, "max_size": size, "image_mean": [0.0] * 3,
            "image_std": [1.0] * 3, "_skip_resize": True}
  m = jax_model
  if name == "FCOS":
    levels = tuple(range(m.min_level, m.max_level + 1))
    backbone = _torch_backbone(model_cfg, levels)
    c = backbone.out_channels
    if m.head_channels != c:
      raise ValueError(f"torchvision's FCOS head keeps the FPN's {c} channels; the config has "
                       f"head_channels={m.head_channels}")
    if m.size_ranges is not None or m.box_activation != "relu":
      raise ValueError("the torchvision twin needs FCOS's default size ranges and 'relu' boxes")
    norm = functools.partial(_group_norm, groups=m.head_groups)
    head = FCOSHead(c, 1, num_classes, num_convs=m.num_convs)
    # FCOSHead builds its heads with GroupNorm(32); ours have head_groups groups.
    head.classification_head = FCOSClassificationHead(
        c, 1, num_classes, m.num_convs, prior_probability=m.prior_prob, norm_layer=norm)
    head.regression_head = FCOSRegressionHead(c, 1, m.num_convs, norm_layer=norm)
    anchors = AnchorGenerator(tuple((2 ** lv,) for lv in levels), ((1.0,),) * len(levels))
    model = FCOS(backbone, num_classes, anchor_generator=anchors, head=head,
                 center_sampling_radius=m.center_sampling_radius,
                 score_thresh=m.score_threshold, nms_thresh=m.nms_iou_threshold,
                 detections_per_img=m.max_detections, topk_candidates=m.pre_nms_top_k,
                 **common)
  elif name == "FasterRCNN":
    fpn = dict(model_cfg.get("fpn") or {})
    levels = tuple(range(fpn.get("min_level", 3), fpn.get("max_level", 5) + 1))
    if m.box_max_level < max(levels) or m.rpn_anchor_sizes is None:
      raise ValueError("the torchvision twin needs explicit rpn_anchor_sizes and RoIs pooled "
                       "from every FPN level")
    backbone = _torch_backbone(model_cfg, levels)
    c = backbone.out_channels
    sizes = tuple(tuple(s) if isinstance(s, (tuple, list)) else (s,)
                  for s in m.rpn_anchor_sizes)
    ratios = tuple(m.rpn_aspect_ratios)
    ratios = (ratios if isinstance(ratios[0], (tuple, list))
              else (ratios,) * len(levels))
    anchors = AnchorGenerator(sizes, ratios)
    rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=1)
    if m.rpn_conv_dim not in (None, c):
      raise ValueError(f"torchvision's RPNHead keeps the FPN's {c} channels; the config has "
                       f"rpn_conv_dim={m.rpn_conv_dim}")
    roi_pool = MultiScaleRoIAlign([str(i) for i in range(len(levels))],
                                  output_size=m.box_roi_size, sampling_ratio=m.box_sampling_ratio)
    box_head = FastRCNNConvFCHead(
        (c, m.box_roi_size, m.box_roi_size), [m.box_conv_dim] * m.box_num_convs,
        [m.box_fc_dim] * m.box_num_fc,
        norm_layer=functools.partial(_group_norm, groups=m.box_num_groups))
    box_in = m.box_fc_dim if m.box_num_fc else m.box_conv_dim * m.box_roi_size ** 2
    predictor = FastRCNNPredictor(box_in, num_classes + 1)
    model = FasterRCNN(
        backbone, None, rpn_anchor_generator=anchors, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_k_train,
        rpn_pre_nms_top_n_test=m.rpn_pre_nms_top_k_test,
        rpn_post_nms_top_n_train=m.rpn_post_nms_top_k_train,
        rpn_post_nms_top_n_test=m.rpn_post_nms_top_k_test,
        rpn_nms_thresh=m.rpn_nms_iou_threshold, rpn_fg_iou_thresh=m.rpn_fg_iou_threshold,
        rpn_bg_iou_thresh=m.rpn_bg_iou_threshold,
        rpn_batch_size_per_image=m.rpn_batch_size_per_image,
        rpn_positive_fraction=m.rpn_positive_fraction, box_roi_pool=roi_pool,
        box_head=box_head, box_predictor=predictor, box_score_thresh=m.score_threshold,
        box_nms_thresh=m.nms_iou_threshold, box_detections_per_img=m.max_detections,
        box_fg_iou_thresh=m.box_fg_iou_threshold, box_bg_iou_thresh=m.box_bg_iou_threshold,
        box_batch_size_per_image=m.box_batch_size_per_image,
        box_positive_fraction=m.box_positive_fraction, **common)
  else:
    raise ValueError(f"no torchvision twin for detector {name!r}; expected 'FCOS' or "
                     f"'FasterRCNN'")
  return model.train()


def make_jax_model(config, num_classes: int):
  return detection.create_model(config, num_classes)


def _size(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def jax_param_counts(model, size: int) -> dict[str, int]:
  """Parameters of ``model`` by part (``backbone``, ``fpn``, ``head``: FCOS's towers and its
  per-level scales; ``rpn``, ``box_head``: Faster R-CNN) and ``total``; no compilation
  (``jax.eval_shape``)."""
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.PRNGKey(0)}, jax.numpy.zeros((1, size, size, 3)),
      train=False))["params"]
  parts = {"backbone": _size(shapes["backbone"]), "fpn": _size(shapes.get("fpn", {}))}
  if "head" in shapes:  # FCOS
    parts["head"] = _size({k: v for k, v in shapes.items() if k not in ("backbone", "fpn")})
  else:
    parts["rpn"] = _size(shapes["rpn_head"])
    parts["box_head"] = _size(shapes["box_head"])
  parts["total"] = _size(shapes)
  return parts


def torch_param_counts(model) -> dict[str, int]:
  """As :func:`jax_param_counts` for a model of :func:`make_torch_detector`."""
  count = lambda module: int(sum(p.numel() for p in module.parameters()))  # noqa: E731
  parts = {"backbone": count(model.backbone.body), "fpn": count(model.backbone.fpn)}
  if hasattr(model, "head"):  # FCOS
    parts["head"] = count(model.head)
  else:
    parts["rpn"] = count(model.rpn.head)
    parts["box_head"] = count(model.roi_heads.box_head) + count(model.roi_heads.box_predictor)
  parts["total"] = count(model)
  return parts


def expected_param_difference(model) -> dict[str, int]:
  """``jax - torch`` parameters per part that follow from the architectures alone.

  FCOS: ours has a learned scale per level (FCOS imprv; torchvision's has none), ``+L``.
  Faster R-CNN: torchvision regresses a box for the background class too (``(C + 1) * 4``
  outputs against our ``C * 4``), ``-(fc_dim + 1) * 4``. Everything else is equal.
  """
  if hasattr(model, "head_channels"):  # FCOS
    n = model.max_level - model.min_level + 1
    return {"backbone": 0, "fpn": 0, "head": n, "total": n}
  fc_in = model.box_fc_dim if model.box_num_fc else model.box_conv_dim * model.box_roi_size ** 2
  d = -(fc_in + 1) * 4
  return {"backbone": 0, "fpn": 0, "rpn": 0, "box_head": d, "total": d}


def make_torch_optimizer(model, opt_cfg: dict):
  """``training.optim.make_optimizer``'s optimizer in PyTorch: AdamW (or Adam, SGD with
  momentum) with weight decay only on tensors of 2 or more dims, at the peak learning rate
  (:class:`TorchRunner` sets each step's rate from the schedule)."""
  import torch
  fields = optim.resolve_config(opt_cfg)
  params = [p for p in model.parameters() if p.requires_grad]
  wd = fields["weight_decay"] if fields["name"] != "adam" else 0.0
  groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": wd},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
  lr = fields["learning_rate"]
  if fields["name"] in ("adamw", "adam"):
    return torch.optim.AdamW(groups, lr=lr, betas=(fields["b1"], fields["b2"]), eps=1e-8)
  if fields["name"] == "sgd":
    # optim adds the decay to the gradient for SGD: torch.optim.SGD's weight_decay does that.
    return torch.optim.SGD(groups, lr=lr, momentum=fields["momentum"] or 0.0,
                           nesterov=bool(fields["nesterov"]))
  raise ValueError(f"no PyTorch optimizer for {fields['name']!r}")


def torch_inputs(batch: dict, label_offset: int):
  """``(images, targets)`` as torchvision's detectors take them: NCHW float32 images and, per
  image, its real boxes (xyxy pixels) and int64 labels ``+ label_offset``."""
  import torch
  images = list(torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))))
  targets = []
  for boxes, labels, mask in zip(batch["boxes"], batch["labels"], batch["mask"]):
    targets.append({"boxes": torch.from_numpy(np.asarray(boxes[mask], np.float32)),
                    "labels": torch.from_numpy(labels[mask].astype(np.int64) + label_offset)})
  return images, targets


# -- Runners. -----------------------------------------------------------------------------------


class JaxRunner:
  """The task's train step on a one-device mesh, compiled ahead of time, state threaded."""
  framework = "jaxvision"

  def __init__(self, config, model, batch: dict, total_steps: int):
    self.config, self.model, self.total_steps = config, model, total_steps
    self.host_batch = {k: batch[k] for k in ("image",) + detection.TARGET_KEYS}

  def setup(self) -> dict:
    self.mesh = sharding.make_mesh(1)
    tx, _ = optim.make_optimizer(self.config.optimizer, self.total_steps)
    size = self.config.canvas_size
    self.state = state_lib.create_train_state(self.model, tx, input_shape=(size, size, 3),
                                              rng=jax.random.PRNGKey(self.config.seed),
                                              mesh=self.mesh)
    step = jit.jit_train_step(detection.make_train_step(), self.mesh,
                              onednn=detection.DetectionTask.train_onednn)
    self.compiled, compile_s = trainer.compile_step(step, self.state, self.host_batch,
                                                    self.mesh)
    self.batch = sharding.shard_batch(self.host_batch, self.mesh)
    first_s, metrics = timing.time_call(self._step)
    metrics = jax.device_get(metrics)
    return {"compile_s": compile_s, "first_step_s": first_s,
            "first_loss": float(metrics["loss"]),
            "first_loss_terms": {k[5:]: float(v) for k, v in metrics.items()
                                 if k.startswith("loss_")},
            "compiled_memory_bytes": timing.compiled_memory(self.compiled),
            "notes": "tasks.detection.make_train_step, jit.jit_train_step on a 1-device mesh "
                     "(trainer.compile_step)"}

  def _step(self):
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return metrics

  def step(self) -> float:
    return timing.time_call(self._step)[0]

  def last_loss(self) -> float:
    return float(jax.device_get(self._step()["loss"]))


class TorchRunner:
  """The torchvision twin's eager train step (forward, backward, clip, optimizer step)."""
  framework = "torchvision"

  def __init__(self, config, jax_model, batch: dict, num_classes: int, threads: int, *,
               total_steps: int, max_steps: int):
    self.config, self.jax_model, self.num_classes = config, jax_model, num_classes
    self.host_batch, self.threads = batch, threads
    self.total_steps, self.max_steps = total_steps, max_steps

  def setup(self) -> dict:
    import torch
    torch.set_num_threads(self.threads)
    model_cfg = self.config.model.to_dict()
    self.model = make_torch_detector(model_cfg, self.jax_model, self.num_classes,
                                     self.config.canvas_size)
    self.opt = make_torch_optimizer(self.model, self.config.optimizer)
    self.clip = float(optim.resolve_config(self.config.optimizer)["grad_clip_norm"])
    # The learning rate of JAX's step i (its schedule), set before step i: the same updates.
    schedule = optim.make_schedule(self.config.optimizer, self.total_steps)
    self.rates = np.asarray(schedule(np.arange(self.max_steps)), np.float64)
    self.t = 0
    offset = 1 if model_cfg["name"] == "FasterRCNN" else 0
    self.images, self.targets = torch_inputs(self.host_batch, offset)
    first_s, (loss, terms) = timing.time_call(self._step)
    return {"compile_s": None, "first_step_s": first_s, "first_loss": loss,
            "first_loss_terms": {k: float(v.detach()) for k, v in terms.items()},
            "compiled_memory_bytes": None,
            "notes": f"eager PyTorch, torch.set_num_threads({self.threads}); torchvision "
                     f"{type(self.model).__name__} with the same architecture"}

  def _step(self):
    import torch
    lr = float(self.rates[min(self.t, len(self.rates) - 1)])
    for group in self.opt.param_groups:
      group["lr"] = lr
    self.opt.zero_grad(set_to_none=True)
    terms = self.model(self.images, self.targets)
    loss = sum(terms.values())
    loss.backward()
    if self.clip > 0:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    self.t += 1
    return loss.detach().item(), terms

  def step(self) -> float:
    return timing.time_call(self._step)[0]

  def last_loss(self) -> float:
    return self._step()[0]


# -- The benchmark. -----------------------------------------------------------------------------


def bench_config(name: str, args, env) -> list[dict]:
  """Sets up and times one config with both frameworks; returns their records."""
  config = load_config(name, size=args.size, batch=args.batch)
  use_bccd = args.data == "bccd" or (args.data == "auto" and bccd_available())
  if use_bccd:
    batch, total_steps, num_classes, class_names = bccd_batch(config)
    data = "bccd-train-batch"
  else:
    batch = synthetic_batch(args.batch, args.size, max_boxes=config.max_boxes,
                            boxes_per_image=args.boxes_per_image)
    total_steps, num_classes, class_names = None, len(BCCD_CLASSES), BCCD_CLASSES
    data = f"synthetic-{args.boxes_per_image}-boxes"
  model = make_jax_model(config, num_classes)
  runners = [JaxRunner(config, model, batch, total_steps or 10_000)]
  if args.peer:
    runners.append(TorchRunner(config, model, batch, num_classes, args.torch_threads,
                               total_steps=total_steps or 10_000,
                               max_steps=args.warmup + args.iters + 2))
  infos = [r.setup() for r in runners]
  for _ in range(args.warmup):
    for r in runners:
      r.step()
  times = {r.framework: [] for r in runners}
  for i in range(args.iters):
    order = runners if i % 2 == 0 else runners[::-1]
    for r in order:
      times[r.framework].append(r.step())
  last = {r.framework: r.last_loss() for r in runners}
  counts = {"jaxvision": jax_param_counts(model, args.size)}
  if args.peer:
    counts["torchvision"] = torch_param_counts(runners[1].model)

  boxes = batch["mask"].sum(-1)
  records = []
  for r, info in zip(runners, infos):
    stats = timing.summarize(times[r.framework])
    step_s = stats["step_ms_median"] / 1e3
    rec = {
        "model": name,
        "detector": config.model.name,
        "step": "train",
        "framework": r.framework,
        "batch": args.batch,
        "input_shape": [args.size, args.size, 3],
        "data": data,
        "classes": list(class_names),
        "boxes_per_image_mean": float(boxes.mean()),
        "boxes_per_image_max": int(boxes.max()),
        "optimizer": optim.resolve_config(config.optimizer)["name"],
        "images_per_s": args.batch / step_s,
        **stats,
        "warmup_steps": args.warmup,
        "timed_steps": len(times[r.framework]),
        "compile_s": info["compile_s"],
        "first_step_s": info["first_step_s"],
        "first_loss": info["first_loss"],
        "first_loss_terms": info["first_loss_terms"],
        "last_loss": last[r.framework],
        "params": counts[r.framework]["total"],
        "params_by_part": counts[r.framework],
        "compiled_memory_bytes": info["compiled_memory_bytes"],
        "device": env["device"] if r.framework == "jaxvision" else
                  f"cpu: {env['cpu'] or 'unknown'} ({env['cpu_count']} cores), "
                  f"{args.torch_threads} torch threads",
        "notes": info["notes"],
        "versions": env["versions"],
    }
    if total_steps:
      rec["config_train_steps"] = total_steps
      rec["config_train_steps_hours"] = total_steps * step_s / 3600
    records.append(rec)
  if args.peer:
    ours, peer = records
    ours["vs_torchvision"] = ours["images_per_s"] / peer["images_per_s"]
    # Steps i of both ran one after the other, under similar load.
    ours["vs_torchvision_paired_median"] = statistics.median(
        p / j for p, j in zip(times["torchvision"], times["jaxvision"]))
    ours["param_difference"] = {k: counts["jaxvision"][k] - counts["torchvision"][k]
                                for k in counts["jaxvision"]}
    ours["param_difference_expected"] = expected_param_difference(model)
  return records


HEADER = (f"{'config':17s} {'framework':11s} {'batch':>5s} {'size':>4s} {'img/s':>7s} "
          f"{'ms/step':>9s} {'[q1 - q3]':>17s} {'compile s':>9s} {'params':>9s} "
          f"{'loss 1st':>8s} {'jax/torch':>9s}")


def format_row(r: dict) -> str:
  ratio = f"{r['vs_torchvision']:.2f}x" if r.get("vs_torchvision") else "-"
  compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
  spread = f"[{r['step_ms_q1']:.1f} - {r['step_ms_q3']:.1f}]"
  return (f"{r['model']:17s} {r['framework']:11s} {r['batch']:5d} {r['input_shape'][0]:4d} "
          f"{r['images_per_s']:7.2f} {r['step_ms_median']:9.1f} {spread:>17s} {compile_s:>9s} "
          f"{r['params']:9d} {r['first_loss']:8.3f} {ratio:>9s}")


def default_out(machine: str, size: int, batch: int) -> pathlib.Path:
  """``benchmarks/results/<machine>_<UTC date>_detection-bccd-train-s<size>-b<batch>.json``,
  ending in ``-<HHMMSS>`` (UTC) when that file exists (a repeated run of the day)."""
  now = datetime.datetime.now(datetime.timezone.utc)
  stem = f"{machine}_{now:%Y-%m-%d}_detection-bccd-train-s{size}-b{batch}"
  path = RESULTS_DIR / f"{stem}.json"
  return RESULTS_DIR / f"{stem}-{now:%H%M%S}.json" if path.exists() else path


def _csv(value: str) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.detection",
                              description=__doc__.split("\n")[0])
  p.add_argument("--configs", type=_csv, default=list(CONFIGS),
                 help=f"comma-separated, from {CONFIGS}")
  p.add_argument("--size", type=int, default=384, help="canvas size S (divisible by 32)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--iters", type=int, default=10, help="timed steps per framework")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
  p.add_argument("--data", choices=DATA, default="auto",
                 help="'bccd': a real training batch; 'synthetic': BCCD-like boxes; 'auto': "
                      "bccd when $JAXVISION_DATA_DIR/bccd/BCCD exists")
  p.add_argument("--boxes-per-image", type=int, default=20, help="synthetic data only")
  p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                 help="torch.set_num_threads (default: the machine's cores, as XLA:CPU uses)")
  p.add_argument("--no-peer", dest="peer", action="store_false",
                 help="time jaxvision alone (no torch needed)")
  p.add_argument("--machine", default=DEFAULT_MACHINE,
                 help="machine tag of the default --out file name")
  p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/"
                 "<machine>_<UTC date>_detection-bccd-train-s<size>-b<batch>[-HHMMSS].json)")
  args = p.parse_args(argv)
  bad = [c for c in args.configs if c not in CONFIGS]
  if bad or not args.configs:
    p.error(f"--configs must be from {CONFIGS}; found {args.configs}")
  for name in ("size", "batch", "iters", "torch_threads", "boxes_per_image"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1; found {getattr(args, name)}")
  if args.warmup < 0:
    p.error(f"--warmup must be >= 0; found {args.warmup}")
  if args.size % 32:
    p.error(f"--size must be divisible by 32 (the backbone's stride); found {args.size}")
  if args.data == "bccd" and not bccd_available():
    p.error(f"--data bccd needs {paths.data_root() / 'bccd' / 'BCCD'}; it does not exist")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  cpu.configure_runtime()  # Before anything creates JAX's backends.
  env = timing.environment()
  env["versions"] = timing.versions(extra=("tensorflow", "torch", "torchvision")
                                    if args.peer else ("tensorflow",))
  print(f"device: {env['device']}; torch threads {args.torch_threads if args.peer else '-'}")
  print(f"versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items() if v)}")
  print(HEADER)
  records = []
  for name in args.configs:
    new = bench_config(name, args, env)
    records += new
    for rec in new:
      print(format_row(rec), flush=True)
  print("\nSummary (img/s ratio jaxvision / torchvision: > 1 means jaxvision is faster):")
  print(HEADER)
  for rec in records:
    print(format_row(rec))
  for rec in records:
    if "param_difference" in rec:
      print(f"{rec['model']}: params jaxvision {rec['params']:,} / torchvision "
            f"{rec['params'] - rec['param_difference']['total']:,} (difference by part "
            f"{rec['param_difference']}, expected {rec['param_difference_expected']}); "
            f"paired median ratio {rec['vs_torchvision_paired_median']:.2f}x")
    if "config_train_steps_hours" in rec:
      print(f"{rec['model']} {rec['framework']}: the config's {rec['config_train_steps']} "
            f"training steps would take {rec['config_train_steps_hours']:.2f} h at the median "
            f"step (steps only)")
  out = {"command": "python -m benchmarks.detection "
                    + " ".join(sys.argv[1:] if argv is None else argv),
         "environment": env, "records": records}
  path = pathlib.Path(args.out) if args.out else default_out(args.machine, args.size,
                                                              args.batch)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print(f"wrote {len(records)} records to {path}")
  return out


if __name__ == "__main__":
  main()
