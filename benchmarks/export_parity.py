"""Export parity and file sizes: every format of ``jaxvision.export`` against the JAX model.

    python -m benchmarks.export_parity --out benchmarks/results/<machine>_<date>_export-parity.json
    python -m benchmarks.export_parity --models=bccd_fcos,bccd_faster_rcnn \\
        --workdirs=bccd_fcos=runs/bccd_fcos,bccd_faster_rcnn=runs/bccd_frcnn

For SimpleCNN (MNIST), ResNet-18 (CIFAR stem), the row-LSTM (MNIST) and the plain DCGAN
generator (random init, the configs' sizes; ``benchmarks/export_models.py``): each is exported
to StableHLO, SavedModel, TFLite (float32 and dynamic-range int8) and ONNX, each file is loaded
and run on the same inputs at batch 1 and 8, and the largest absolute difference from the
reference (the model's own ``apply`` on TF-preprocessed images, independent of the exporter)
is recorded with the file's size.

The detectors, ``bccd_fcos`` and ``bccd_faster_rcnn`` (``train/configs/bccd_*.py``: 384 px
canvases), serve BCCD's 640x480 images (``image_size=(480, 640)``): the trained weights of a
workdir given in ``--workdirs`` (else random init) on BCCD's test images when the dataset is
under ``$JAXVISION_DATA_DIR`` (else random pixels). Their reference: the detection pipeline's
TF preprocessing, the detector's ``apply`` (jitted) and the boxes mapped back to the images in
float64. Recorded per format: ``same_kept_boxes`` (equal ``num_valid``, and every kept
detection matched by class, score and box, in order or, for near-tied scores, swapped),
``max_abs_diff`` over the matched boxes (pixels) and scores, and ``num_valid``.

Measures only; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import export_models, timing  # noqa: E402
from jaxvision import export  # noqa: E402

EXPORT_PACKAGES = ("tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")
BCCD_IMAGE_SIZE = (480, 640)  # (H, W) of every BCCD image


# -- The detectors. ------------------------------------------------------------------------------


def _bccd_images(batch: int, seed: int) -> np.ndarray | None:
  """``batch`` of BCCD's test images (uint8 [N, 480, 640, 3]), or None without the data."""
  import PIL.Image
  from jaxvision.data import paths
  root = paths.data_root() / "bccd" / "BCCD"
  split = root / "ImageSets" / "Main" / "test.txt"
  if not split.is_file():
    return None
  stems = [s for s in split.read_text().split() if s]
  pick = np.random.default_rng(seed).choice(len(stems), batch, replace=len(stems) < batch)
  return np.stack([np.asarray(PIL.Image.open(root / "JPEGImages" / f"{stems[i]}.jpg")
                              .convert("RGB")) for i in pick])


def _detection_reference(model, variables, canvas: int, value_range, image_size):
  """The detection task's evaluation path, apart from the exporter: TF preprocessing
  (``data.detection.preprocess_eval``), ``model.apply`` (jitted), boxes / scale in float64,
  clipped to the image."""
  import tensorflow as tf
  from jaxvision.data import detection as det_data
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  h, w = image_size

  def reference(images):
    placed = [det_data.preprocess_eval(
        {"image": tf.constant(im), "boxes": tf.zeros([0, 4]), "labels": tf.zeros([0], tf.int32),
         "image_id": tf.constant(-1, tf.int64), "original_size": tf.constant(im.shape[:2])},
        canvas_size=canvas, max_boxes=1, value_range=value_range) for im in images]
    det = apply(variables, np.stack([p["image"].numpy() for p in placed]))
    scale = np.stack([p["scale"].numpy() for p in placed]).astype(np.float64)
    boxes = np.asarray(det["boxes"], np.float64) / scale[:, None, [1, 0, 1, 0]]
    return {"boxes": np.clip(boxes, 0.0, [w, h, w, h]), "scores": np.asarray(det["scores"]),
            "classes": np.asarray(det["classes"]), "num_valid": np.asarray(det["num_valid"])}

  return reference


def detector(config_name: str, workdir: str | None):
  """``(spec, reference, inputs, source)`` of a BCCD detector config: a trained workdir's
  best checkpoint, or the config's model at random init."""
  import importlib
  from jaxvision import tasks
  from jaxvision.tasks import detection
  from jaxvision.training import trainer
  if workdir:
    config = trainer.load_config(workdir)
    config.export_image_size = BCCD_IMAGE_SIZE
    task = tasks.create_task(config)
    restored = trainer.restore(task, workdir)
    spec = task.serving(restored.state, restored.meta)
    source = f"{workdir} (step {restored.step})"
  else:
    config = importlib.import_module(f"train.configs.{config_name}").get_config()
    model = detection.create_model(config, 3)  # BCCD: RBC, WBC, Platelets
    canvas = config.canvas_size
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, canvas, canvas, 3), np.float32),
                           train=False)
    spec = export.detector_serving(model, variables, canvas_size=canvas,
                                   image_size=BCCD_IMAGE_SIZE,
                                   value_range=tuple(config.value_range), name=config.model.name)
    source = "random init"
  model = detection.create_model(config, len(spec.metadata.get("class_names") or [0] * 3))
  reference = _detection_reference(model, spec.variables, spec.metadata["canvas_size"],
                                   tuple(spec.metadata["value_range"]), BCCD_IMAGE_SIZE)

  def inputs(batch, seed):
    images = _bccd_images(batch, seed)
    if images is None:
      images = np.random.default_rng(seed).integers(
          0, 256, (batch, *BCCD_IMAGE_SIZE, 3), endpoint=True).astype(np.uint8)
    return {"images": images}

  return spec, reference, inputs, source


DETECTORS = ("bccd_fcos", "bccd_faster_rcnn")


def compare_detections(got: dict, want: dict) -> dict:
  tolerance = {k: export.PARITY_TOLERANCE * max(1.0, float(np.max(np.abs(v))))
               for k, v in want.items()}
  diffs = export._detection_diffs(got, want, tolerance)  # pylint: disable=protected-access
  same = all(d <= tolerance[k] for k, d in diffs.items())
  return {"same_kept_boxes": bool(same), "boxes": diffs["boxes"], "scores": diffs["scores"],
          "num_valid": [int(n) for n in got["num_valid"]],
          "reference_num_valid": [int(n) for n in want["num_valid"]]}


# -- Measuring. ----------------------------------------------------------------------------------


def measure(name: str, out_dir: pathlib.Path, batches=(1, 8), workdirs=None) -> dict:
  source = None
  if name in DETECTORS:
    spec, reference, inputs, source = detector(name, (workdirs or {}).get(name))
  else:
    spec, reference, inputs = export_models.MODELS[name]()
  t0 = time.perf_counter()
  summary = export.export(spec, out_dir, formats=export.ALL_FORMATS, verify=False)
  export_seconds = time.perf_counter() - t0
  record = {"model": name, "export_seconds": export_seconds, "formats": {}}
  if source is not None:
    record["weights"] = source
  cases = {batch: (inputs(batch, seed=batch), None) for batch in batches}
  cases = {batch: (x, reference(**x)) for batch, (x, _) in cases.items()}
  for fmt, info in summary["files"].items():
    run = export.load(out_dir / info["path"], num_threads=2)
    diffs, details = [], []
    for batch in batches:
      x, want = cases[batch]
      got = run(**x)
      if name in DETECTORS:
        details.append(dict(compare_detections(got, want), batch=batch))
        diffs.append(max(details[-1]["boxes"], details[-1]["scores"]))
      else:
        diffs.append(max(float(np.max(np.abs(got[k].astype(np.float64) - want[k])))
                         for k in want))
    record["formats"][fmt] = {"bytes": info["bytes"], "max_abs_diff": max(diffs)}
    if details:
      record["formats"][fmt]["same_kept_boxes"] = all(d["same_kept_boxes"] for d in details)
      record["formats"][fmt]["batches"] = details
  return record


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join([*export_models.MODELS, *DETECTORS]))
  parser.add_argument("--workdirs", default="",
                      help="trained detection workdirs: bccd_fcos=DIR,bccd_faster_rcnn=DIR")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--out", help="JSON file for the records")
  args = parser.parse_args()
  workdirs = dict(pair.split("=", 1) for pair in args.workdirs.split(",") if pair)
  batches = tuple(int(b) for b in args.batches.split(","))
  records = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.models.split(","):
      records.append(measure(name, pathlib.Path(tmp) / name, batches, workdirs))
      print(json.dumps(records[-1]), flush=True)
  print("\n| model | " + " | ".join(export.ALL_FORMATS) + " |")
  print("|---|" + "---|" * len(export.ALL_FORMATS))
  for r in records:
    cells = []
    for f in export.ALL_FORMATS:
      cell = f"{r['formats'][f]['bytes'] / 1e6:.2f} MB, {r['formats'][f]['max_abs_diff']:.1e}"
      if "same_kept_boxes" in r["formats"][f]:
        cell += ", same boxes" if r["formats"][f]["same_kept_boxes"] else ", other boxes"
      cells.append(cell)
    print(f"| {r['model']} | " + " | ".join(cells) + " |")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(
        {"command": "python -m benchmarks.export_parity " + " ".join(
            f"--{k}={v}" for k, v in vars(args).items() if v),
         "environment": dict(timing.environment(), load_average=os.getloadavg(),
                             export_versions=timing.versions(EXPORT_PACKAGES)),
         "records": records}, indent=2))


if __name__ == "__main__":
  main()
