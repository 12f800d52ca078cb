"""jaxvision.export: each format against the JAX model, fresh processes, the CLI mode.

References are computed apart from the exporter: classifiers' and detectors' inputs go through
the TF preprocessing of ``jaxvision.data`` (not the exporter's JAX version of it) and the
model's own ``apply`` (a detector's boxes mapped back to the images in NumPy float64);
generators and forecasters are run with ``apply`` on the same inputs.
"""

import importlib
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from jaxvision import export, inference, models
from jaxvision.backends import cpu
from jaxvision.data import detection as det_data
from jaxvision.data import images as image_io
from jaxvision.data import moving_mnist, paths
from jaxvision.data.builders.idx import write_idx
from jaxvision.models import detection as det_models
from jaxvision.tasks import classification, detection, sequence_prediction
from jaxvision.tasks.gan import task as gan_task
from jaxvision.training import sharding, trainer
from train.configs import digits_cnn, mnist_dcgan, moving_mnist_convlstm

REPO = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # the bound for float32 formats
FILES = {fmt: export.FILE_NAMES[fmt] for fmt in export.ALL_FORMATS}
FLOAT_FORMATS = ("stablehlo", "saved_model", "tflite", "onnx")


def _softmax64(logits):
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _jit_apply(model):
  """``model.apply(variables, *inputs, train=False)``, jitted as written (the reference)."""
  return jax.jit(lambda variables, *inputs: model.apply(variables, *inputs, train=False))


def _uint8_images(n, shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), endpoint=True).astype(
      np.uint8)


# -- The exporter's preprocessing against TF's. ---------------------------------------------------


@pytest.mark.parametrize("pp, shape", [
    ("resize(16)|value_range(0, 1)", (8, 8, 1)),                       # the digits demo
    ("resize((20, 12))|normalize(0.5, 0.25)", (32, 24, 3)),           # downsampling
    ("resize((13, 30))|value_range(-1, 1)", (9, 16, 1)),
    ("resize(11, method='nearest')|value_range(0, 1)", (7, 5, 1)),
    ("resize((3, 9), method='nearest')|value_range(0, 1)", (7, 5, 3)),
    ("resize_small(12)|center_crop(10)|normalize((0.4, 0.5, 0.6), (0.2, 0.3, 0.25))",
     (16, 20, 3)),
    ("grayscale_to_rgb|keras_imagenet('torch')", (6, 6, 1)),
    ("keras_imagenet('caffe')", (6, 6, 3)),
    ("value_range(0, 1)|resize(9)|normalize(0.1307, 0.3081)", (6, 6, 1)),  # float resize
    ("", (5, 5, 3)),
])
def test_preprocessing_matches_the_tf_ops(pp, shape):
  images = _uint8_images(3, shape, seed=len(pp))
  fn, out_shape = export.preprocessing_fn(pp, shape)
  ours = np.asarray(jax.jit(fn)(images))
  reference = image_io.preprocess_images(images, pp=pp)  # TF, image by image
  assert ours.shape == reference.shape == (3, *out_shape)
  # uint8 stages round identically (a one-level slip would be >= 1/255 * scale here).
  np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-5)


@pytest.mark.parametrize("pp, shape, message", [
    ("random_crop(8)|value_range(0, 1)", (8, 8, 1), "random_crop"),
    ("resize(16, method='bicubic')", (8, 8, 1), "bicubic"),
    ("resize(4, antialias=True)", (8, 8, 1), "antialias"),
    ("rotate(10)", (8, 8, 1), "rotate"),
    ("value_range(0, 1)", (None, None, 3), "fixed stored image shape"),
    ("value_range(0, 1, bogus=2)", (8, 8, 1), "bad arguments"),
    ("nosuchop", (8, 8, 1), "unknown preprocessing op"),
])
def test_preprocessing_the_exporter_cannot_write_is_a_clear_error(pp, shape, message):
  with pytest.raises(ValueError, match=message):
    export.preprocessing_fn(pp, shape)


# -- Tiny models exported to every format. -----------------------------------------------------


def _simple_cnn():
  model = models.create_model("SimpleCNN", num_classes=4, hidden=8)
  variables = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 1)), train=False)
  pp = "resize(16)|value_range(0, 1)"
  spec = export.classifier_serving(model, variables, image_shape=(8, 8, 1), pp=pp,
                                   class_names=list("abcd"))

  def reference(images):
    logits, _ = _jit_apply(model)(variables, image_io.preprocess_images(images, pp=pp))
    return {"logits": np.asarray(logits), "probabilities": _softmax64(logits)}

  return spec, reference, lambda n, seed: {"images": _uint8_images(n, (8, 8, 1), seed)}


def _lenet():
  # Its average pools are exported as depthwise convolutions; the reference keeps flax's.
  model = models.create_model("LeNet5", num_classes=3)
  variables = model.init(jax.random.PRNGKey(6), jnp.zeros((1, 28, 28, 1)), train=False)
  pp = "value_range(0, 1)"
  spec = export.classifier_serving(model, variables, image_shape=(28, 28, 1), pp=pp)

  def reference(images):
    logits, _ = _jit_apply(model)(variables, image_io.preprocess_images(images, pp=pp))
    return {"logits": np.asarray(logits), "probabilities": _softmax64(logits)}

  return spec, reference, lambda n, seed: {"images": _uint8_images(n, (28, 28, 1), seed)}


def _row_lstm():
  # Bidirectional: two rolled scans (a while loop each in every format).
  model = models.create_model("RowLSTMClassifier", num_classes=3, features=4, num_layers=1)
  variables = model.init(jax.random.PRNGKey(2), jnp.zeros((1, 5, 4, 1)), train=False)
  pp = "value_range(0, 1)|normalize(0.5, 0.3)"
  spec = export.classifier_serving(model, variables, image_shape=(5, 4, 1), pp=pp)

  def reference(images):
    logits, _ = _jit_apply(model)(variables, image_io.preprocess_images(images, pp=pp))
    return {"logits": np.asarray(logits), "probabilities": _softmax64(logits)}

  return spec, reference, lambda n, seed: {"images": _uint8_images(n, (5, 4, 1), seed)}


def _dcgan_generator():
  generator = models.Generator(latent_dim=6, image_shape=(16, 16, 1), base_features=4)
  variables = generator.init(jax.random.PRNGKey(3), jnp.zeros((1, 6)), train=False)
  # Non-trivial BatchNorm statistics, as a trained generator has.
  stats = jax.tree.map(lambda a: a + 0.3 * np.random.default_rng(0).random(a.shape),
                       variables["batch_stats"])
  variables = {"params": variables["params"], "batch_stats": stats}
  spec = export.generator_serving(generator, variables)

  def reference(z):
    return {"images": np.asarray(_jit_apply(generator)(variables, z))}

  return spec, reference, lambda n, seed: {
      "z": np.random.default_rng(seed).standard_normal((n, 6)).astype(np.float32)}


def _conditional_generator():
  generator = models.ConditionalGenerator(num_classes=3, latent_dim=5, image_shape=(8, 8, 1),
                                          base_features=4, embed_dim=3)
  variables = generator.init(jax.random.PRNGKey(4), jnp.zeros((1, 5)),
                             jnp.zeros((1,), jnp.int32), train=False)
  spec = export.generator_serving(generator, variables, class_names=["x", "y", "z"])

  def reference(z, labels):
    return {"images": np.asarray(_jit_apply(generator)(variables, z, labels))}

  def inputs(n, seed):
    rng = np.random.default_rng(seed)
    return {"z": rng.standard_normal((n, 5)).astype(np.float32),
            "labels": rng.integers(0, 3, n).astype(np.int32)}

  return spec, reference, inputs


def _conv_lstm():
  model = models.ConvLSTMForecaster(num_output_frames=2, stem_features=(2,),
                                    hidden_features=(2,))
  variables = model.init(jax.random.PRNGKey(5), jnp.zeros((1, 2, 4, 4, 1)), train=False)
  spec = export.sequence_serving(model, variables, input_shape=(2, 4, 4, 1))

  def reference(frames):
    logits, _ = _jit_apply(model)(variables, frames)
    return {"predicted_frames": np.asarray(jax.nn.sigmoid(logits))}

  return spec, reference, lambda n, seed: {
      "frames": np.random.default_rng(seed).random((n, 2, 4, 4, 1)).astype(np.float32)}


MODELS = {"simple_cnn": _simple_cnn, "lenet": _lenet, "row_lstm": _row_lstm,
          "dcgan": _dcgan_generator, "cgan": _conditional_generator, "conv_lstm": _conv_lstm}
# Dynamic-range int8 is an option; one model checks it.
FORMATS = {name: FLOAT_FORMATS + (("tflite_int8",) if name == "simple_cnn" else ())
           for name in MODELS}


def _export_cache(tmp_path_factory, builders, formats_of):
  """``get(name) -> (spec, reference, inputs, out, summary)``: ``builders[name]()`` exported to
  ``formats_of(name)`` once, on first use."""
  cache = {}

  def get(name):
    if name not in cache:
      spec, reference, inputs = builders[name]()
      out = tmp_path_factory.mktemp(name)
      summary = export.export(spec, out, formats=formats_of(name), verify=False)
      cache[name] = spec, reference, inputs, out, summary
    return cache[name]

  return get


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """Each tiny model in every format (written once per module, lazily)."""
  return _export_cache(tmp_path_factory, MODELS, FORMATS.__getitem__)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_format_matches_the_jax_model(exported, name):
  spec, reference, inputs, out, summary = exported(name)
  assert sorted(summary["files"]) == sorted(FORMATS[name])
  for fmt in FORMATS[name]:
    assert summary["files"][fmt]["bytes"] > 0 and (out / FILES[fmt]).exists()
    run = export.load(out / FILES[fmt])
    for batch in (1, 3) if name == "simple_cnn" else (2,):  # any batch size
      x = inputs(batch, seed=batch)
      got, want = run(**x), reference(**x)
      assert sorted(got) == sorted(spec.outputs)
      for key in want:
        assert got[key].shape == want[key].shape, (fmt, key)
        diff = np.max(np.abs(got[key].astype(np.float64) - want[key]))
        if fmt == "tflite_int8":  # int8 weights: close, not equal
          assert diff < 0.1 * max(1.0, np.max(np.abs(want[key]))), (fmt, key, diff)
        else:
          assert diff <= TOLERANCE, (fmt, key, diff)
  assert summary["inputs"] == [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype}
                               for s in spec.inputs]


def test_stablehlo_has_a_symbolic_batch_and_portable_ops(tmp_path):
  spec, reference, inputs = _simple_cnn()
  export.export_stablehlo(spec, tmp_path / "m.stablehlo")
  exported = jax.export.deserialize(bytearray((tmp_path / "m.stablehlo").read_bytes()))
  (aval,) = exported.in_avals
  assert not isinstance(aval.shape[0], int) and aval.shape[1:] == (8, 8, 1)
  assert aval.dtype == jnp.uint8 and exported.platforms == export.PLATFORMS
  text = exported.mlir_module()
  assert "stablehlo.convolution" in text and _custom_calls(text) <= {"shape_assertion"}
  for batch in (2, 5):
    x = inputs(batch, seed=batch)
    out = exported.call(**x)
    np.testing.assert_allclose(out["probabilities"], reference(**x)["probabilities"],
                               rtol=0, atol=TOLERANCE)


def _custom_calls(text):
  """Targets of the custom calls in StableHLO text (jax's own ``shape_assertion`` included)."""
  return set(re.findall(r"custom_call @(\w+)", text))


def _ops(text):
  return re.findall(r"stablehlo\.\w+", text)


def test_export_inside_the_cpu_backend_context_still_traces_portable_ops():
  spec, _, _ = _simple_cnn()
  outside = export.export_stablehlo(spec).mlir_module()
  with cpu.enabled(onednn=True):  # open in this thread; export traces in its own
    inside = export.export_stablehlo(spec).mlir_module()
    # The control: in this thread the same model does get the backend's custom calls.
    model = models.create_model("SimpleCNN", num_classes=4)
    x = jnp.zeros((2, 16, 16, 1))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    here = jax.jit(lambda x: model.apply(variables, x, train=False)[0]).lower(x).as_text()
  assert _ops(inside) == _ops(outside) and _custom_calls(inside) == {"shape_assertion"}
  if cpu.onednn.available():
    assert _custom_calls(here) - {"shape_assertion"}


FRESH_LOADER = r"""
import sys
import jax                                                 # StableHLO: jax.export
import numpy as np
import onnxruntime as ort                                  # ONNX: ONNX Runtime
import tensorflow as tf                                    # SavedModel: plain TensorFlow
from ai_edge_litert.interpreter import Interpreter         # TFLite: LiteRT
for out_dir, inputs_file in zip(sys.argv[1::2], sys.argv[2::2]):
  inputs = dict(np.load(inputs_file))
  serve = tf.saved_model.load(out_dir + "/saved_model").signatures["serving_default"]
  results = {"saved_model": {k: v.numpy() for k, v in serve(
      **{k: tf.constant(v) for k, v in inputs.items()}).items()}}
  runner = Interpreter(model_path=out_dir + "/model.tflite").get_signature_runner()
  results["tflite"] = runner(**inputs)
  session = ort.InferenceSession(out_dir + "/model.onnx", providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  results["onnx"] = dict(zip(names, session.run(names, inputs)))
  exported = jax.export.deserialize(bytearray(open(out_dir + "/model.stablehlo", "rb").read()))
  results["stablehlo"] = {k: np.asarray(v) for k, v in exported.call(**inputs).items()}
  np.savez(out_dir + "/fresh.npz", **{f"{f}/{k}": v for f, r in results.items()
                                      for k, v in r.items()})
assert not [m for m in sys.modules if m.startswith("jaxvision")], "jaxvision was imported"
print("loaded")
"""


def _fresh_env():
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  return dict(env, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


@pytest.mark.slow
def test_exports_load_in_a_fresh_process_without_jaxvision(exported, tmp_path):
  names = ("simple_cnn", "cgan")  # uint8 images; two inputs (float latents, int32 labels)
  args = []
  for name in names:
    _, _, inputs, out, _ = exported(name)
    np.savez(out / "inputs.npz", **inputs(4, seed=7))
    args += [str(out), str(out / "inputs.npz")]
  run = subprocess.run([sys.executable, "-c", FRESH_LOADER, *args], cwd=tmp_path,
                       env=_fresh_env(), capture_output=True, text=True, timeout=240)
  assert run.returncode == 0, run.stderr[-3000:]
  for name in names:
    spec, reference, inputs, out, _ = exported(name)
    got, want = np.load(out / "fresh.npz"), reference(**inputs(4, seed=7))
    for fmt in FLOAT_FORMATS:
      for key in spec.outputs:
        diff = np.max(np.abs(got[f"{fmt}/{key}"].astype(np.float64) - want[key]))
        assert diff <= TOLERANCE, (name, fmt, key, diff)


PLAIN_JAX_EXPORT = r"""
import re
import jax, jax.numpy as jnp, numpy as np
from jaxvision import models
b, = jax.export.symbolic_shape("b")
# SimpleCNN; a ResNet with the imagenet stem (max pool, BatchNorm, average pool).
for model, shape in [(models.SimpleCNN(num_classes=10), (28, 28, 1)),
                     (models.ResNet(stage_sizes=(1,), num_filters=4, num_classes=10),
                      (32, 32, 3))]:
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False)
  f = jax.jit(lambda x: model.apply(v, x, train=False)[0])
  exp = jax.export.export(f)(jax.ShapeDtypeStruct((b, *shape), jnp.float32))
  assert set(re.findall(r"custom_call @(\w+)", exp.mlir_module())) <= {"shape_assertion"}
  back = jax.export.deserialize(exp.serialize())
  for n in (1, 3) if shape[0] == 28 else (2,):
    x = np.random.default_rng(n).random((n, *shape)).astype(np.float32)
    np.testing.assert_allclose(back.call(x), f(x), rtol=0, atol=1e-5)
print("plain jax.export OK")
"""


def test_plain_jax_export_of_a_model_works_in_a_fresh_process_with_defaults(tmp_path):
  env = dict(_fresh_env(), PYTHONPATH=str(REPO))
  run = subprocess.run([sys.executable, "-c", PLAIN_JAX_EXPORT], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=240)
  assert run.returncode == 0 and "plain jax.export OK" in run.stdout, run.stderr[-3000:]


def test_unknown_formats_and_a_missing_extra_are_clear_errors(tmp_path, monkeypatch):
  spec, _, _ = _dcgan_generator()
  with pytest.raises(ValueError, match="formats must be some of"):
    export.export(spec, tmp_path, formats=("tflite", "coreml"))
  monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
  with pytest.raises(export.MissingExtraError, match=r"pip install 'jaxvision\[export\]'"):
    export.export(spec, tmp_path, formats=("onnx",))
  assert not (tmp_path / "model.onnx").exists()


# -- Workdirs: the tasks' serving functions and --mode=export. ----------------------------------


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("digits") / "run"
  c = digits_cnn.get_config()
  c.batch_size, c.eval_batch_size, c.num_train_steps, c.eval_every_steps = 32, 120, 6, 6
  c.disable_progress_bar = True
  trainer.train(classification.ClassificationTask(c), workdir)
  return workdir


@pytest.mark.slow
def test_cli_export_of_a_classification_workdir(digits_workdir, tmp_path):
  out_dir = tmp_path / "exported"
  run = subprocess.run(
      [sys.executable, "-m", "train.main", f"--workdir={digits_workdir}", "--mode=export",
       "--formats=stablehlo,onnx", f"--export_dir={out_dir}"],
      cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
      text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  printed = json.loads(run.stdout[run.stdout.index("{"):])
  assert printed == json.loads((out_dir / "export.json").read_text())
  files = printed["files"]
  assert sorted(files) == ["onnx", "stablehlo"]
  for fmt, record in files.items():
    assert record["bytes"] == (out_dir / FILES[fmt]).stat().st_size > 10_000
    assert record["max_abs_diff"] <= TOLERANCE
  assert printed["checkpoint_step"] == 6 and printed["inputs"] == [
      {"name": "images", "shape": [None, 8, 8, 1], "dtype": "uint8"}]
  assert printed["metadata"]["preprocessing"] == "resize(16)|value_range(0, 1)"
  assert printed["metadata"]["class_names"] == [str(d) for d in range(10)]
  # The exported classifier agrees with the library's own (TF preprocessing, restored state).
  images = _uint8_images(5, (8, 8, 1), seed=11)
  want = inference.load_classifier(digits_workdir).probabilities(images)
  for fmt in ("stablehlo", "onnx"):
    got = export.load(out_dir / FILES[fmt])(images=images)["probabilities"]
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_export_mode_checks_the_formats_first(tmp_path):
  task = classification.ClassificationTask(digits_cnn.get_config())
  assert "export" in task.modes
  with pytest.raises(ValueError, match="--formats must be some of"):
    task.export(tmp_path, formats=["stablehlo", "pdf"])  # before looking for a checkpoint


def _task_state(task):
  """A fresh state of ``task`` on one device, and its checkpoint meta (no training)."""
  task.prepare()
  return task.create_state(next(task.train_batches(0)), sharding.make_mesh(1), abstract=False)


@pytest.mark.slow
def test_gan_task_serves_its_sampling_generator():
  c = mnist_dcgan.get_config("plain")
  c.dataset = "digits"
  c.generator.latent_dim, c.generator.base_features, c.discriminator.base_features = 8, 4, 4
  c.batch_size, c.num_train_steps, c.standing_stats_samples = 16, 2, 64
  task = gan_task.GANTask(c)
  state, meta = _task_state(task)
  spec = task.serving(state, meta)
  assert [s.name for s in spec.inputs] == ["z"] and spec.metadata["image_shape"] == [8, 8, 1]
  # Reference: the generator the task samples with (EMA params, standing statistics).
  variables = gan_task._generator_variables(  # pylint: disable=protected-access
      task.generator, state, c)
  z = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
  want = np.asarray(_jit_apply(task.generator)(variables, z))
  got = export.export_stablehlo(spec).call(z=z)["images"]
  np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


@pytest.mark.slow
def test_a_uint8_resize_is_bit_exact_with_tf_in_every_format(tmp_path):
  """Rounding back to uint8 after interpolating makes one-ulp differences visible (a grey
  level at near-ties); every format computes TF's products, so none appears."""
  pp, shape = "resize((40, 31))|value_range(0, 1)", (17, 23, 3)
  fn, _ = export.preprocessing_fn(pp, shape)
  spec = export.ServingSpec(lambda v, x: {"pixels": fn(x)}, {}, (
      export.TensorSpec("images", (None, *shape), "uint8", 0, 255),), ("pixels",), "pp")
  export.export(spec, tmp_path, formats=FLOAT_FORMATS, verify=False)
  images = _uint8_images(16, shape, seed=3)
  reference = image_io.preprocess_images(images, pp=pp)
  for fmt in FLOAT_FORMATS:
    got = export.load(tmp_path / FILES[fmt])(images=images)["pixels"]
    np.testing.assert_array_equal(got, reference, err_msg=fmt)


@pytest.mark.slow
def test_sequence_task_serves_its_forecaster(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.TFDS_ENV_VAR, str(tmp_path / "tfds"))
  mnist = tmp_path / "mnist"
  mnist.mkdir()
  rng = np.random.default_rng(0)
  for name, n in ((moving_mnist.TRAIN_IMAGES, 6), (moving_mnist.TEST_IMAGES, 4)):
    write_idx(mnist / name, rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
  c = moving_mnist_convlstm.get_config()
  c.data.update(num_train=4, num_test=2, data_seed=0, mnist_dir=str(mnist), num_input_frames=2,
                num_frames=4, frame_size=32)
  c.model.update(stem_features=(2,), hidden_features=(2,))
  c.batch_size, c.num_train_steps = 2, 1
  task = sequence_prediction.SequencePredictionTask(c)
  state, meta = _task_state(task)
  spec = task.serving(state, meta)
  assert [(s.name, s.shape) for s in spec.inputs] == [("frames", (None, 2, 32, 32, 1))]
  frames = rng.random((3, 2, 32, 32, 1)).astype(np.float32)
  model = task._model()  # pylint: disable=protected-access
  logits, _ = _jit_apply(model)({"params": state.params}, frames)
  got = export.export_stablehlo(spec).call(frames=frames)["predicted_frames"]
  np.testing.assert_allclose(got, jax.nn.sigmoid(logits), rtol=0, atol=TOLERANCE)


# -- Detectors: FCOS and Faster R-CNN with their post-processing. -------------------------------


def _tiny_detector(name):
  backbone = {"name": "resnet_gn", "stage_sizes": (1, 1, 1, 1), "widths": (8, 8, 16, 16),
              "groups": 4}
  if name == "FCOS":
    return det_models.create_detector(
        "FCOS", num_classes=2, backbone=backbone, fpn={"num_channels": 16, "groups": 4},
        head_channels=16, num_convs=1, head_groups=4, pre_nms_top_k=40, score_threshold=0.1,
        max_detections=50)
  return det_models.create_detector(
      "FasterRCNN", num_classes=2, backbone=backbone,
      fpn={"num_channels": 16, "groups": 4, "min_level": 3, "max_level": 5},
      rpn_pre_nms_top_k_test=100, rpn_post_nms_top_k_test=50, box_fc_dim=32,
      box_pre_nms_top_k=100, max_detections=30)


def _placed(images, canvas, value_range):
  """TF's evaluation preprocessing of the detection pipeline (``data.detection``), image by
  image: ``(canvases float32 [N, S, S, 3], scales float64 [N, 2] (sy, sx))``."""
  placed = [det_data.preprocess_eval(
      {"image": tf.constant(image), "boxes": tf.zeros([0, 4]), "labels": tf.zeros([0], tf.int32),
       "image_id": tf.constant(-1, tf.int64), "original_size": tf.constant(image.shape[:2])},
      canvas_size=canvas, max_boxes=1, value_range=value_range) for image in images]
  return (np.stack([p["image"].numpy() for p in placed]),
          np.stack([p["scale"].numpy() for p in placed]).astype(np.float64))


def _detections_in_pixels(det, scales, image_size):
  """Canvas detections -> input-image pixels in float64: boxes / scale, clipped to the image
  (what the detection evaluator does)."""
  h, w = image_size
  boxes = np.asarray(det["boxes"], np.float64) / scales[:, None, [1, 0, 1, 0]]
  return {"boxes": np.clip(boxes, 0.0, [w, h, w, h]), "scores": np.asarray(det["scores"]),
          "classes": np.asarray(det["classes"]), "num_valid": np.asarray(det["num_valid"])}


# Kernels of the score and box layers scaled up after init, so that scores spread as a trained
# detector's do. At init they cluster (FCOS: 100 candidates within 4e-4 of 0.076), and two of
# them can lie closer than the formats' float error (~1e-7: other summation orders): their
# ranks then swap between formats, an ordering any float program may change, not an export
# error.
SPREAD = {"FCOS": {("head", "cls_logits"): 20.0, ("head", "centerness"): 20.0,
                   ("head", "box_pred"): 100.0},
          "FasterRCNN": {("box_head", "cls_score"): 30.0, ("rpn_head", "cls_logits"): 30.0}}


def _spread(variables, factors):
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: a * factors.get(tuple(k.key for k in path[:2]), 1.0)
      if path[-1].key == "kernel" else a, variables["params"])
  return {**variables, "params": params}


def _detector(name):
  """A tiny detector's spec, a reference independent of the exporter and inputs: FCOS on
  64x64 images (the canvas), Faster R-CNN on 48x80 ones (resized to 38x64 and padded)."""
  model = _tiny_detector(name)
  variables = _spread(model.init(jax.random.PRNGKey(7), jnp.zeros((1, 64, 64, 3)),
                                 train=False), SPREAD[name])
  size, value_range = ((64, 64), (0.0, 1.0)) if name == "FCOS" else ((48, 80), (-1.0, 1.0))
  spec = export.detector_serving(model, variables, canvas_size=64,
                                 image_size=None if name == "FCOS" else size,
                                 value_range=value_range, class_names=["red", "green"])
  apply = _jit_apply(model)

  def reference(images):
    canvases, scales = _placed(images, 64, value_range)
    return _detections_in_pixels(apply(variables, canvases), scales, size)

  return spec, reference, lambda n, seed: {"images": _uint8_images(n, (*size, 3), seed)}


DETECTORS = {"fcos": lambda: _detector("FCOS"), "faster_rcnn": lambda: _detector("FasterRCNN")}


def assert_same_detections(got, want, context=""):
  """Same kept boxes: equal ``num_valid`` and classes, scores within :data:`TOLERANCE` and
  boxes within ``TOLERANCE`` times the largest coordinate (pixels; as ``export`` verifies
  every output: TensorFlow's XLA convolves in another order, 5e-6 relative here), and the
  padding after ``num_valid`` as specified."""
  np.testing.assert_array_equal(got["num_valid"], want["num_valid"], err_msg=context)
  np.testing.assert_array_equal(got["classes"], want["classes"], err_msg=context)
  for key in ("boxes", "scores"):
    assert got[key].shape == want[key].shape, (context, key)
    diff = np.max(np.abs(got[key].astype(np.float64) - want[key]))
    assert diff <= TOLERANCE * max(1.0, np.max(np.abs(want[key]))), (context, key, diff)
  for b, n in enumerate(got["num_valid"]):
    assert np.all(got["scores"][b, n:] == -1) and np.all(got["classes"][b, n:] == -1), context
    assert np.all(got["boxes"][b, n:] == 0), context


def test_verification_allows_near_ties_to_swap_but_not_other_detections():
  ref = {"boxes": np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 9, 9], [0, 0, 0, 0]]],
                           np.float32),
         "scores": np.array([[0.9, 0.5, 0.5 - 2e-8, -1]], np.float32),
         "classes": np.array([[1, 0, 0, -1]], np.int32), "num_valid": np.array([3], np.int32)}
  tolerance = {"boxes": 3e-3, "scores": 1e-4, "classes": 1e-4, "num_valid": 1e-4}
  diffs = export._detection_diffs  # pylint: disable=protected-access
  swapped = {k: v.copy() for k, v in ref.items()}
  swapped["boxes"][0, [1, 2]] = ref["boxes"][0, [2, 1]] + 1e-3
  swapped["scores"][0, [1, 2]] = ref["scores"][0, [2, 1]]
  got = diffs(swapped, ref, tolerance)
  assert got["num_valid"] == got["classes"] == got["scores"] == 0  # matched: the same scores
  assert got["boxes"] == pytest.approx(1e-3, rel=1e-3)
  other_class = {k: v.copy() for k, v in swapped.items()}
  other_class["classes"][0, 1] = 1
  assert diffs(other_class, ref, tolerance)["boxes"] == np.inf
  one_less = {k: v.copy() for k, v in ref.items()}
  one_less["num_valid"][0] = 2
  assert diffs(one_less, ref, tolerance)["num_valid"] == np.inf
  assert diffs(ref, ref, tolerance) == {"num_valid": 0, "boxes": 0, "scores": 0, "classes": 0}


@pytest.fixture(scope="module")
def exported_detectors(tmp_path_factory):
  """Each tiny detector in the float formats (FCOS in int8 TFLite too)."""
  return _export_cache(tmp_path_factory, DETECTORS, lambda name: FLOAT_FORMATS + (
      ("tflite_int8",) if name == "fcos" else ()))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_format_keeps_the_same_boxes_as_the_jax_detector(exported_detectors, name):
  spec, reference, inputs, out, summary = exported_detectors(name)
  assert summary["outputs"] == ["boxes", "scores", "classes", "num_valid"]
  assert summary["inputs"][0]["shape"] == [None, *spec.metadata["image_size"], 3]
  cases = {batch: (inputs(batch, seed=batch), reference(**inputs(batch, seed=batch)))
           for batch in (1, 3)}
  for fmt in summary["files"]:
    run = export.load(out / FILES[fmt])
    # Any batch size; TFLite's program loops over the images (ONNX's, converted from it, too).
    for batch in (1, 3) if "tflite" in fmt or fmt == "onnx" else (3,):
      x, want = cases[batch]
      got = run(**x)
      assert 0 < want["num_valid"].min() and want["num_valid"].max() < got["scores"].shape[1]
      if fmt == "tflite_int8":  # int8 weights: other scores, so other boxes; the same layout
        assert got["boxes"].shape == want["boxes"].shape
        assert np.all(np.diff(got["scores"], axis=1) <= 0)  # decreasing, then -1 padding
        continue
      assert_same_detections(got, want, f"{name} {fmt} batch {batch}")


@pytest.mark.slow
def test_exported_detectors_load_in_a_fresh_process_without_jaxvision(exported_detectors,
                                                                       tmp_path):
  args = []
  for name in sorted(DETECTORS):
    _, _, inputs, out, _ = exported_detectors(name)
    np.savez(out / "inputs.npz", **inputs(2, seed=9))
    args += [str(out), str(out / "inputs.npz")]
  run = subprocess.run([sys.executable, "-c", FRESH_LOADER, *args], cwd=tmp_path,
                       env=_fresh_env(), capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  for name in sorted(DETECTORS):
    _, reference, inputs, out, _ = exported_detectors(name)
    got, want = np.load(out / "fresh.npz"), reference(**inputs(2, seed=9))
    for fmt in FLOAT_FORMATS:
      assert_same_detections({k: got[f"{fmt}/{k}"] for k in want}, want, f"{name} {fmt}")


@pytest.mark.parametrize("size, value_range", [
    ((64, 64), (0.0, 1.0)),     # the canvas: no resize
    ((48, 80), (0.0, 1.0)),     # wide: down to 38x64, padded below
    ((30, 20), (-1.0, 1.0)),    # small and tall: up to 64x43, padded right
    ((100, 37), (-0.5, 2.0)),
])
def test_detection_preprocessing_is_the_tf_pipeline_bit_for_bit(size, value_range):
  images = _uint8_images(3, (*size, 3), seed=size[0])
  ours = np.asarray(jax.jit(export.detection_preprocessing_fn(size, 64, value_range))(images))
  reference, _ = _placed(images, 64, value_range)
  np.testing.assert_array_equal(ours, reference)


def test_detector_serving_checks_its_arguments():
  model = _tiny_detector("FCOS")
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False)
  for kwargs, message in [
      ({"canvas_size": 0}, "canvas_size must be an integer >= 1; found 0"),
      ({"canvas_size": 64, "image_size": (48, 0)}, r"image_size must be \(H, W\)"),
      ({"canvas_size": 64, "image_size": (1, 2, 3)}, r"image_size must be \(H, W\)"),
      ({"canvas_size": 64, "value_range": (0, float("nan"))}, "value_range must be two"),
      ({"canvas_size": 60}, "divisible by 32; found 60x60"),  # the detector's own check
  ]:
    with pytest.raises(ValueError, match=message):
      export.detector_serving(model, variables, **kwargs)


def _as_tf_reads(fn):
  return export._rewritten(fn, export._TENSORFLOW_RULES)  # pylint: disable=protected-access


def _as_tflite_reads(fn):
  return export._rewritten(fn, export._TFLITE_RULES)  # pylint: disable=protected-access


def test_top_k_as_a_sort_breaks_ties_as_top_k_inside_jit_vmap_and_loops():
  x = np.random.default_rng(0).integers(0, 4, (3, 5, 12)).astype(np.float32)  # many ties
  x[0, 0, 3] = -0.0

  def fn(x):
    per_row = jax.vmap(jax.jit(lambda r: jax.lax.top_k(r, 4)))(x)
    in_loop = jax.lax.fori_loop(0, 2, lambda i, c: c + jax.lax.top_k(x[i], 3)[0], jnp.zeros(
        (5, 3)))
    return per_row, in_loop, jax.lax.top_k(jnp.swapaxes(x, 1, 2), 2)

  text = str(jax.make_jaxpr(_as_tf_reads(fn))(x))
  assert "top_k" not in text and "sort" in text
  got = jax.jit(_as_tf_reads(fn))(x)
  # Reference: NumPy's stable argsort of -x (ties: the lower index first).
  order = np.argsort(-x, axis=-1, kind="stable")
  np.testing.assert_array_equal(got[0][1], order[..., :4])
  np.testing.assert_array_equal(got[0][0], np.take_along_axis(x, order[..., :4], -1))
  sums = sum(np.sort(x[i], axis=-1)[..., ::-1][..., :3] for i in range(2))
  np.testing.assert_array_equal(got[1], sums)
  xt = np.swapaxes(x, 1, 2)
  np.testing.assert_array_equal(got[2][1], np.argsort(-xt, axis=-1, kind="stable")[..., :2])
  ints = np.array([[3, np.iinfo(np.int32).min, 7, 3, np.iinfo(np.int32).max, -1]], np.int32)
  values, index = jax.jit(_as_tf_reads(lambda v: jax.lax.top_k(v, 4)))(ints)
  np.testing.assert_array_equal(index, [[4, 2, 0, 3]])  # no overflow at the int32 limits
  np.testing.assert_array_equal(values, ints[:, [4, 2, 0, 3]])


@pytest.mark.parametrize("mode", ["fill", "clip"])
def test_single_element_scatters_as_selects_match_numpy(mode):
  rng = np.random.default_rng(1)
  operand = rng.integers(-9, 9, (4, 6)).astype(np.int32)
  index = np.array([0, 5, 7, -2], np.int32)  # 7 and -2 lie outside [0, 6)
  value = rng.integers(10, 20, 4).astype(np.int32)

  def fn(operand, index, value):
    return jax.vmap(lambda o, i, v: o.at[i].set(v, mode=mode))(operand, index, value)

  text = str(jax.make_jaxpr(_as_tflite_reads(fn))(operand, index, value))
  assert "scatter" not in text
  want = operand.copy()
  for b, (i, v) in enumerate(zip(index, value)):
    i = i + 6 if i < 0 else i  # NumPy's negative indices, then the mode
    if mode == "clip":
      want[b, np.clip(i, 0, 5)] = v
    elif i < 6:  # out of bounds: dropped
      want[b, i] = v
  np.testing.assert_array_equal(jax.jit(_as_tflite_reads(fn))(operand, index, value), want)


def test_the_div_exact_of_roi_align_becomes_a_division_for_tflite():
  roi_align = importlib.import_module("jaxvision.ops.roi_align")  # the package's roi_align
  a = np.asarray([21.0, 42.0, 1.0, 7.5, -3.0], np.float32)

  def fn(a):
    return roi_align.div_exact(a, 7), jnp.nextafter(a, jnp.inf)  # the second stays

  before = jax.make_jaxpr(fn)(a)
  after = jax.make_jaxpr(_as_tflite_reads(fn))(a)
  assert str(after).count("nextafter") == 1 < str(before).count("nextafter")
  assert "bitcast_convert_type" in str(before) and "bitcast_convert_type" not in str(after)
  exact = (a.astype(np.float64) / 7).astype(np.float32)  # correctly rounded
  # XLA multiplies by a rounded 1/7 (3.0000002): within an ulp here, exact in TFLite below.
  np.testing.assert_allclose(jax.jit(_as_tflite_reads(fn))(a)[0], exact, rtol=2e-7, atol=0)


@pytest.mark.slow
def test_tflite_and_onnx_divide_as_div_exact_does(tmp_path):
  roi_align = importlib.import_module("jaxvision.ops.roi_align")
  a = (np.arange(-40, 41, dtype=np.float32) * 3.0)[None]  # multiples of 3 and of 7 among them
  spec = export.ServingSpec(lambda v, a: {"q": roi_align.div_exact(a, 7)}, {}, (
      export.TensorSpec("a", (None, a.shape[1]), "float32"),), ("q",), "div")
  export.export(spec, tmp_path, formats=("tflite", "onnx"), verify=False)
  exact = (a.astype(np.float64) / 7).astype(np.float32)
  for fmt in ("tflite", "onnx"):
    np.testing.assert_array_equal(export.load(tmp_path / FILES[fmt])(a=a)["q"], exact, fmt)


@pytest.mark.slow
def test_a_detectors_tensorflow_savedmodel_is_no_tflite_program_and_says_which_op(tmp_path):
  spec, _, _ = _detector("FCOS")
  export.to_saved_model(spec, tmp_path / "saved")
  with pytest.raises(export.UnsupportedOpError,
                     match=r"^TFLite cannot convert .*: op [\w.]+ .*for_tflite=True"):
    export.to_tflite(tmp_path / "saved", tmp_path / "m.tflite")


@pytest.mark.slow
def test_cli_export_of_a_detection_workdir(tmp_path):
  from tests.tasks.test_detection import random_images, tiny_config, write_voc
  folder = write_voc(tmp_path / "shapes", random_images(4, seed=3))
  config = tiny_config(folder, num_train_steps=2, eval_every_steps=2, num_draw=0)
  config.export_image_size = (48, 80)
  workdir = tmp_path / "run"
  trainer.train(detection.DetectionTask(config), workdir)
  out_dir = tmp_path / "exported"
  run = subprocess.run(
      [sys.executable, "-m", "train.main", f"--workdir={workdir}", "--mode=export",
       "--formats=stablehlo,tflite", f"--export_dir={out_dir}", "--checkpoint=latest"],
      cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
      text=True, timeout=400)
  assert run.returncode == 0, run.stderr[-3000:]
  printed = json.loads(run.stdout[run.stdout.index("{"):])
  assert printed == json.loads((out_dir / "export.json").read_text())
  assert printed["checkpoint_step"] == 2 and sorted(printed["files"]) == ["stablehlo", "tflite"]
  assert printed["inputs"] == [{"name": "images", "shape": [None, 48, 80, 3], "dtype": "uint8"}]
  assert printed["metadata"]["class_names"] == ["green", "red"]
  assert all(r["max_abs_diff"] <= TOLERANCE for r in printed["files"].values())
  # The exported detector against the task's own: its restored state, the TF pipeline's
  # preprocessing, predict_step, boxes mapped back to the images.
  task = detection.DetectionTask(trainer.load_config(workdir))
  restored = trainer.restore(task, workdir, "latest")
  images = _uint8_images(3, (48, 80, 3), seed=5)
  canvases, scales = _placed(images, 64, tuple(config.value_range))
  want = _detections_in_pixels(jax.jit(detection.predict_step)(
      restored.state, {"image": canvases}), scales, (48, 80))
  for fmt in ("stablehlo", "tflite"):
    got = export.load(out_dir / FILES[fmt])(images=images)
    assert_same_detections(got, want, fmt)
