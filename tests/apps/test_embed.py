"""The sharded embed step and the embedding store it writes: equal to an unsharded
``model.apply`` (float64 normalisation here), padded rows dropped, resumable bit for bit."""

import jax
import numpy as np
import pytest
from PIL import Image

from jaxvision import data
from jaxvision.apps import embed, store
from jaxvision.data import pipeline
from jaxvision.models import cnn

PP = "value_range(0, 1)"


@pytest.fixture(scope="module")
def digits_test():
  builder, info = data.get_dataset("digits")
  images, labels = pipeline.load_split(builder, info, "test")
  return images, labels


@pytest.fixture(scope="module")
def cnn_embedder():
  model = cnn.SimpleCNN(num_classes=10, padding="SAME", hidden=16)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32), train=False)
  return model, variables, embed.Embedder.from_module(model, variables, pp=PP,
                                                      image_shape=(8, 8, 1), model="tiny-cnn")


def _reference(model, variables, images):
  """pre_logits of ``model.apply`` on one device, no jit, normalised in float64."""
  x = images.astype(np.float64) / 255.0
  _, out = model.apply(variables, x.astype(np.float32), train=False)
  f = np.asarray(out["pre_logits"], np.float64)
  return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def test_sharded_store_equals_unsharded_apply(tmp_path, digits_test, cnn_embedder):
  assert jax.device_count() == 8
  model, variables, e = cnn_embedder
  images, labels = digits_test
  # 360 test images, chunks of 128: the last chunk (104) ends in a batch of 40 real rows + 24
  # padded ones over the 8 devices.
  meta = embed.embed_dataset(e, "digits", "test", tmp_path / "s", batch_size=64,
                             chunk_size=128, num_devices=8, progress=False)
  assert meta["embedded_now"] == 360 and meta["images_per_s"] > 0
  got = store.load(tmp_path / "s")
  assert got.vectors.shape == (360, 16)
  np.testing.assert_array_equal(got.ids, np.arange(360))
  np.testing.assert_array_equal(got.labels, labels)
  np.testing.assert_allclose(got.vectors, _reference(model, variables, images), atol=2e-6)
  assert got.meta["model"] == "tiny-cnn" and got.meta["dataset"] == "digits"
  assert got.meta["split"] == "test" and got.meta["class_names"] == [str(i) for i in range(10)]
  assert got.meta["preprocessing"] == PP and got.meta["image_shape"] == [8, 8, 1]


def test_padded_rows_zeroed_in_step_and_dropped(cnn_embedder):
  model, variables, e = cnn_embedder
  runner = embed._Runner(e, batch_size=16, num_devices=8)
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(16, 8, 8, 1)).astype(np.float32)
  mask = np.arange(16) < 11
  out = jax.device_get(runner.step(runner.variables,
                                   embed.sharding.shard_batch({"image": x, "mask": mask},
                                                              runner.mesh)))
  assert out["embedding"].shape == (16, 16)
  np.testing.assert_array_equal(out["embedding"][11:], 0.0)
  kept = runner.run({"image": x, "mask": mask})
  _, ref = model.apply(variables, x[:11], train=False)
  np.testing.assert_allclose(kept, np.asarray(ref["pre_logits"]), rtol=1e-5, atol=1e-6)
  # embed_array pads 21 rows to 2 batches of 16 and returns exactly 21.
  x21 = rng.uniform(size=(21, 8, 8, 1)).astype(np.float32)
  _, ref21 = model.apply(variables, x21, train=False)
  np.testing.assert_allclose(runner.embed_array(x21), np.asarray(ref21["pre_logits"]),
                             rtol=1e-5, atol=1e-6)


def test_one_and_eight_devices_agree(digits_test, cnn_embedder):
  _, _, e = cnn_embedder
  images = digits_test[0][:24]
  one = embed.embed_arrays(e, images, batch_size=8, num_devices=1)
  eight = embed.embed_arrays(e, images, batch_size=8, num_devices=8)
  assert one.shape == (24, 16)
  np.testing.assert_allclose(one, eight, rtol=1e-5, atol=1e-6)


class _Killed(Exception):
  pass


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, cnn_embedder):
  _, _, e = cnn_embedder
  kwargs = dict(batch_size=32, chunk_size=128, num_devices=8, progress=False)

  def kill_after_chunk_1(i):
    if i == 1:
      raise _Killed

  with pytest.raises(_Killed):
    embed.embed_dataset(e, "digits", "test", tmp_path / "r", on_chunk=kill_after_chunk_1,
                        **kwargs)
  with pytest.raises(store.StoreError, match="incomplete"):
    store.load(tmp_path / "r")
  first = (tmp_path / "r" / "chunk_00000.npz").stat().st_mtime_ns
  resumed = embed.embed_dataset(e, "digits", "test", tmp_path / "r", **kwargs)
  assert resumed["embedded_now"] == 360 - 256  # only chunk 2 was left
  assert (tmp_path / "r" / "chunk_00000.npz").stat().st_mtime_ns == first
  embed.embed_dataset(e, "digits", "test", tmp_path / "u", **kwargs)
  a, b = store.load(tmp_path / "r"), store.load(tmp_path / "u")
  assert a.vectors.tobytes() == b.vectors.tobytes()
  np.testing.assert_array_equal(a.ids, b.ids)
  np.testing.assert_array_equal(a.labels, b.labels)
  # Nothing left: a third call embeds nothing and keeps the store.
  again = embed.embed_dataset(e, "digits", "test", tmp_path / "r", **kwargs)
  assert again["embedded_now"] == 0 and again["images_per_s"] is None
  # Another model's embedder is refused on the same folder, naming both.
  other = embed.Embedder.pixels(image_shape=(8, 8, 1))
  with pytest.raises(store.StoreError, match=r"model='tiny-cnn', not model='pixels'"):
    embed.embed_dataset(other, "digits", "test", tmp_path / "r", **kwargs)


def _png(path, array):
  Image.fromarray(array).save(path)
  return path


def test_embed_files_pixels_and_unreadable_file(tmp_path, digits_test):
  images = digits_test[0][:3]
  paths = [_png(tmp_path / f"{i}.png", images[i, ..., 0]) for i in range(3)]
  e = embed.Embedder.pixels(pp="value_range(-1, 1)", image_shape=(8, 8, 1))
  got = embed.embed_files(e, paths)
  x = images.reshape(3, -1).astype(np.float64) / 255.0 * 2.0 - 1.0
  ref = x / np.linalg.norm(x, axis=1, keepdims=True)
  np.testing.assert_allclose(got, ref, atol=1e-6)
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"not an image")
  with pytest.raises(ValueError, match=r"cannot decode .*bad\.jpg") as info:
    embed.embed_files(e, [paths[0], bad])
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match=r"cannot read image .*missing\.png: no such file"):
    embed.embed_files(e, [tmp_path / "missing.png"])


def test_embed_folder_and_empty_gallery(tmp_path, digits_test):
  images = digits_test[0][:5]
  (tmp_path / "g" / "sub").mkdir(parents=True)
  for i in range(5):
    _png(tmp_path / "g" / ("sub" if i % 2 else "") / f"{i}.png", images[i, ..., 0])
  (tmp_path / "g" / "notes.txt").write_text("not an image")
  e = embed.Embedder.pixels(pp="value_range(0, 1)", image_shape=(8, 8, 1))
  meta = embed.embed_folder(e, tmp_path / "g", tmp_path / "s", batch_size=8, chunk_size=2,
                            progress=False)
  got = store.load(tmp_path / "s")
  files = ["0.png", "2.png", "4.png", "sub/1.png", "sub/3.png"]
  assert meta["files"] == files and got.meta["embedder"]["kind"] == "pixels"
  order = [0, 2, 4, 1, 3]
  x = images[order].reshape(5, -1).astype(np.float64)
  np.testing.assert_allclose(got.vectors, x / np.linalg.norm(x, axis=1, keepdims=True),
                             atol=1e-6)
  np.testing.assert_array_equal(got.labels, -1)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty gallery: no image files"):
    embed.embed_folder(e, tmp_path / "empty", tmp_path / "s2", progress=False)


def test_make_embedder_and_spec_round_trip():
  e = embed.make_embedder("pixels", pp="resize(4)|value_range(0, 1)")
  assert e.model == "pixels+pp=resize(4)|value_range(0, 1)"
  assert embed.make_embedder("pixels").model == "pixels"
  rebuilt = embed.Embedder.for_store({"model": e.model, "embedder": e.spec})
  assert rebuilt.model == e.model and rebuilt.pp == e.pp
  assert e.output_dim((4, 4, 3)) == 48
  with pytest.raises(ValueError, match=r"expected 'pixels', a model with pretrained weights "
                                       r".*found 'NoSuchNet'"):
    embed.make_embedder("NoSuchNet")


def test_model_that_cannot_take_the_input_is_one_line(cnn_embedder):
  _, _, e = cnn_embedder
  with pytest.raises(ValueError, match=r"embedder 'tiny-cnn' cannot take preprocessed images "
                                       r"of shape \(8, 8, 3\)") as info:
    e.output_dim((8, 8, 3))
  assert "\n" not in str(info.value)


@pytest.mark.slow
def test_pretrained_efficientnet_embedder_with_pp_override():
  from jaxvision import models
  pp = "value_range(-0.9921875, 1)"  # (x - 127) / 128, on the 32 px images as they are
  e = embed.make_embedder("EfficientNetLite0", pp=pp)
  assert e.model == f"EfficientNetLite0@imagenet+pp={pp}" and e.spec["kind"] == "pretrained"
  assert e.output_dim((32, 32, 3)) == 1280
  x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
  got = embed.embed_arrays(e, x, batch_size=4, num_devices=2)
  model = models.create_model("EfficientNetLite0")
  variables, _ = models.pretrained_variables("EfficientNetLite0")
  _, out = model.apply(variables, ((x.astype(np.float64) - 127) / 128).astype(np.float32),
                       train=False)
  np.testing.assert_allclose(got, np.asarray(out["pre_logits"]), rtol=1e-4, atol=1e-4)
