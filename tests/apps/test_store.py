"""The embedding store: chunked writes, resume after a kill, refusal of another model's store."""

import json

import numpy as np
import pytest

from jaxvision.apps import store


def _write(folder, n=7, chunk=3, dim=4, model="m", skip=(), seed=0):
  rng = np.random.default_rng(seed)
  vectors = rng.normal(size=(n, dim)).astype(np.float32)
  w = store.StoreWriter(folder, model=model, dim=dim, num_examples=n, chunk_size=chunk,
                        dataset="d", split="test", class_names=["a", "b"])
  for i in w.missing_chunks():
    if i in skip:
      continue
    s, e = w.chunk_range(i)
    w.write_chunk(i, np.arange(s, e), np.arange(s, e) % 2, vectors[s:e])
  return w, vectors


def test_round_trip_normalises_in_float64(tmp_path):
  w, vectors = _write(tmp_path / "s")
  w.finish()
  e = store.load(tmp_path / "s")
  expected = vectors / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
  np.testing.assert_allclose(e.vectors, expected, atol=1e-7)
  np.testing.assert_array_equal(e.ids, np.arange(7))
  np.testing.assert_array_equal(e.labels, np.arange(7) % 2)
  assert e.meta["class_names"] == ["a", "b"] and e.dim == 4 and len(e) == 7


def test_resume_writes_only_missing_chunks(tmp_path):
  _write(tmp_path / "s", skip=(1,))
  with pytest.raises(store.StoreError, match="incomplete"):
    store.load(tmp_path / "s")
  before = (tmp_path / "s" / "chunk_00000.npz").stat().st_mtime_ns
  w = store.StoreWriter(tmp_path / "s", model="m", dim=4, num_examples=7, chunk_size=3,
                        dataset="d", split="test")
  assert w.missing_chunks() == [1]
  assert (tmp_path / "s" / "chunk_00000.npz").stat().st_mtime_ns == before


def test_other_model_or_empty_gallery_refused(tmp_path):
  _write(tmp_path / "s")
  with pytest.raises(store.StoreError, match=r"model='m', not model='other'"):
    store.StoreWriter(tmp_path / "s", model="other", dim=4, num_examples=7, chunk_size=3,
                      dataset="d", split="test")
  with pytest.raises(store.StoreError, match="empty gallery"):
    store.StoreWriter(tmp_path / "e", model="m", dim=4, num_examples=0)


def test_damaged_chunk_and_meta_named(tmp_path):
  w, _ = _write(tmp_path / "s")
  w.finish()
  (tmp_path / "s" / "chunk_00001.npz").write_bytes(b"not a zip")
  with pytest.raises(store.StoreError, match="chunk_00001.npz is damaged"):
    store.load(tmp_path / "s")
  (tmp_path / "s" / "meta.json").write_text(json.dumps({"format": "other"}))
  with pytest.raises(store.StoreError, match="expected format"):
    store.load(tmp_path / "s")
