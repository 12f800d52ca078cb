"""Export parity and file sizes: every format of ``jaxvision.export`` against the JAX model.

    python -m benchmarks.export_parity --out benchmarks/results/<machine>_<date>_export-parity.json

For SimpleCNN (MNIST), ResNet-18 (CIFAR stem), the row-LSTM (MNIST) and the plain DCGAN
generator (random init, the configs' sizes; ``benchmarks/export_models.py``): each is exported
to StableHLO, SavedModel, TFLite (float32 and dynamic-range int8) and ONNX, each file is loaded
and run on the same inputs at batch 1 and 8, and the largest absolute difference from the
reference (the model's own ``apply`` on TF-preprocessed images, independent of the exporter)
is recorded with the file's size. Measures only; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks import export_models, timing  # noqa: E402
from jaxvision import export  # noqa: E402

EXPORT_PACKAGES = ("tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")


def measure(name: str, out_dir: pathlib.Path, batches=(1, 8)) -> dict:
  spec, reference, inputs = export_models.MODELS[name]()
  t0 = time.perf_counter()
  summary = export.export(spec, out_dir, formats=export.ALL_FORMATS, verify=False)
  export_seconds = time.perf_counter() - t0
  record = {"model": name, "export_seconds": export_seconds, "formats": {}}
  for fmt, info in summary["files"].items():
    run = export.load(out_dir / info["path"], num_threads=2)
    diffs = []
    for batch in batches:
      x = inputs(batch, seed=batch)
      got, want = run(**x), reference(**x)
      diffs.append(max(float(np.max(np.abs(got[k].astype(np.float64) - want[k])))
                       for k in want))
    record["formats"][fmt] = {"bytes": info["bytes"], "max_abs_diff": max(diffs)}
  return record


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(export_models.MODELS))
  parser.add_argument("--out", help="JSON file for the records")
  args = parser.parse_args()
  records = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.models.split(","):
      records.append(measure(name, pathlib.Path(tmp) / name))
      print(json.dumps(records[-1]), flush=True)
  print("\n| model | " + " | ".join(export.ALL_FORMATS) + " |")
  print("|---|" + "---|" * len(export.ALL_FORMATS))
  for r in records:
    cells = [f"{r['formats'][f]['bytes'] / 1e6:.2f} MB, {r['formats'][f]['max_abs_diff']:.1e}"
             for f in export.ALL_FORMATS]
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
