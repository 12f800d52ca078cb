"""Tests for jaxvision.data.moving_mnist: motion, composition, determinism, IDX and TFDS."""

import gzip
import struct

import numpy as np
import pytest

from jaxvision.data import moving_mnist as mm
from jaxvision.data.builders.idx import read_idx


def write_idx_images(path, images):
  """Writes uint8 [N, H, W] images as a gzipped IDX3 file (big-endian header)."""
  header = struct.pack('>BBBB', 0, 0, 0x08, 3) + struct.pack('>III', *images.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + images.astype(np.uint8).tobytes())


def random_digits(n, seed, high=256):
  return np.random.default_rng(seed).integers(0, high, size=(n, 28, 28), dtype=np.uint8)


def step_by_step_bounce(p, v, num_steps, limit):
  """Ball between walls at 0 and limit, simulated one step at a time (|v| < limit)."""
  out = [p]
  for _ in range(num_steps - 1):
    p += v
    if p > limit:
      p, v = 2 * limit - p, -v
    elif p < 0:
      p, v = -p, -v
    out.append(p)
  return np.array(out)


def test_bounce_reflects_at_both_walls():
  # Toward the upper wall (36): 34 -> 38 reflects to 34 moving down.
  np.testing.assert_allclose(mm.bounce(np.array(34.0), np.array(4.0), 5, 36.0),
                             [34, 34, 30, 26, 22])
  # Toward the lower wall: 1 -> -2 reflects to 2 moving up.
  np.testing.assert_allclose(mm.bounce(np.array(1.0), np.array(-3.0), 4, 36.0), [1, 2, 5, 8])
  # Against a step-by-step simulation, over many reflections.
  rng = np.random.default_rng(0)
  start = rng.uniform(0, 36, size=50)
  velocity = rng.uniform(-7, 7, size=50)
  paths = mm.bounce(start, velocity, 60, 36.0)  # [T, 50]
  assert paths.shape == (60, 50)
  for k in range(50):
    np.testing.assert_allclose(paths[:, k], step_by_step_bounce(start[k], velocity[k], 60, 36.0),
                               atol=1e-9)
  assert (np.sign(np.diff(paths, axis=0)) != np.sign(velocity)).any()  # Some did reflect.


def test_render_max_composition_hand_placed():
  a = np.full((28, 28), 100, np.uint8)
  b = np.zeros((28, 28), np.uint8)
  b[:, :14] = 200  # Left half bright, right half empty.
  b[0, 20] = 50  # A dim pixel that lands on top of digit a.
  positions = np.array([[[[0, 0], [10, 0]]]])  # [S=1, T=1, D=2, (row, col)]
  frame = mm.render(np.stack([a, b])[None], positions, frame_size=64)[0, 0]
  expected = np.zeros((64, 64), np.uint8)
  expected[0:28, 0:28] = 100
  expected[10:38, 0:14] = 200
  np.testing.assert_array_equal(frame, expected)  # max(100, 50) = 100 at (10, 20); b's zeros too.


def test_render_rejects_positions_outside_frame():
  digits = np.ones((1, 1, 28, 28), np.uint8)
  with pytest.raises(ValueError, match='inside a 64x64 frame'):
    mm.render(digits, np.array([[[[37, 0]]]]), frame_size=64)
  with pytest.raises(ValueError, match='positions must be'):
    mm.render(digits, np.zeros((1, 1, 2, 2), np.int64), frame_size=64)


def test_generate_is_deterministic_and_seed_dependent():
  digits = random_digits(10, 0)
  a = mm.generate(digits, 4, seed=3)
  assert a.shape == (4, 20, 64, 64, 1) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, mm.generate(digits, 4, seed=3))
  assert not np.array_equal(a, mm.generate(digits, 4, seed=4))
  # Chunked generation draws the same sequences.
  chunks = list(mm.iter_sequences(digits, 4, seed=3, chunk_size=3))
  assert [len(c) for c in chunks] == [3, 1]
  np.testing.assert_array_equal(np.concatenate(chunks), a)
  assert mm.generate(digits, 0, seed=0).shape == (0, 20, 64, 64, 1)


def test_digits_stay_in_frame_and_move_smoothly():
  square = np.full((1, 28, 28), 255, np.uint8)
  frames = mm.generate(square, 8, seed=1, num_frames=40, num_digits=1, speed_range=(4.0, 5.0))
  frames = frames[..., 0]
  # Never clipped: a full 28x28 square in every frame.
  np.testing.assert_array_equal((frames == 255).sum(axis=(2, 3)), 28 * 28)
  rows = np.argmax(frames.max(axis=3) > 0, axis=2)  # [S, T] top row of the square
  cols = np.argmax(frames.max(axis=2) > 0, axis=2)
  assert rows.min() >= 0 and rows.max() <= 36 and cols.min() >= 0 and cols.max() <= 36
  step = np.hypot(np.diff(rows, axis=1), np.diff(cols, axis=1))
  assert step.max() <= 5.0 + 1.5  # Speed plus rounding.
  # In 40 frames at >= 4 px/frame every square hits a wall: a coordinate changes direction.
  flips = (np.diff(np.sign(np.diff(rows, axis=1)), axis=1) != 0) | (
      np.diff(np.sign(np.diff(cols, axis=1)), axis=1) != 0)
  assert flips.any(axis=1).all()


def test_two_digits_compose_by_max():
  digits = np.zeros((2, 28, 28), np.uint8)
  digits[0] = 80
  digits[1] = 160
  frames = mm.generate(digits, 6, seed=0)[..., 0]
  values = set(np.unique(frames).tolist())
  assert values <= {0, 80, 160}
  # Each frame holds two squares: total area between one and two squares.
  area = (frames > 0).sum(axis=(2, 3))
  assert area.min() >= 28 * 28 and area.max() <= 2 * 28 * 28


def test_generate_from_real_mnist(mnist_dir):
  digits = read_idx(mnist_dir / mm.TEST_IMAGES)
  assert digits.shape == (10000, 28, 28) and digits.dtype == np.uint8
  frames = mm.generate(digits, 3, seed=0)
  assert frames.shape == (3, 20, 64, 64, 1)
  assert (frames.max(axis=(2, 3, 4)) == 255).all()  # Every frame shows ink at full intensity.
  # Still one digit's ink at least, at most two digits' worth.
  ink = (frames > 0).sum(axis=(2, 3, 4))
  assert ink.min() >= 40 and ink.max() <= 2 * 28 * 28


def test_generate_rejects_bad_digits():
  with pytest.raises(ValueError, match='uint8 array'):
    mm.generate(np.zeros((3, 28, 28), np.float32), 2, seed=0)
  with pytest.raises(ValueError, match='smaller than the frame'):
    mm.generate(np.zeros((3, 28, 28), np.uint8), 2, seed=0, frame_size=28)


def test_split_inputs_targets():
  frames = np.arange(2 * 20).reshape(2, 20, 1, 1, 1)
  inputs, targets = mm.split_inputs_targets(frames)
  assert inputs.shape == (2, 10, 1, 1, 1) and targets.shape == (2, 10, 1, 1, 1)
  np.testing.assert_array_equal(targets[0, :, 0, 0, 0], np.arange(10, 20))


def test_tfds_builder_counts_shapes_and_sources(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  mnist = tmp_path / 'mnist'
  mnist.mkdir()
  train_digits = random_digits(5, 0, high=101)  # values <= 100
  train_digits[:, 0, 0] = 100
  test_digits = np.full((4, 28, 28), 200, np.uint8)
  write_idx_images(mnist / 'train-images-idx3-ubyte.gz', train_digits)
  write_idx_images(mnist / 't10k-images-idx3-ubyte.gz', test_digits)
  monkeypatch.setenv('JAXVISION_TFDS_DIR', str(tmp_path / 'tfds'))

  config = mm.MovingMnistConfig(name='tiny', num_train=6, num_test=3, seed=5)
  builder = mm.MovingMnist(mnist_dir=mnist, config=config)
  assert str(builder.data_dir).startswith(str(tmp_path / 'tfds'))
  builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == 6
  assert builder.info.splits['test'].num_examples == 3

  train = [ex['frames'] for ex in tfds.as_numpy(builder.as_dataset(split='train'))]
  test = [ex['frames'] for ex in tfds.as_numpy(builder.as_dataset(split='test'))]
  assert len(train) == 6 and len(test) == 3
  for f in train + test:
    assert f.shape == (20, 64, 64, 1) and f.dtype == np.uint8
  assert max(f.max() for f in train) == 100  # Train split drawn from the train digits only.
  assert {int(f.max()) for f in test} == {200}
  # The stored sequences are generate()'s, in some order.
  expected = mm.generate(train_digits, 6, seed=(5, 0))
  assert sorted(f.tobytes() for f in train) == sorted(e.tobytes() for e in expected)


def test_tfds_builder_missing_digits(tmp_path):
  builder = mm.MovingMnist(mnist_dir=tmp_path / 'nowhere', data_dir=tmp_path / 'tfds',
                           config=mm.MovingMnistConfig(name='tiny', num_train=1, num_test=1))
  with pytest.raises(FileNotFoundError, match='train-images-idx3-ubyte.gz'):
    builder.download_and_prepare()
