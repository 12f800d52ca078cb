"""Smoke test of ``python -m benchmarks.search`` at a tiny size: complete, finite records and
exact search's own recall of 1. No timing thresholds (figures live in benchmarks/RESULTS.md)."""

import json
import math

import numpy as np

from benchmarks import search as bench


def test_synthetic_embeddings_shape_and_norm():
  gallery, queries = bench.synthetic_embeddings(200, 48, num_queries=7, seed=3)
  assert gallery.vectors.shape == (200, 48) and queries.vectors.shape == (7, 48)
  np.testing.assert_allclose(np.linalg.norm(gallery.vectors.astype(np.float64), axis=1), 1.0,
                             atol=1e-6)
  assert (gallery.vectors >= 0).all() and set(np.unique(gallery.labels)) <= set(range(10))
  again, _ = bench.synthetic_embeddings(200, 48, seed=3)
  np.testing.assert_array_equal(again.vectors, gallery.vectors)


def test_benchmark_writes_complete_records(tmp_path):
  out = tmp_path / "r.json"
  bench.main(["--n", "300", "--dim", "32", "--num-queries", "20", "--configs",
              "hnsw:m=8,ef_search=16;flat:pca=8,refine=4;ivf:nprobe=2", "--threads", "1",
              "--repeats", "2", "--single", "4", "--out", str(out)])
  result = json.loads(out.read_text())
  records = result["records"]
  assert [r["kind"] for r in records] == ["flat", "hnsw", "flat", "ivf"]
  assert records[0]["recall_at_k"] == 1.0 and records[0]["structure"] == "Flat (exact)"
  assert records[2]["structure"] == "PCA8(uncentred),Flat,RFlat(4)"
  for r in records:
    assert 0.0 <= r["recall_at_k"] <= 1.0 and len(r["batched_seconds_all"]) == 2
    for key in ("batched_queries_per_s", "single_queries_per_s"):
      assert math.isfinite(r[key]) and r[key] > 0
    assert r["single_num_queries"] == 2 * (4 // 2)
  assert result["environment"]["versions"]["faiss"] and result["data"]["num_vectors"] == 300
