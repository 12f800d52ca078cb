"""The embedding store: ids, labels and L2-normalised embeddings on disk, in chunks.

A store is a folder::

  meta.json          {"format": FORMAT, "model": ..., "dim": D, "chunk_size": C,
                      "num_examples": N, "complete": bool, ...}  (plus any keys the writer
                      was given: "dataset", "split", "class_names", "preprocessing", ...)
  chunk_00000.npz    ids int64 [n], labels [n, ...] (int32 class ids, -1 for none, or a
                     multi-hot [n, L] array), embeddings float32 [n, D] (unit L2 norm)
  chunk_00001.npz    ...

Chunk ``i`` holds examples ``i * C`` to ``min((i + 1) * C, N)`` of the source's order. Each
chunk is written atomically (a temporary file, then a rename), so a kill leaves only whole
chunks; :class:`StoreWriter` reopened on the same folder with the same identity (``model``,
``dim``, ``chunk_size``, ``num_examples`` and the ``identity`` keys) reports the chunks already
written so the caller skips them. A folder written for another model or source is refused
with a one-line error naming both, never mixed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from collections.abc import Mapping

import numpy as np

from jaxvision import cache

FORMAT = "jaxvision-embeddings-v1"
META = "meta.json"
IDENTITY_KEYS = ("model", "dim", "chunk_size", "num_examples", "dataset", "split", "source")


class StoreError(ValueError):
  """A store that cannot be read or written as asked (damaged, incomplete, or another model's)."""


@dataclasses.dataclass(frozen=True)
class Embeddings:
  """Embeddings in memory.

  Attributes:
    ids: int64 ``[N]`` example ids (the position in the source unless the source names ids).
    labels: ``[N]`` int32 class ids (-1: none) or a multi-hot ``[N, L]`` array.
    vectors: float32 ``[N, D]``, each row of unit L2 norm (a zero row stays zero).
    meta: the store's ``meta.json`` (``model``, ``dim``, ``class_names`` when known, ...).
  """
  ids: np.ndarray
  labels: np.ndarray
  vectors: np.ndarray
  meta: dict

  def __post_init__(self):
    n = len(self.ids)
    if self.vectors.ndim != 2 or len(self.vectors) != n or len(self.labels) != n:
      raise ValueError(f"expected ids [N], labels [N, ...] and vectors [N, D] of one N; found "
                       f"{self.ids.shape}, {self.labels.shape}, {self.vectors.shape}")

  @property
  def dim(self) -> int:
    return int(self.vectors.shape[1])

  def __len__(self) -> int:
    return len(self.ids)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows of ``x [N, D]`` scaled to unit L2 norm in float32 (rows of norm < eps stay zero)."""
  x = np.asarray(x, np.float32)
  norm = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
  return (x / np.maximum(norm, eps)).astype(np.float32)


def chunk_path(folder: str | os.PathLike, index: int) -> pathlib.Path:
  return pathlib.Path(folder) / f"chunk_{index:05d}.npz"


def num_chunks(num_examples: int, chunk_size: int) -> int:
  return -(-num_examples // chunk_size)


def read_meta(folder: str | os.PathLike) -> dict:
  """The store's ``meta.json``; a one-line :class:`StoreError` when absent or not a store."""
  path = pathlib.Path(folder) / META
  if not path.is_file():
    raise StoreError(f"{folder} is not an embedding store: expected {path}")
  try:
    meta = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise StoreError(f"{path} is damaged: {e}") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise StoreError(f"{path}: expected format {FORMAT!r}, found "
                     f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}")
  return meta


class StoreWriter:
  """Writes a store chunk by chunk, resuming a partial one.

  >>> w = StoreWriter(folder, model="EfficientNetLite0@imagenet", dim=1280, num_examples=N,
  ...                 chunk_size=4096, dataset="cifar10", split="test", class_names=names)
  >>> for i in w.missing_chunks():
  ...   w.write_chunk(i, ids, labels, vectors)   # vectors are L2-normalised here
  >>> w.finish()

  ``model``, ``dim``, ``chunk_size``, ``num_examples``, ``dataset``, ``split`` and ``source``
  identify the store: reopening a folder whose ``meta.json`` differs in any of them raises a
  :class:`StoreError` naming both values (pass ``overwrite=True`` to start over). Other
  keywords are stored in ``meta.json`` as they are (JSON values).
  """

  def __init__(self, folder: str | os.PathLike, *, model: str, dim: int, num_examples: int,
               chunk_size: int = 4096, overwrite: bool = False, **extra):
    if num_examples < 1:
      raise StoreError(f"an embedding store needs at least one example; found {num_examples} "
                       "(an empty gallery?)")
    if chunk_size < 1 or dim < 1:
      raise StoreError(f"chunk_size and dim must be >= 1; found {chunk_size}, {dim}")
    self.folder = pathlib.Path(folder)
    if self.folder.exists() and not self.folder.is_dir():
      raise StoreError(f"expected a folder for the embedding store; {self.folder} is a file")
    self.meta = {"format": FORMAT, "model": model, "dim": int(dim), "chunk_size": int(chunk_size),
                 "num_examples": int(num_examples), "complete": False, **extra}
    if (self.folder / META).exists() and not overwrite:
      old = read_meta(self.folder)
      for key in IDENTITY_KEYS:
        if old.get(key) != self.meta.get(key):
          raise StoreError(
              f"{self.folder} holds embeddings of {key}={old.get(key)!r}, not "
              f"{key}={self.meta.get(key)!r}: use another folder or overwrite=True")
    elif overwrite and self.folder.exists():
      for path in self.folder.glob("chunk_*.npz"):
        path.unlink()
    self.folder.mkdir(parents=True, exist_ok=True)
    self._write_meta()

  @property
  def num_chunks(self) -> int:
    return num_chunks(self.meta["num_examples"], self.meta["chunk_size"])

  def chunk_range(self, index: int) -> tuple[int, int]:
    """``(start, stop)`` example positions of chunk ``index``."""
    c, n = self.meta["chunk_size"], self.meta["num_examples"]
    return index * c, min((index + 1) * c, n)

  def missing_chunks(self) -> list[int]:
    """Indices of the chunks not yet written (whole chunks only: writes are atomic)."""
    return [i for i in range(self.num_chunks) if not chunk_path(self.folder, i).is_file()]

  def write_chunk(self, index: int, ids, labels, vectors) -> None:
    """Writes chunk ``index``: ids ``[n]``, labels ``[n, ...]``, vectors float32 ``[n, D]``
    with ``n`` equal to the chunk's length; vectors are L2-normalised here."""
    start, stop = self.chunk_range(index)
    ids, labels = np.asarray(ids, np.int64), np.asarray(labels)
    vectors = np.asarray(vectors)
    if vectors.shape != (stop - start, self.meta["dim"]) or len(ids) != stop - start \
        or len(labels) != stop - start:
      raise StoreError(f"chunk {index}: expected {stop - start} ids, labels and vectors of dim "
                       f"{self.meta['dim']}; found {ids.shape}, {labels.shape}, {vectors.shape}")
    arrays = {"ids": ids, "labels": labels, "embeddings": l2_normalize(vectors)}

    def write(f):
      buf = io.BytesIO()
      np.savez(buf, **arrays)
      f.write(buf.getvalue())

    cache.write_atomically(chunk_path(self.folder, index), write)

  def finish(self) -> dict:
    """Marks the store complete (every chunk written) and returns its meta."""
    missing = self.missing_chunks()
    if missing:
      raise StoreError(f"{self.folder}: chunks {missing[:5]} not written yet")
    self.meta["complete"] = True
    self._write_meta()
    return dict(self.meta)

  def _write_meta(self) -> None:
    text = json.dumps(self.meta, indent=1, sort_keys=True).encode()
    cache.write_atomically(self.folder / META, lambda f: f.write(text))


def load(folder: str | os.PathLike, *, allow_incomplete: bool = False) -> Embeddings:
  """Reads a complete store into memory (``allow_incomplete``: the chunks written so far)."""
  meta = read_meta(folder)
  if not meta.get("complete") and not allow_incomplete:
    raise StoreError(f"{folder} is incomplete (an interrupted embed?): run the embed command "
                     "again to finish it")
  parts: dict[str, list[np.ndarray]] = {"ids": [], "labels": [], "embeddings": []}
  for i in range(num_chunks(meta["num_examples"], meta["chunk_size"])):
    path = chunk_path(folder, i)
    if not path.is_file():
      if allow_incomplete:
        continue
      raise StoreError(f"{folder}: {path.name} is missing")
    try:
      with np.load(path, allow_pickle=False) as z:
        for key in parts:
          parts[key].append(z[key])
    except (OSError, ValueError, KeyError) as e:
      raise StoreError(f"{path} is damaged ({type(e).__name__}: {e}): delete it and run the "
                       "embed command again") from None
  if not parts["ids"]:
    raise StoreError(f"{folder} holds no chunks yet")
  vectors = np.concatenate(parts["embeddings"])
  if vectors.shape[1] != meta["dim"]:
    raise StoreError(f"{folder}: meta.json says dim {meta['dim']}, chunks hold {vectors.shape[1]}")
  return Embeddings(np.concatenate(parts["ids"]), np.concatenate(parts["labels"]), vectors, meta)


def from_arrays(vectors, *, labels=None, ids=None, meta: Mapping | None = None) -> Embeddings:
  """In-memory :class:`Embeddings` from ``vectors [N, D]`` (L2-normalised here); ``labels``
  default to -1 and ``ids`` to ``arange(N)``; ``meta`` gets ``format`` and ``dim``."""
  vectors = l2_normalize(vectors)
  n = len(vectors)
  labels = np.full([n], -1, np.int32) if labels is None else np.asarray(labels)
  ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
  return Embeddings(ids, labels, vectors,
                    {"format": FORMAT, "dim": int(vectors.shape[1]), **dict(meta or {})})
