"""What ``python -m train.main`` prints: a normal run off a terminal prints our lines only (no
TensorFlow banner, no TFDS download banner or config repr, no progress bars or escape codes,
nothing twice); ``--help`` and ``--list`` list what exists; ``--images`` takes file names with
commas; turning TensorFlow's oneDNN kernels off leaves the preprocessing bit-identical."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from jaxvision import data, models, tasks
from jaxvision.models import detection
from tests.support import REPO, run_cli

NOISE = ["oneDNN", "absl::InitializeLog", "cpu_feature_guard", "Downloading and preparing",
         "downloaded and prepared", "Using custom data configuration", "FolderConfig(",
         "Generating", "Shuffling", "examples/s", "\x1b[", "\r", "Traceback", "WARNING",
         "did not provide metrics"]


@pytest.mark.slow
def test_the_demo_prints_our_lines_only(digits_demo_run):
  workdir, tfds_dir, out = digits_demo_run
  text = out.stdout + out.stderr
  for noise in NOISE:
    assert noise not in text, (noise, text)
  assert out.stderr == ""
  lines = out.stdout.splitlines()
  assert len(lines) == len(set(lines))  # nothing twice
  patterns = [rf"Preparing records \(first use only\): {re.escape(str(tfds_dir))}/"
              r"jaxvision_digits/1\.0\.0",
              r"\[train\] step 2/2: loss \d+\.\d{4} accuracy \d\.\d{4} \([\d,.]+ images_per_s\)",
              r"\[eval\] step 2: test accuracy \d\.\d{4} loss \d+\.\d{4} macro-F1 \d\.\d{4} "
              r"\(360 examples\)",
              r"Done: 2 steps in .*",
              rf"Results in {re.escape(str(workdir))}: results\.json, metrics\.jsonl, "
              r"tensorboard/, plots/, checkpoints/"]
  assert len(lines) == len(patterns), lines
  for line, pattern in zip(lines, patterns):
    assert re.fullmatch(pattern, line), (pattern, line)


@pytest.mark.slow
def test_predict_takes_file_names_with_commas_and_repeated_flags(digits_demo_run, tmp_path):
  workdir, tfds_dir, _ = digits_demo_run
  names = [tmp_path / "a,b.png", tmp_path / "c.png", tmp_path / "d.png"]
  for i, name in enumerate(names):
    PIL.Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(name)
  escaped = str(names[0]).replace(",", "\\,")
  out = run_cli(f"--workdir={workdir}", "--mode=predict", f"--images={escaped},{names[1]}",
                f"--images={names[2]}", "--top_k=1", tfds_dir=tfds_dir)
  assert out.returncode == 0, out.stderr[-3000:]
  records = json.loads(out.stdout[out.stdout.index("["):])
  assert [r["file"] for r in records] == [str(n) for n in names]
  assert all(len(r["top_k"]) == 1 for r in records)


@pytest.mark.slow
def test_list_and_help_name_the_configs_tasks_datasets_and_models(tmp_path):
  configs = sorted(p.stem for p in (REPO / "train" / "configs").glob("*.py")
                   if p.stem not in ("__init__", "common"))
  listed = run_cli("--list", tfds_dir=tmp_path / "tfds")
  assert listed.returncode == 0 and listed.stderr == "", listed.stderr
  helped = run_cli("--help", tfds_dir=tmp_path / "tfds")
  assert "USAGE" in helped.stdout or "--workdir" in helped.stdout
  for out in (listed.stdout, helped.stdout):
    shown = re.findall(r"^  (\w+) {2,}", out, flags=re.M)
    assert shown == configs
    assert f"Tasks (config.task): {', '.join(tasks.registered_tasks())}" in out
    # The package's datasets (another test of this process may have registered more).
    line = next(l for l in out.splitlines() if l.startswith("Datasets (config.dataset): "))
    shown_datasets = line.split(": ", 1)[1].split("; ")[0].split(", ")
    assert set(shown_datasets) <= set(data.registered_datasets())
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "idx:<folder>",
            "imagefolder:<path>"} <= set(shown_datasets)
    assert f"classification: {', '.join(sorted(models.MODELS))}" in out
    assert f"detection: {', '.join(sorted(detection.DETECTORS))}" in out
  assert not (tmp_path / "tfds").exists()


# Every pp spec of the configs (and a few more ops), the detection preprocessing and JPEG
# decoding, hashed; run with TensorFlow's oneDNN kernels on and off.
_PIPELINE_HASH = r"""
import hashlib, io
import numpy as np
import tensorflow as tf
from PIL import Image
from jaxvision.data import detection, preprocess

h = hashlib.sha256()
rng = np.random.default_rng(0)
specs = {
    (8, 8, 1): ["resize(16)|random_crop(16, pad=1)|rotate(8)|value_range(0, 1)",
                "resize(16)|value_range(0, 1)"],
    (28, 28, 1): ["random_crop(28, pad=2)|rotate(10)|value_range(0, 1)|normalize(0.1307, 0.3081)",
                  "random_crop(28, pad=2)|flip_lr|value_range(0, 1)|normalize(0.2860, 0.3530)"],
    (32, 32, 3): ["random_crop(32, pad=4)|flip_lr|value_range(0, 1)|"
                  "normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))",
                  "random_crop(32, pad=4)|flip_lr|resize(112)|value_range(-1, 1)",
                  "resize(224, antialias=True)|keras_imagenet('caffe')",
                  "resize_small(40)|center_crop(32)|keras_imagenet('torch')",
                  "resize(50, method='bicubic')|value_range(-1, 1)"],
}
for shape, pps in specs.items():
  images = rng.integers(0, 256, (8,) + shape, dtype=np.uint8)
  for spec in pps:
    fn = preprocess.parse(spec)
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(8)})
    ds = ds.enumerate().map(lambda i, f: fn(f, tf.stack([i, tf.constant(7, tf.int64)])))
    for example in ds.batch(8):
      h.update(example["image"].numpy().tobytes())
for k in range(3):
  height, width = (int(v) for v in rng.integers(100, 300, 2))
  features = {"image": tf.constant(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
              "boxes": tf.constant([[10, 20, 80, 90], [0, 0, width / 2, height / 3]], tf.float32),
              "labels": tf.constant([1, 2], tf.int32), "image_id": tf.constant(k, tf.int64),
              "original_size": tf.constant([height, width], tf.int32)}
  train = detection.preprocess_train(features, tf.constant([k, 3], tf.int64), canvas_size=128)
  test = detection.preprocess_eval(features, canvas_size=128)
  for out in (train, test):
    for key in sorted(out):
      h.update(np.asarray(out[key]).tobytes())
buf = io.BytesIO()
Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
h.update(tf.image.resize(tf.io.decode_jpeg(buf.getvalue()), (33, 45)).numpy().tobytes())
print(h.hexdigest())
"""


@pytest.mark.slow
def test_onednn_off_leaves_the_preprocessing_bit_identical():
  """train/main.py turns TensorFlow's oneDNN kernels off (they print a banner twice): the
  input pipelines must not change."""
  digests = []
  for flag in ("1", "0"):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", _PIPELINE_HASH], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("oneDNN custom operations are on" in out.stderr) == (flag == "1")
    digests.append(out.stdout.strip())
  assert len(digests[0]) == 64 and digests[0] == digests[1]
