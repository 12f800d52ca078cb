"""load_images: decoding PNG/JPEG files for prediction."""

import numpy as np
import pytest
from PIL import Image

from jaxvision.data import images


def _save(path, array, **kwargs):
  Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(path, **kwargs)
  return path


def test_png_grey_exact(tmp_path):
  rng = np.random.default_rng(0)
  arrays = [rng.integers(0, 256, (6, 5, 1), dtype=np.uint8) for _ in range(3)]
  files = [_save(tmp_path / f"{i}.png", a) for i, a in enumerate(arrays)]
  out = images.load_images(files, image_shape=(6, 5, 1), pp="value_range(0, 1)")
  assert out.shape == (3, 6, 5, 1) and out.dtype == np.float32
  np.testing.assert_allclose(out, np.stack(arrays) / 255.0, atol=1e-6)
  norm = images.load_images([str(files[0])], image_shape=(6, 5, 1), pp="normalize(0.5, 0.25)")
  np.testing.assert_allclose(norm[0], (arrays[0] / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_rgb_file_to_grey_and_resized(tmp_path):
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
  path = _save(tmp_path / "rgb.png", rgb)
  out = images.load_images([path], image_shape=(4, 5, 1), pp="")
  # Reference: ITU-R 601 luma (the weights TF and PIL use), then 2x bilinear downscale
  # with half-pixel centres = the mean of each 2x2 block.
  grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  ref = grey.reshape(4, 2, 5, 2).mean(axis=(1, 3))
  assert out.shape == (1, 4, 5, 1)
  assert np.abs(out[0, ..., 0] - ref).max() <= 1.5


def test_jpeg_rgb(tmp_path):
  rgb = np.zeros((16, 16, 3), np.uint8)
  rgb[:, :8] = [200, 30, 30]
  rgb[:, 8:] = [20, 40, 220]
  path = _save(tmp_path / "x.jpg", rgb, quality=95)
  out = images.load_images([path], image_shape=(16, 16, 3), pp="value_range(0, 1)")
  # JPEG is lossy: compare block means away from the edge.
  np.testing.assert_allclose(out[0, 4:12, 1:6].mean(axis=(0, 1)), np.array([200, 30, 30]) / 255,
                             atol=0.03)
  np.testing.assert_allclose(out[0, 4:12, 10:15].mean(axis=(0, 1)), np.array([20, 40, 220]) / 255,
                             atol=0.03)


def test_missing_and_undecodable_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.png"):
    images.load_images([tmp_path / "nope.png"], image_shape=(4, 4, 1), pp="")
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"definitely not an image")
  with pytest.raises(ValueError, match="bad.png"):
    images.load_images([bad], image_shape=(4, 4, 1), pp="")
  with pytest.raises(ValueError, match="at least one"):
    images.load_images([], image_shape=(4, 4, 1), pp="")


def test_files_keep_their_size_when_the_spec_sizes_them(tmp_path):
  rng = np.random.default_rng(2)
  a = _save(tmp_path / "a.png", rng.integers(0, 256, (6, 9, 3), dtype=np.uint8))
  b = _save(tmp_path / "b.png", rng.integers(0, 256, (12, 8, 3), dtype=np.uint8))
  out = images.load_images([a, b], image_shape=(None, None, 3), pp="center_crop(6)")
  np.testing.assert_array_equal(out[0], np.asarray(Image.open(a))[:, 1:7])
  np.testing.assert_array_equal(out[1], np.asarray(Image.open(b))[3:9, 1:7])
  with pytest.raises(ValueError, match="both None"):
    images.load_images([a], image_shape=(None, 4, 3), pp="")
