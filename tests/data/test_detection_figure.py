"""Real data through the detection pipeline, and the ground-truth figure in docs/.

Regenerate the committed figure with::

  python tests/data/test_detection_figure.py docs/detection_gt_boxes.png
"""

import pathlib
import sys
import tempfile
import warnings

import numpy as np
import pytest

if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from jaxvision.data import detection as det  # noqa: E402
from jaxvision.data import paths  # noqa: E402

CANVAS = 256
DATASETS = (("bccd/BCCD", "val"), ("tiny-coco/small_coco", "train"))


def pipeline_batches(name, split, data_dir, *, n=4):
  """(eval batch of n, train batch of n, DetectionInfo, raw examples) for one dataset."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", det.DetectionDataWarning)  # BCCD's 2 zero-area boxes
    ds, info = det.load_detection_dataset(paths.local_dataset_dir(name), split,
                                          data_dir=data_dir)
  ds = ds.take(n)
  common = dict(canvas_size=CANVAS, max_boxes=64, batch_size=n)
  (eval_batch,) = list(det.make_detection_pipeline(ds, train=False, **common).as_numpy_iterator())
  train_batch = next(det.make_detection_pipeline(ds, train=True, seed=1, shuffle_buffer=1,
                                                 **common).as_numpy_iterator())
  return eval_batch, train_batch, info, list(ds.as_numpy_iterator())


def all_batches(data_dir):
  return {name: pipeline_batches(name, split, data_dir) for name, split in DATASETS}


def render_gt_figure(path, batches):
  """Draws ground-truth boxes of BCCD and tiny-coco batches (eval and augmented) to ``path``.

  The PNG is saved with an adaptive 128-colour palette to stay well under 300 KB.
  """
  import io

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import PIL.Image

  fig, axes = plt.subplots(len(batches), 4, figsize=(12, 3.2 * len(batches)), dpi=90)
  for row, (name, (eval_batch, train_batch, info, _)) in zip(axes, batches.items()):
    panels = [(eval_batch, i, "eval") for i in range(2)]
    panels += [(train_batch, i, "train") for i in range(2)]
    for ax, (batch, i, kind) in zip(row, panels):
      ax.imshow(np.clip(batch["image"][i], 0, 1), extent=(0, CANVAS, CANVAS, 0))
      for (x1, y1, x2, y2), label in zip(batch["boxes"][i][batch["mask"][i]],
                                         batch["labels"][i][batch["mask"][i]]):
        color = plt.cm.tab10(label % 10)
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec=color))
        ax.text(x1, y1, info.class_names[label], color=color, fontsize=5, va="bottom")
      extra = ""
      if kind == "train":  # jitter = scale relative to fitting the longer side to the canvas
        jitter = batch["scale"][i][1] * batch["original_size"][i].max() / CANVAS
        extra = (f" flip={bool(batch['flipped'][i])} x{jitter:.2f}"
                 f" crop(y,x)={tuple(int(v) for v in batch['offset'][i])}")
      ax.set_title(f"{name.split('/')[0]} {batch['image_id'][i]} {kind}{extra}", fontsize=7)
      ax.set_xlim(0, CANVAS)
      ax.set_ylim(CANVAS, 0)
      ax.axis("off")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  plt.close(fig)
  image = PIL.Image.open(buffer).convert("RGB")
  image.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=128).save(path, optimize=True)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
  from tests.support import require_data  # tests/conftest.py: skips (fails in CI) without the data
  for name, _ in DATASETS:
    require_data(name)
  return all_batches(tmp_path_factory.getbasetemp() / "jaxvision_tfds")  # shared dir


@pytest.mark.parametrize("name", [name for name, _ in DATASETS])
def test_real_batches_map_back_to_the_tfds_boxes(batches, name):
  eval_batch, train_batch, info, raw = batches[name]
  original = det.to_original_boxes(eval_batch["boxes"], eval_batch["scale"])
  for i, ex in enumerate(raw):
    h, w = ex["image"].shape[:2]
    keep = ~ex["objects"].get("is_crowd", np.zeros(len(ex["objects"]["label"]), bool))
    ref = ex["objects"]["bbox"][keep].astype(np.float64)[:, [1, 0, 3, 2]] * [w, h, w, h]
    n = len(ref)
    assert eval_batch["mask"][i].sum() == n and eval_batch["image_id"][i] == ex["image/id"]
    np.testing.assert_allclose(original[i][:n], ref, atol=1e-2)
    np.testing.assert_array_equal(eval_batch["labels"][i][:n], ex["objects"]["label"][keep])
  for batch in (eval_batch, train_batch):
    boxes, mask = batch["boxes"], batch["mask"]
    assert batch["image"].shape == (4, CANVAS, CANVAS, 3)
    assert np.all(boxes[mask] >= 0) and np.all(boxes[mask] <= CANVAS)
    assert np.all(boxes[mask][:, 2:] > boxes[mask][:, :2])
    assert np.all((batch["labels"][mask] >= 0) & (batch["labels"][mask] < info.num_classes))
    assert np.all(batch["labels"][~mask] == -1) and np.all(boxes[~mask] == 0)


def test_figure_renders_small_png(batches, tmp_path):
  out = tmp_path / "gt.png"
  render_gt_figure(out, batches)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert 10_000 < out.stat().st_size < 300_000


if __name__ == "__main__":
  target = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docs/detection_gt_boxes.png")
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    render_gt_figure(target, all_batches(pathlib.Path(tmp)))
  print(f"wrote {target} ({target.stat().st_size} bytes)")
