"""Inference latency of ResNet-18 (CIFAR stem, 32x32x3, 10 classes) in each exported format.

  python -m benchmarks.export_latency --out benchmarks/results/<machine>_<date>_export-latency.json
  python -m benchmarks.export_latency --model=bccd_fcos --workdir=runs/bccd_fcos --batches=1,8

``--model`` picks ResNet-18 (default) or a BCCD detector of ``benchmarks/export_parity.py``
(``bccd_fcos``, ``bccd_faster_rcnn``: 640x480 uint8 images in, padded detections out; the
trained weights of ``--workdir``, else random init). A detector's TFLite and ONNX programs run
the images of a batch one at a time (see ``jaxvision.export``).

One process, one machine. The serving function (uint8 images in, the config's evaluation
preprocessing and the model inside, logits and probabilities out; random init) is run as

* ``jax``: ``jax.jit`` of it (JAX's default portable path: XLA's convolutions);
* ``stablehlo``: the exported ``model.stablehlo`` after ``jax.export.deserialize``;
* ``saved_model``: the SavedModel's ``serving_default`` signature in TensorFlow;
* ``tflite``: the float32 TFLite file (LiteRT, ``--threads`` threads);
* ``onnx``: ``model.onnx`` in ONNX Runtime (CPU provider, ``--threads`` intra-op threads)

at each ``--batches`` size: one warm-up call each (compiles, excluded), then ``--rounds``
rounds, each timing one call of every format in a shuffled order (interleaved, so a change of
the machine's load touches every format alike); the median (and the fastest) call per format
is reported. Measures only.
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

from benchmarks import export_models, export_parity, timing  # noqa: E402
from jaxvision import export  # noqa: E402

EXPORT_PACKAGES = ("tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")

FORMATS = ("jax", "stablehlo", "saved_model", "tflite", "onnx")


def runners(spec, out_dir: pathlib.Path, threads: int) -> dict:
  """``{format: run(**inputs) -> dict of NumPy arrays}`` (each synchronises its outputs)."""
  export.export(spec, out_dir, formats=("stablehlo", "saved_model", "tflite", "onnx"),
                verify=False)
  fn = jax.jit(spec.fn)
  names = [s.name for s in spec.inputs]
  variables = jax.device_put(spec.variables)  # once, as a served model keeps its weights
  out = {"jax": lambda **x: jax.tree.map(np.asarray, fn(variables, *(x[n] for n in names)))}
  for fmt in ("stablehlo", "saved_model", "tflite"):
    out[fmt] = export.load(out_dir / export.FILE_NAMES[fmt], num_threads=threads)
  # ONNX Runtime's threads spin between runs by default, which on 2 shared cores would slow
  # whichever format runs next; turned off here (a latency-only server would leave it on).
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  session = ort.InferenceSession(str(out_dir / export.FILE_NAMES["onnx"]), options,
                                 providers=["CPUExecutionProvider"])
  outputs = [o.name for o in session.get_outputs()]
  out["onnx"] = lambda **x: dict(zip(outputs, session.run(outputs, x)))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="resnet18_cifar",
                      choices=("resnet18_cifar", *export_parity.DETECTORS))
  parser.add_argument("--workdir", help="a trained workdir of the --model detector")
  parser.add_argument("--batches", default="1,32")
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--out", help="JSON file for the records")
  args = parser.parse_args()
  if args.model in export_parity.DETECTORS:
    spec, reference, inputs, _ = export_parity.detector(
        args.model, args.workdir)

    def difference(got, want):
      found = export_parity.compare_detections(got, want)
      return max(found["boxes"], found["scores"])
  else:
    spec, reference, inputs = export_models.resnet18_cifar()

    def difference(got, want):
      return max(float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) for k in want)
  records = []
  with tempfile.TemporaryDirectory() as tmp:
    run = runners(spec, pathlib.Path(tmp), args.threads)
    sizes = {f: _size(pathlib.Path(tmp) / export.FILE_NAMES[f]) for f in FORMATS[1:]}
    for batch in map(int, args.batches.split(",")):
      x = inputs(batch, seed=batch)
      want = reference(**x)
      times = {f: [] for f in FORMATS}
      record = {"batch": batch, "warmup_seconds": {}, "max_abs_diff": {}}
      for f in FORMATS:
        t0 = time.perf_counter()
        got = run[f](**x)
        record["warmup_seconds"][f] = time.perf_counter() - t0
        record["max_abs_diff"][f] = difference(got, want)
      order = list(FORMATS)
      shuffle = np.random.default_rng(batch)
      for _ in range(args.rounds):
        shuffle.shuffle(order)  # no format always runs right after the same other one
        for f in order:
          t0 = time.perf_counter()
          run[f](**x)
          times[f].append(time.perf_counter() - t0)
      record["ms"] = {f: timing.summarize(times[f]) for f in FORMATS}
      records.append(record)
      print(json.dumps({"batch": batch, **{f: round(record["ms"][f]["step_ms_median"], 2)
                                           for f in FORMATS}}), flush=True)
  print("\n| batch | " + " | ".join(FORMATS) + " |")
  print("|---|" + "---|" * len(FORMATS))
  for r in records:  # median (fastest)
    print(f"| {r['batch']} | " + " | ".join(
        f"{r['ms'][f]['step_ms_median']:.1f} ({r['ms'][f]['step_ms_min']:.1f}) ms"
        for f in FORMATS) + " |")
  print("file bytes:", json.dumps(sizes))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(
        {"command": "python -m benchmarks.export_latency " + " ".join(
            f"--{k}={v}" for k, v in vars(args).items() if v),
         "environment": dict(timing.environment(), load_average=os.getloadavg(),
                             export_versions=timing.versions(EXPORT_PACKAGES)),
         "file_bytes": sizes, "records": records}, indent=2))


def _size(path: pathlib.Path) -> int:
  if path.is_dir():
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
  return path.stat().st_size


if __name__ == "__main__":
  main()
