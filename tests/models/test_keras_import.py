"""Keras Applications importer: our VGG16/ResNet50 with imported weights against Keras itself.

No ImageNet ``.h5`` can be downloaded here, so each test builds the Keras model with
``weights=None``, gives it random weights (and random BatchNorm moving statistics), saves them,
imports the file and compares outputs on the same images, each model after its own
preprocessing (Keras: ``preprocess_input``; ours: ``keras_preprocess_spec``).

File layouts: Keras 3's ``save_weights("x.weights.h5")``; the legacy layout of the files
``keras.applications`` downloads, which Keras 3 no longer writes (``save_weights`` insists on
``.weights.h5``), reproduced with h5py as Keras 2's ``save_weights_to_hdf5_group`` wrote it
(root attributes ``layer_names``, ``backend``, ``keras_version``; one group per layer with
attribute ``weight_names`` = ``<layer>/<variable>:0``; datasets at
``<layer>/<layer>/<variable>:0``);
and Keras 3's legacy whole-model ``model.save("x.h5")`` (weights under ``model_weights/``).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import models
from jaxvision.models import keras_import

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

# Keras's TensorFlow backend converts with np.array(x, copy=False) (NumPy 2 deprecation).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras.*")

ATOL = 1e-4  # max abs difference on logits (issue 18)
SHAPES = {"VGG16": (32, 32, 3), "ResNet50": (64, 64, 3)}
PREPROCESS = {"VGG16": "vgg16", "ResNet50": "resnet50"}


def _randomize(kmodel, seed):
  """Random He-scaled kernels, small biases, BatchNorm gamma/beta/mean/var all non-trivial;
  the first conv is scaled down for the 0-255 inputs of 'caffe' preprocessing."""
  rng = np.random.default_rng(seed)
  first = True
  for layer in kmodel.layers:
    values = []
    for w in layer.weights:
      shape, short = tuple(w.shape), w.name
      if short == "kernel":
        v = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        if first:
          v, first = v / 64.0, False
      elif short == "gamma":
        v = rng.uniform(0.3, 0.8, shape)
      elif short == "moving_variance":
        v = rng.uniform(0.5, 2.0, shape)
      else:  # bias, beta, moving_mean
        v = rng.normal(scale=0.1, size=shape)
      values.append(v.astype(np.float32))
    if values:
      layer.set_weights(values)


def _save_legacy_h5(kmodel, path):
  """Writes ``kmodel``'s weights in Keras 2's HDF5 layout (see the module docstring)."""
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [layer.name.encode("utf8") for layer in kmodel.layers]
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.2.4"
    for layer in kmodel.layers:
      group = f.create_group(layer.name)
      names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
      group.attrs["weight_names"] = [n.encode("utf8") for n in names]
      for n, w in zip(names, layer.weights):
        group.create_dataset(n, data=np.asarray(w.numpy(), np.float32))


class Reference:
  """A Keras model with random weights, saved in every layout, and its outputs on random images."""

  def __init__(self, name, include_top, directory, seed=0):
    self.name, self.include_top = name, include_top
    shape = SHAPES[name]
    fn = getattr(keras.applications, name)
    kwargs = dict(classes=10, classifier_activation=None) if include_top else {}
    self.kmodel = fn(weights=None, include_top=include_top, input_shape=shape, **kwargs)
    _randomize(self.kmodel, seed)
    tag = f"{name}_{'top' if include_top else 'notop'}"
    self.paths = {"legacy": str(directory / f"{tag}.h5"),
                  "keras3": str(directory / f"{tag}.weights.h5"),
                  "keras3_model_h5": str(directory / f"{tag}_model.h5")}
    _save_legacy_h5(self.kmodel, self.paths["legacy"])
    self.kmodel.save_weights(self.paths["keras3"])
    self.kmodel.save(self.paths["keras3_model_h5"])
    # Images with values in [0, 255], as both preprocessings expect.
    self.images = np.random.default_rng(seed + 1).uniform(0, 255, (2, *shape)).astype(np.float32)
    pre = getattr(keras.applications, PREPROCESS[name]).preprocess_input
    self.expected = np.asarray(self.kmodel(pre(self.images.copy())))

  def ours(self, variables, model):
    """Our model's outputs on the images after ``keras_preprocess_spec``."""
    from jaxvision.data import preprocess
    pp = preprocess.parse(models.keras_preprocess_spec(self.name))
    x = np.stack([np.asarray(preprocess.apply_eval(pp, {"image": im})["image"])
                  for im in self.images])
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x))


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
  cache = {}

  def get(name, include_top):
    if (name, include_top) not in cache:
      cache[name, include_top] = Reference(name, include_top, tmp_path_factory.mktemp(name))
    return cache[name, include_top]

  return get


def _check_top(ref, path):
  model, variables = models.from_keras(ref.name, path, input_shape=SHAPES[ref.name],
                                       num_classes=10)
  logits, _ = ref.ours(variables, model)
  assert logits.shape == ref.expected.shape == (2, 10)
  assert np.abs(ref.expected).max() > 0.5  # a function worth comparing
  np.testing.assert_allclose(np.asarray(logits), ref.expected, rtol=0, atol=ATOL)


def _check_notop(ref, fmt, feature_key):
  model, variables = models.from_keras(ref.name, ref.paths[fmt], input_shape=SHAPES[ref.name],
                                       num_classes=None)
  first, out = ref.ours(variables, model)
  assert np.abs(ref.expected).max() > 0.5
  np.testing.assert_allclose(np.asarray(out[feature_key]), ref.expected, rtol=0, atol=ATOL)
  return first


@pytest.mark.parametrize("fmt", ["legacy", "keras3", "keras3_model_h5"])
def test_vgg16_logits_match_keras(refs, fmt):
  ref = refs("VGG16", True)
  _check_top(ref, ref.paths[fmt])


@pytest.mark.parametrize("fmt", ["legacy", "keras3"])
def test_vgg16_notop_features_match_keras(refs, fmt):
  ref = refs("VGG16", False)
  first = _check_notop(ref, fmt, "features")
  # Head-less: the first output is the flattened map (NHWC order, as Keras's Flatten).
  np.testing.assert_allclose(np.asarray(first), ref.expected.reshape(2, -1), rtol=0, atol=ATOL)


@pytest.mark.parametrize("fmt", ["legacy", "keras3"])
def test_resnet50_logits_match_keras(refs, fmt):
  ref = refs("ResNet50", True)
  _check_top(ref, ref.paths[fmt])


@pytest.mark.slow
def test_resnet50_notop_features_match_keras(refs):
  ref = refs("ResNet50", False)
  first = _check_notop(ref, "legacy", "stage_4")
  np.testing.assert_allclose(np.asarray(first), ref.expected.mean(axis=(1, 2)), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_keras3_file_without_layer_names_is_matched_by_order(refs, tmp_path):
  """A Keras 3 file without the layers' name attributes: groups conv2d, conv2d_1, ..."""
  ref = refs("ResNet50", True)
  path = tmp_path / "unnamed.weights.h5"
  shutil.copy(ref.paths["keras3"], path)
  with h5py.File(path, "r+") as f:
    for group in f["layers"].values():
      if "vars" in group and "name" in group["vars"].attrs:
        del group["vars"].attrs["name"]
  _check_top(ref, str(path))


@pytest.mark.parametrize("name", ["VGG16", "ResNet50"])
def test_layer_order_is_keras_order(refs, name):
  ref = refs(name, True)
  assert [l[0] for l in keras_import.keras_layers(name)] == [
      layer.name for layer in ref.kmodel.layers if layer.weights]


def test_fresh_head_when_num_classes_differs(refs, capsys):
  ref = refs("VGG16", True)
  model, variables = models.from_keras("VGG16", ref.paths["keras3"], input_shape=(32, 32, 3),
                                       num_classes=5)
  assert "freshly initialised: Dense_2/bias, Dense_2/kernel\n" in capsys.readouterr().out
  logits, out = ref.ours(variables, model)
  assert logits.shape == (2, 5)
  # fc1 and fc2 came from the file: pre_logits is Keras's fc2 output.
  fc2 = keras.Model(ref.kmodel.input, ref.kmodel.get_layer("fc2").output)
  pre = keras.applications.vgg16.preprocess_input(ref.images.copy())
  np.testing.assert_allclose(np.asarray(out["pre_logits"]), np.asarray(fc2(pre)), rtol=0,
                             atol=ATOL)


def test_notop_file_with_num_classes_gets_a_fresh_classifier(refs, capsys):
  ref = refs("VGG16", False)
  model, variables = models.from_keras("VGG16", ref.paths["legacy"], input_shape=(32, 32, 3),
                                       num_classes=3)
  printed = capsys.readouterr().out
  assert all(f"Dense_{i}/kernel" in printed for i in range(3)) and "Conv_" not in printed
  logits, out = ref.ours(variables, model)
  assert logits.shape == (2, 3)
  np.testing.assert_allclose(np.asarray(out["features"]), ref.expected, rtol=0, atol=ATOL)


def test_wrong_model_file_lists_missing_layers(refs):
  ref = refs("VGG16", True)
  with pytest.raises(ValueError, match=r"not a Keras ResNet50 weight file: missing layers "
                                       r"conv1_conv, conv1_bn, conv2_block1_1_conv"):
    models.from_keras("ResNet50", ref.paths["legacy"], input_shape=(64, 64, 3), num_classes=None)


def test_wrong_input_shape_for_the_top_is_a_clear_error(refs):
  ref = refs("VGG16", True)
  with pytest.raises(ValueError, match=r"fc1 kernel: expected shape \(2048, 4096\).*"
                                       r"found \(512, 4096\)"):
    models.from_keras("VGG16", ref.paths["keras3"], input_shape=(64, 64, 3), num_classes=None)


def test_not_a_keras_file(tmp_path):
  text = tmp_path / "x.h5"
  text.write_text("hello")
  with pytest.raises(ValueError, match="not an HDF5 Keras weight file"):
    models.from_keras("VGG16", text, input_shape=(32, 32, 3), num_classes=None)
  other = tmp_path / "other.h5"
  with h5py.File(other, "w") as f:
    f.create_dataset("data", data=np.zeros(3))
  with pytest.raises(ValueError, match=r"not a Keras weight file: expected .*'layer_names'.*"
                                       r"found keys \['data'\]"):
    models.from_keras("VGG16", other, input_shape=(32, 32, 3), num_classes=None)
  with pytest.raises(FileNotFoundError, match="no Keras weight file"):
    models.from_keras("VGG16", tmp_path / "absent.h5", input_shape=(32, 32, 3), num_classes=None)
  with pytest.raises(ValueError, match="supports VGG16, ResNet50; found 'ResNet18'"):
    models.from_keras("ResNet18", other, input_shape=(32, 32, 3), num_classes=None)


@pytest.mark.parametrize("name,expected", [
    # Keras Applications' published parameter counts (1000 classes, 224x224); for ResNet50 they
    # include BatchNorm's moving statistics.
    ("VGG16", 138_357_544), ("ResNet50", 25_636_712),
])
def test_keras_variant_parameter_counts(name, expected):
  model = keras_import.keras_model(name, 1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))
  assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)) == expected


@pytest.mark.parametrize("name,module", [("VGG16", "vgg16"), ("ResNet50", "resnet50")])
def test_preprocess_spec_is_keras_preprocess_input(name, module):
  from jaxvision.data import preprocess
  image = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
  pp = preprocess.parse(models.keras_preprocess_spec(name))
  ours = np.asarray(preprocess.apply_eval(pp, {"image": image})["image"])
  expected = getattr(keras.applications, module).preprocess_input(image.astype(np.float32))
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_keras_imagenet_op_modes(mode):
  from jaxvision.data import preprocess
  image = np.random.default_rng(1).uniform(0, 255, (5, 4, 3)).astype(np.float32)
  ours = preprocess.apply_eval(preprocess.parse(f"keras_imagenet('{mode}')"), {"image": image})
  expected = keras.applications.imagenet_utils.preprocess_input(image.copy(), mode=mode)
  np.testing.assert_allclose(np.asarray(ours["image"]), expected, rtol=0, atol=1e-4)
  with pytest.raises(ValueError, match="mode must be 'caffe', 'tf' or 'torch'; found 'bgr'"):
    preprocess.parse("keras_imagenet('bgr')")
