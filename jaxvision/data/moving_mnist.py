"""Moving-MNIST-style sequences generated from MNIST digits, and a local TFDS builder.

Each sequence shows ``num_digits`` (default 2) 28x28 digits moving in straight lines inside a
``frame_size`` x ``frame_size`` (default 64x64) frame and bouncing off its edges; where digits
overlap the frame takes the pixel-wise maximum. The usual task reads the first 10 frames and
predicts the next 10 (``split_inputs_targets``).

Motion model: a digit's top-left corner ``p`` (row, col) lives in ``[0, L]`` with
``L = frame_size - 28``. It starts uniformly in that square and moves with a constant speed
drawn from ``speed_range`` pixels/frame in a uniformly random direction. Its unconstrained
position ``p0 + v t`` is folded back into ``[0, L]`` like a ball reflected by the walls
(``bounce``), then rounded to whole pixels, so digits never leave the frame.

Everything is drawn from ``np.random.default_rng(seed)``: the same digits, seed and sizes give
the same sequences, however they are chunked.

TFDS: ``MovingMnist`` (registered as ``jaxvision_moving_mnist``) prepares ``train`` sequences
from the MNIST train digits and ``test`` sequences from the test digits, read from the IDX
folder (``data_root()/mnist`` by default), into ``paths.tfds_dir()`` by default. Feature:
``frames`` uint8 ``[num_frames, frame_size, frame_size, 1]`` (zlib-compressed on disk).
Preparing the default 10000 + 1000 sequences takes well under a minute (figures in
``MovingMnist``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data import paths
from jaxvision.data.builders import local
from jaxvision.data.builders.idx import read_idx

NUM_INPUT_FRAMES = 10
NUM_FRAMES = 20
FRAME_SIZE = 64
SPEED_RANGE = (2.0, 5.0)  # Pixels per frame.
TRAIN_IMAGES = 'train-images-idx3-ubyte.gz'
TEST_IMAGES = 't10k-images-idx3-ubyte.gz'

def bounce(start: np.ndarray, velocity: np.ndarray, num_steps: int, limit: float) -> np.ndarray:
  """Positions of points moving at constant velocity and reflecting at ``0`` and ``limit``.

  Args:
    start: ``[..., 2]`` positions in ``[0, limit]`` at step 0.
    velocity: ``[..., 2]`` displacement per step.
    num_steps: number of steps ``T`` (step 0 included).
    limit: upper wall (the lower wall is 0).

  Returns:
    float64 ``[T, ..., 2]``: ``fold(start + t * velocity)`` where ``fold`` is the triangle wave
    with period ``2 * limit`` that maps ``[0, limit]`` to itself (a reflection at each wall).
  """
  if limit <= 0:
    raise ValueError(f'limit must be > 0 (frame larger than the digit), got {limit}')
  t = np.arange(num_steps, dtype=np.float64).reshape((-1,) + (1,) * np.ndim(start))
  free = np.asarray(start, np.float64) + t * np.asarray(velocity, np.float64)
  return limit - np.abs(limit - np.mod(free, 2 * limit))


def render(digits: np.ndarray, positions: np.ndarray, frame_size: int = FRAME_SIZE) -> np.ndarray:
  """Pastes digits into blank frames at integer positions, combining overlaps with ``max``.

  Args:
    digits: uint8 ``[S, D, h, w]``: the ``D`` digit images of each of ``S`` sequences.
    positions: int ``[S, T, D, 2]``: top-left ``(row, col)`` of each digit at each step, in
      ``[0, frame_size - h] x [0, frame_size - w]``.
    frame_size: side of the square frames.

  Returns:
    uint8 ``[S, T, frame_size, frame_size]``.
  """
  s, d, h, w = digits.shape
  if positions.ndim != 4 or positions.shape[0] != s or positions.shape[2:] != (d, 2):
    raise ValueError(f'positions must be [S={s}, T, D={d}, 2], got {positions.shape}')
  rows, cols = positions[..., 0], positions[..., 1]
  if (rows.min(initial=0) < 0 or cols.min(initial=0) < 0
      or rows.max(initial=0) > frame_size - h or cols.max(initial=0) > frame_size - w):
    raise ValueError(f'digit positions must keep {h}x{w} digits inside a {frame_size}x'
                     f'{frame_size} frame; got rows in [{rows.min()}, {rows.max()}], '
                     f'cols in [{cols.min()}, {cols.max()}]')
  num_steps = positions.shape[1]
  frames = np.zeros((s, num_steps, frame_size, frame_size), np.uint8)
  si = np.arange(s)[:, None, None, None]
  ti = np.arange(num_steps)[None, :, None, None]
  for k in range(d):
    r = rows[:, :, k, None, None] + np.arange(h)[:, None]  # [S, T, h, 1]
    c = cols[:, :, k, None, None] + np.arange(w)  # [S, T, 1, w]
    frames[si, ti, r, c] = np.maximum(frames[si, ti, r, c], digits[:, None, k])
  return frames


def _check_digits(digits_images: np.ndarray, frame_size: int) -> np.ndarray:
  digits_images = np.asarray(digits_images)
  if digits_images.dtype != np.uint8 or digits_images.ndim != 3 or not len(digits_images):
    raise ValueError('digits_images must be a non-empty uint8 array [N, h, w], got '
                     f'{digits_images.dtype} {digits_images.shape}')
  if max(digits_images.shape[1:]) >= frame_size:
    raise ValueError(f'digits {digits_images.shape[1:]} must be smaller than the frame '
                     f'({frame_size}x{frame_size})')
  return digits_images


def iter_sequences(digits_images: np.ndarray, num_sequences: int, *,
                   seed: int | Sequence[int], num_frames: int = NUM_FRAMES,
                   frame_size: int = FRAME_SIZE, num_digits: int = 2,
                   speed_range: tuple[float, float] = SPEED_RANGE,
                   chunk_size: int = 256) -> Iterator[np.ndarray]:
  """Yields ``generate``'s sequences in chunks of up to ``chunk_size`` (bounded memory).

  Same arguments as ``generate``; the concatenated chunks equal ``generate``'s output for any
  ``chunk_size`` (all random draws happen up front).
  """
  digits_images = _check_digits(digits_images, frame_size)
  if num_sequences < 0 or num_frames < 1 or num_digits < 1 or chunk_size < 1:
    raise ValueError('need num_sequences >= 0, num_frames >= 1, num_digits >= 1, chunk_size '
                     f'>= 1; got {num_sequences}, {num_frames}, {num_digits}, {chunk_size}')
  low, high = speed_range
  if not 0 <= low <= high:
    raise ValueError(f'speed_range must be (low, high) with 0 <= low <= high, got {speed_range}')
  h, w = digits_images.shape[1:]
  limit = np.array([frame_size - h, frame_size - w], np.float64)

  rng = np.random.default_rng(seed)
  index = rng.integers(0, len(digits_images), size=(num_sequences, num_digits))
  start = rng.uniform(0.0, 1.0, size=(num_sequences, num_digits, 2)) * limit
  angle = rng.uniform(0.0, 2 * np.pi, size=(num_sequences, num_digits))
  speed = rng.uniform(low, high, size=(num_sequences, num_digits))
  velocity = speed[..., None] * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
  # Rows and columns bounce independently, each between 0 and its own limit.
  path = np.stack([bounce(start[..., i], velocity[..., i], num_frames, limit[i])
                   for i in range(2)], axis=-1)  # [T, S, D, 2]
  positions = np.rint(path).astype(np.int32).transpose(1, 0, 2, 3)  # [S, T, D, 2]

  for lo in range(0, num_sequences, chunk_size):
    hi = min(lo + chunk_size, num_sequences)
    frames = render(digits_images[index[lo:hi]], positions[lo:hi], frame_size)
    yield frames[..., None]


def generate(digits_images: np.ndarray, num_sequences: int, *, seed: int | Sequence[int],
             num_frames: int = NUM_FRAMES, frame_size: int = FRAME_SIZE, num_digits: int = 2,
             speed_range: tuple[float, float] = SPEED_RANGE) -> np.ndarray:
  """Generates Moving-MNIST sequences (see the module docstring for the motion model).

  Args:
    digits_images: uint8 ``[N, h, w]`` digit images (MNIST: ``[N, 28, 28]``); each sequence
      picks ``num_digits`` of them uniformly with replacement.
    num_sequences: number of sequences ``S``.
    seed: seed (or seed sequence) for ``np.random.default_rng``.
    num_frames: frames per sequence ``T`` (10 inputs + 10 targets by default).
    frame_size: side of the square frames.
    num_digits: digits per sequence.
    speed_range: ``(low, high)`` of the uniform speed in pixels per frame.

  Returns:
    uint8 ``[S, T, frame_size, frame_size, 1]``; divide by 255 for floats in ``[0, 1]``.
  """
  chunks = list(iter_sequences(digits_images, num_sequences, seed=seed, num_frames=num_frames,
                               frame_size=frame_size, num_digits=num_digits,
                               speed_range=speed_range))
  if not chunks:
    return np.zeros((0, num_frames, frame_size, frame_size, 1), np.uint8)
  return np.concatenate(chunks)


def split_inputs_targets(frames, num_input_frames: int = NUM_INPUT_FRAMES):
  """Splits ``[..., T, H, W, C]`` frames (NumPy, TF or JAX) at ``num_input_frames`` in time.

  Returns:
    ``(inputs [..., num_input_frames, H, W, C], targets [..., T - num_input_frames, H, W, C])``.
  """
  return frames[..., :num_input_frames, :, :, :], frames[..., num_input_frames:, :, :, :]


@dataclasses.dataclass(eq=False)
class MovingMnistConfig(tfds.core.BuilderConfig):
  """Sizes of a prepared Moving-MNIST dataset.

  Attributes:
    num_train: sequences in the ``train`` split (from the MNIST train digits).
    num_test: sequences in the ``test`` split (from the MNIST test digits).
    seed: base seed; the splits use ``(seed, 0)`` and ``(seed, 1)``.
    num_frames: frames per sequence.
    frame_size: frame side in pixels.
  """

  num_train: int = 10_000
  num_test: int = 1_000
  seed: int = 0
  num_frames: int = NUM_FRAMES
  frame_size: int = FRAME_SIZE


class MovingMnist(local.LocalBuilder):
  """Moving-MNIST sequences prepared from a local MNIST IDX folder.

  Usage::

    builder = MovingMnist()  # config 'default': 10000 train / 1000 test
    builder.download_and_prepare()
    ds = builder.as_dataset(split='train')  # {'frames': uint8 [20, 64, 64, 1]}

  Custom sizes: ``MovingMnist(config=MovingMnistConfig(name='tiny', num_train=64,
  num_test=16))`` (each config name gets its own folder). ``mnist_dir`` (default
  ``paths.local_dataset_dir('mnist')``) must hold ``train-images-idx3-ubyte.gz`` and
  ``t10k-images-idx3-ubyte.gz``; ``data_dir`` defaults to ``paths.tfds_dir()``.

  The 'default' config (10000 + 1000 sequences, 0.9 GB raw) takes about 20 MB on disk
  (zlib); preparation times are in ``benchmarks/RESULTS.md``.
  """

  name = 'jaxvision_moving_mnist'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      MovingMnistConfig(name='default', description='10000 train / 1000 test sequences.'),
      MovingMnistConfig(name='small', num_train=1_000, num_test=200,
                        description='1000 train / 200 test sequences (quick experiments).'),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def __init__(self, *, mnist_dir: str | os.PathLike | None = None,
               data_dir: str | os.PathLike | None = None, **kwargs):
    self._mnist_dir = pathlib.Path(mnist_dir) if mnist_dir else None
    super().__init__(data_dir=data_dir or paths.tfds_dir(), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return self.dataset_info_from_configs(
        description='Two MNIST digits bouncing in a frame (Srivastava et al., 2015 style); '
                    'the first 10 frames are inputs, the last 10 targets.',
        features=tfds.features.FeaturesDict({
            'frames': tfds.features.Tensor(
                shape=(c.num_frames, c.frame_size, c.frame_size, 1), dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    mnist_dir = self._mnist_dir or paths.local_dataset_dir('mnist')
    c = self.builder_config
    return {
        'train': self._generate_examples(mnist_dir / TRAIN_IMAGES, c.num_train, (c.seed, 0)),
        'test': self._generate_examples(mnist_dir / TEST_IMAGES, c.num_test, (c.seed, 1)),
    }

  def _generate_examples(self, images_path, num_sequences, seed):
    c = self.builder_config
    digits = read_idx(images_path)
    chunks = iter_sequences(digits, num_sequences, seed=seed, num_frames=c.num_frames,
                            frame_size=c.frame_size)
    key = 0
    for chunk in chunks:
      for frames in chunk:
        yield key, {'frames': frames}
        key += 1
