"""The detection task end to end on synthetic VOC folders (coloured rectangles on a dark
background), tiny FCOS / Faster R-CNN models.

Checked: a run's results (test split, COCO numbers, per-class entries, timings), the evaluate
and predict modes, one compilation for batches with different numbers of boxes (including
none), 1 vs 8 devices, a small overfit scored by the COCO evaluator, and bad folders."""

import json
import pathlib
import warnings

import jax
import ml_collections
import numpy as np
import PIL.Image
import pytest

from jaxvision.data import detection as det_data
from jaxvision.data.builders.voc import DetectionDataWarning
from jaxvision.tasks import detection
from jaxvision.training import sharding, trainer
from jaxvision.training import jit as jit_lib
from train.configs import common

COLOURS = {"red": (230, 40, 40), "green": (40, 220, 40)}


def write_voc(root, images, *, size=(64, 64), splits=None, classes=COLOURS):
  """A VOC folder whose objects are filled rectangles coloured by class.

  ``images``: ``{stem: [(class, xmin, ymin, xmax, ymax), ...]}``; ``size``: (H, W) of every
  image, or ``{stem: (H, W)}``.
  """
  root = pathlib.Path(root)
  for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
    (root / sub).mkdir(parents=True, exist_ok=True)
  for stem, objects in images.items():
    h, w = size[stem] if isinstance(size, dict) else size
    pixels = np.full((h, w, 3), 20, np.uint8)
    for name, x1, y1, x2, y2 in objects:
      pixels[max(y1, 0):y2, max(x1, 0):x2] = classes.get(name, (200, 200, 200))
    PIL.Image.fromarray(pixels).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin>"
        f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects)
    (root / "Annotations" / f"{stem}.xml").write_text(
        f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width>"
        f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")
  for split, stems in (splits or {s: list(images) for s in ("train", "val", "test")}).items():
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
  return root


def random_images(n, seed, *, size=64, max_objects=3, empty=()):
  rng = np.random.default_rng(seed)
  images = {}
  for i in range(n):
    objects = []
    for _ in range(0 if i in empty else int(rng.integers(1, max_objects + 1))):
      w, h = (int(v) for v in rng.integers(12, 24, 2))
      x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
      objects.append((str(rng.choice(list(COLOURS))), x, y, x + w, y + h))
    images[f"img{i:02d}"] = objects
  return images


def tiny_config(folder, *, model="FCOS", **overrides):
  c = common.detection_config()
  c.dataset = str(folder)
  c.canvas_size = 64
  c.max_boxes = 8
  c.scale_range = (1.0, 1.0)
  c.batch_size = 4
  c.eval_batch_size = 4
  c.num_train_steps = 6
  c.eval_every_steps = 6
  c.log_every_steps = 2
  c.optimizer.warmup_steps = 2
  c.disable_progress_bar = True
  c.num_draw = 2
  c.num_devices = 1
  backbone = {"name": "resnet_gn", "stage_sizes": (1, 1, 1, 1), "widths": (8, 8, 16, 16),
              "groups": 4}
  if model == "FCOS":
    c.model = ml_collections.ConfigDict({
        "name": "FCOS", "backbone": backbone, "fpn": {"num_channels": 16, "groups": 4},
        "head_channels": 16, "num_convs": 1, "head_groups": 4})
  else:
    c.model = ml_collections.ConfigDict({
        "name": "FasterRCNN", "backbone": backbone,
        "fpn": {"num_channels": 16, "groups": 4, "min_level": 3, "max_level": 5},
        "rpn_pre_nms_top_k_train": 100, "rpn_pre_nms_top_k_test": 100,
        "rpn_post_nms_top_k_train": 50, "rpn_post_nms_top_k_test": 50,
        "box_batch_size_per_image": 32, "box_fc_dim": 32})
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return write_voc(tmp_path_factory.mktemp("voc") / "shapes",
                   random_images(8, seed=0, empty=(3,)))


@pytest.fixture(autouse=True)
def _tfds_dir(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("JAXVISION_TFDS_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))


@pytest.mark.parametrize("model", ["FCOS", "FasterRCNN"])
def test_train_evaluate_predict(folder, tmp_path, model):
  config = tiny_config(folder, model=model)
  results = trainer.train(detection.DetectionTask(config), tmp_path / "run")
  ev = results["eval"]
  assert ev["split"] == "test" and ev["num_images"] == 8
  assert set(detection.COCO_KEYS + ("VOC_AP50",)) <= set(ev)
  assert set(ev["per_class"]) == {"green", "red"}
  assert all({"AP", "AP50", "VOC_AP50"} <= set(v) for v in ev["per_class"].values())
  assert ev["best_val"]["split"] == "val" and ev["checkpoint_step"] == 6
  assert results["train_seconds"] > 0 and results["steps"] == 6
  stored = json.loads((tmp_path / "run" / "results.json").read_text())
  assert stored["eval"]["VOC_AP50"] == ev["VOC_AP50"]
  assert (tmp_path / "run" / "plots" / "test_detections.png").is_file()
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
             if l]
  train = [r for r in records if r["kind"] == "train" and "loss" in r]
  assert train and all(np.isfinite(r["loss"]) for r in train)

  task = detection.DetectionTask(config)
  out = task.evaluate(tmp_path / "run", split="val")
  assert out["eval"]["split"] == "val" and (tmp_path / "run" / "eval_val.json").is_file()

  image = folder / "JPEGImages" / "img00.jpg"
  preds = task.predict(tmp_path / "run", images=[str(image)])
  assert preds[0]["file"] == str(image)
  assert pathlib.Path(preds[0]["image"]).is_file()
  for d in preds[0]["detections"]:
    x1, y1, x2, y2 = d["box"]
    assert 0 <= x1 <= x2 <= 64 and 0 <= y1 <= y2 <= 64 and d["label"] in COLOURS
  with pytest.raises(FileNotFoundError, match="not found"):
    task.predict(tmp_path / "run", images=[str(tmp_path / "missing.jpg")])


def test_one_compilation_for_any_number_of_boxes(folder):
  """Batches with 0..3 boxes per image (one batch with none at all) reuse one executable."""
  task = detection.DetectionTask(tiny_config(folder))
  task.prepare()
  mesh = sharding.make_mesh(1)
  batches = [next(task.train_batches(0))]
  empty = dict(batches[0])
  empty["boxes"] = np.zeros_like(empty["boxes"])
  empty["labels"] = np.full_like(empty["labels"], -1)
  empty["mask"] = np.zeros_like(empty["mask"])
  batches.append(empty)
  batches.extend(b for _, b in zip(range(3), task.train_batches(1)))
  assert len({int(b["mask"].sum()) for b in batches}) >= 3
  state, _ = task.create_state(batches[0], mesh, abstract=False)
  step = jit_lib.jit_train_step(task.make_train_step(), mesh)
  for batch in batches:
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    assert np.isfinite(float(metrics["loss"]))
  assert step._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.parametrize("model", ["FCOS", "FasterRCNN"])
def test_one_and_eight_devices_agree(folder, model):
  """The same steps on a 1-device and an 8-device mesh: the same losses and parameters."""
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
  task = detection.DetectionTask(tiny_config(folder, model=model, batch_size=8))
  task.prepare()
  batches = [b for _, b in zip(range(3), task.train_batches(0))]
  results = []
  for n in (1, 8):
    mesh = sharding.make_mesh(n)
    state, _ = task.create_state(batches[0], mesh, abstract=False)
    step = jit_lib.jit_train_step(task.make_train_step(), mesh)
    losses = []
    for batch in batches:
      state, metrics = step(state, sharding.shard_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
    results.append((losses, jax.device_get(state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=2e-5)
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_overfit_small_set_reaches_high_map(tmp_path):
  """8 images, trained, validated and tested on themselves: COCO AP50 and VOC mAP50 > 0.9."""
  folder = write_voc(tmp_path / "shapes", random_images(8, seed=1, max_objects=2))
  config = tiny_config(folder, num_train_steps=300, eval_every_steps=300, batch_size=8,
                       eval_batch_size=8, flip_prob=0.0)
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 20
  config.model.head_channels = 32
  config.model.num_convs = 2
  results = trainer.train(detection.DetectionTask(config), tmp_path / "run")
  assert results["eval"]["AP50"] > 0.9, results["eval"]
  assert results["eval"]["VOC_AP50"] > 0.9, results["eval"]


def test_bad_folders_are_clear_errors_or_documented(tmp_path):
  """An image without objects trains (finite loss); a box outside the image is clipped with a
  warning; an image of another size is fitted to the canvas like the others; a label outside
  the configured class list is an error naming it."""
  images = random_images(4, seed=2)
  images["img00"] = []  # no objects
  images["img01"] = [("red", 50, 50, 90, 70)]  # past the right border of a 64-wide image
  sizes = {stem: (64, 64) for stem in images}
  sizes["img02"] = (48, 80)
  folder = write_voc(tmp_path / "bad", images, size=sizes)
  config = tiny_config(folder, num_train_steps=2, eval_every_steps=2)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    results = trainer.train(detection.DetectionTask(config), tmp_path / "run")
  assert any(issubclass(w.category, DetectionDataWarning) and "img01" in str(w.message)
             for w in caught)
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
             if l]
  assert all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train" and "loss" in r)
  assert results["eval"]["num_images"] == 4

  odd = write_voc(tmp_path / "odd", {"a": [("blue", 1, 1, 20, 20)], "b": []})
  with pytest.raises(ValueError, match="blue"):
    det_data.load_detection_dataset(odd, "train", class_names=("red", "green"))

  with pytest.raises(ValueError, match="split 'validation'"):
    detection.DetectionTask(tiny_config(folder, eval_split="validation")).prepare()


def test_coco_faster_rcnn_vgg16_config_runs_on_tiny_coco(tmp_path):
  """The tutorials' architecture (VGG16 conv5_3, single-level RPN) on tiny-coco's COCO folder:
  two steps at 64 px, evaluated on its 16 images with its 80 categories (a smoke test)."""
  from tests.support import require_data
  from train.configs import coco_faster_rcnn_vgg16
  require_data("tiny-coco/small_coco")
  c = coco_faster_rcnn_vgg16.get_config()
  c.canvas_size = 64
  c.num_train_steps = 2
  c.eval_every_steps = 2
  c.num_devices = 1
  c.disable_progress_bar = True
  c.num_draw = 0
  c.model.rpn_pre_nms_top_k_train = c.model.rpn_pre_nms_top_k_test = 100
  c.model.rpn_post_nms_top_k_train = c.model.rpn_post_nms_top_k_test = 32
  c.model.box_batch_size_per_image = 16
  c.model.box_fc_dim = 64
  results = trainer.train(detection.DetectionTask(c), tmp_path / "run")
  assert results["eval"]["num_images"] == 16
  assert len(results["eval"]["per_class"]) == 80
  assert results["steps"] == 2


def test_unknown_detector_or_backbone_fails_before_any_data(tmp_path):
  c = tiny_config(tmp_path / "nowhere")
  c.model.name = "FCOSS"
  with pytest.raises(ValueError, match="config.model.name must be one of.*'FCOSS'"):
    detection.DetectionTask(c).prepare()
  c = tiny_config(tmp_path / "nowhere")
  c.model.backbone["name"] = "resnet_gm"
  with pytest.raises(ValueError, match="backbone.name must be one of.*'resnet_gm'"):
    detection.DetectionTask(c).prepare()
