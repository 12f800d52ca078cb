"""Image search: exact top-k (JAX and faiss) against NumPy float64, approximate indexes,
disk round trip, mismatch refusal, metrics by hand, and the CLI with its one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxvision.apps import search, store


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(queries, gallery, k, exclude=None):
  """Top-k by float64 inner product, ties by row (a stable sort); excluded rows left out."""
  s = np.asarray(queries, np.float64) @ np.asarray(gallery, np.float64).T
  if exclude is not None:
    for i, e in enumerate(exclude):
      if e >= 0:
        s[i, e] = -np.inf
  rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, rows, axis=1), rows


def _clustered(n, d, seed=0, clusters=5):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, d)) * 2
  labels = rng.integers(0, clusters, n)
  x = centres[labels] + rng.normal(size=(n, d))
  return x.astype(np.float32), labels.astype(np.int32)


@pytest.mark.parametrize("chunk_size,query_block", [(8, 2), (64, 16)])
def test_jax_exact_top_k_matches_float64(chunk_size, query_block):
  rng = np.random.default_rng(0)
  gallery = _unit(rng.normal(size=(37, 8))).astype(np.float32)
  queries = _unit(rng.normal(size=(5, 8))).astype(np.float32)
  scores, rows = search.exact_top_k(queries, gallery, 4, chunk_size=chunk_size,
                                    query_block=query_block)
  ref_s, ref_r = _reference(queries, gallery, 4)
  np.testing.assert_array_equal(rows, ref_r)
  np.testing.assert_allclose(scores, ref_s, atol=1e-6)
  # Excluding a row per query (the query itself when querying by id).
  exclude = np.array([ref_r[0, 0], -1, ref_r[2, 1], 36, 0])
  scores, rows = search.exact_top_k(queries, gallery, 4, exclude=exclude,
                                    chunk_size=chunk_size, query_block=query_block)
  ref_s, ref_r = _reference(queries, gallery, 4, exclude)
  np.testing.assert_array_equal(rows, ref_r)
  np.testing.assert_allclose(scores, ref_s, atol=1e-6)
  # k beyond the gallery: the rest is -inf / -1.
  scores, rows = search.exact_top_k(queries[:2], gallery, 40, exclude=[3, -1],
                                    chunk_size=chunk_size)
  assert (rows[0, 36:] == -1).all() and (rows[1, 37:] == -1).all() and rows[1, 36] >= 0
  assert np.isneginf(scores[0, 36:]).all() and 3 not in rows[0]


def test_exact_top_k_ties_in_gallery_order():
  gallery = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], np.float32)
  _, rows = search.exact_top_k(np.array([[1, 0]], np.float32), gallery, 3, chunk_size=2)
  np.testing.assert_array_equal(rows, [[0, 2, 3]])


def test_faiss_flat_matches_float64_and_excludes():
  x, labels = _clustered(60, 16)
  gallery = store.from_arrays(x, labels=labels, meta={"model": "m"})
  index = search.build_index(gallery, "flat")
  queries = gallery.vectors[:7]
  scores, rows = index.search(queries, 5, exclude=np.arange(7))
  ref_s, ref_r = _reference(queries, gallery.vectors, 5, np.arange(7))
  np.testing.assert_array_equal(rows, ref_r)
  np.testing.assert_allclose(scores, ref_s, atol=1e-5)
  assert not any(i in r for i, r in enumerate(rows))


def test_approximate_indexes_reach_exact_when_scanning_everything():
  x, labels = _clustered(400, 32, seed=1)
  gallery = store.from_arrays(x, labels=labels, meta={"model": "m"})
  queries = gallery.vectors[:50]
  _, ref = _reference(queries, gallery.vectors, 10, np.arange(50))
  # Every IVF cell probed: exact. PCA + re-ranking of every probed vector: exact again.
  for params in ({"nlist": 8, "nprobe": 8}, {"nlist": 8, "nprobe": 8, "pca": 16, "refine": 40},
                 {"nlist": 8, "nprobe": 8, "pq": 8, "pq_bits": 4, "refine": 40}):
    index = search.build_index(gallery, "ivf", **params)
    _, rows = index.search(queries, 10, exclude=np.arange(50))
    assert search.recall_at_k(rows, ref) == 1.0, params
  for params in ({}, {"pca": 16, "refine": 40}):
    hnsw = search.build_index(gallery, "hnsw", m=16, ef_construction=100, ef_search=400,
                              **params)
    _, rows = hnsw.search(queries, 10, exclude=np.arange(50))
    assert search.recall_at_k(rows, ref) >= 0.99, params
  # Fewer cells probed: recall drops below 1 (the index is approximate) but stays useful.
  few = search.build_index(gallery, "ivf", nlist=8, nprobe=1)
  _, rows = few.search(queries, 10, exclude=np.arange(50))
  assert 0.3 < search.recall_at_k(rows, ref) < 1.0


def test_uncentred_pca_spans_the_top_right_singular_vectors():
  rng = np.random.default_rng(4)
  x = (rng.normal(size=(300, 12)) * np.linspace(3, 0.1, 12) + 2.0).astype(np.float32)
  p = search.uncentred_pca(x, 4)
  _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)  # no centring
  np.testing.assert_allclose(p @ p.T, vt[:4].T @ vt[:4], atol=1e-5)
  assert p.shape == (12, 4) and p.dtype == np.float32


def test_save_load_round_trip_and_store_as_jax_index(tmp_path):
  x, labels = _clustered(120, 16, seed=2)
  w = store.StoreWriter(tmp_path / "s", model="m@1", dim=16, num_examples=120, chunk_size=50,
                        dataset="d", split="test", class_names=list("abcde"))
  for i in w.missing_chunks():
    a, b = w.chunk_range(i)
    w.write_chunk(i, np.arange(a, b), labels[a:b], x[a:b])
  w.finish()
  gallery = store.load(tmp_path / "s")
  index = search.build_index(gallery, "hnsw", store_path=tmp_path / "s", m=8)
  index.save(tmp_path / "i")
  meta = json.loads((tmp_path / "i" / "index.json").read_text())
  assert meta["model"] == "m@1" and meta["dim"] == 16 and meta["num_vectors"] == 120
  assert meta["params"]["m"] == 8 and meta["gallery"]["class_names"] == list("abcde")
  loaded = search.load_index(tmp_path / "i")
  q = gallery.vectors[:9]
  for a, b in zip(index.search(q, 5), loaded.search(q, 5)):
    np.testing.assert_array_equal(a, b)
  as_jax = search.load_index(tmp_path / "s")
  assert as_jax.kind == "jax" and len(as_jax) == 120
  _, ref = _reference(q, gallery.vectors, 5)
  np.testing.assert_array_equal(as_jax.search(q, 5)[1], ref)
  with pytest.raises(search.SearchError, match="found neither"):
    search.load_index(tmp_path)
  with pytest.raises(search.SearchError, match="is an embedding store"):
    index.save(tmp_path / "s")


def test_other_model_or_dim_refused_naming_both():
  x, _ = _clustered(30, 16)
  index = search.build_index(store.from_arrays(x, meta={"model": "A"}), "flat")
  with pytest.raises(search.MismatchError,
                     match=r"holds 'A' embeddings of dim 16; the queries are 'unnamed' "
                           r"embeddings of dim 8"):
    index.search(np.ones((2, 8), np.float32), 3)
  with pytest.raises(search.MismatchError,
                     match=r"holds 'A' embeddings of dim 16; the queries are 'B' embeddings "
                           r"of dim 16"):
    index.search(np.ones((2, 16), np.float32), 3, model="B")
  other = store.from_arrays(np.ones((30, 8)), meta={"model": "B"})
  with pytest.raises(search.MismatchError, match=r"the gallery store holds 'A' embeddings of "
                                                 r"dim 16; the query store holds 'B' embeddings "
                                                 r"of dim 8"):
    search.evaluate(store.from_arrays(x, meta={"model": "A"}), queries=other)


def test_empty_gallery_bad_params_unknown_id():
  with pytest.raises(search.SearchError, match="empty gallery"):
    search.build_index(store.from_arrays(np.zeros((0, 4), np.float32)), "flat")
  x, labels = _clustered(30, 8)
  gallery = store.from_arrays(x, labels=labels, meta={"model": "m", "class_names": list("abcde")})
  with pytest.raises(search.SearchError, match="nlist=64 cells needs at least that many"):
    search.build_index(gallery, "ivf", nlist=64)
  with pytest.raises(search.SearchError, match="unknown parameter.*nprobe.*'hnsw'"):
    search.build_index(gallery, "hnsw", nprobe=3)
  with pytest.raises(search.SearchError, match="unknown index kind 'lsh'"):
    search.build_index(gallery, "lsh")
  index = search.build_index(gallery, "jax")
  with pytest.raises(search.SearchError, match="unknown id 30: the gallery holds 30 ids from 0 "
                                               "to 29"):
    search.query_ids(index, [1, 30])
  res = search.query_ids(index, [4], k=3)
  _, ref = _reference(gallery.vectors[[4]], gallery.vectors, 3, [4])
  assert [h["id"] for h in res[0]["results"]] == ref[0].tolist()
  assert res[0]["query"] == {"id": 4, "label": "abcde"[labels[4]]}
  assert [h["label"] for h in res[0]["results"]] == ["abcde"[labels[r]] for r in ref[0]]


def test_auto_nlist_and_small_vectors_skip_pca():
  assert [search.auto_nlist(n) for n in (1, 360, 10_000, 50_000)] == [1, 16, 512, 2048]
  x, _ = _clustered(100, 16)
  index = search.build_index(store.from_arrays(x), "ivf")
  assert index.params["nlist"] == 4 and index.params["nprobe"] == 4
  assert index.params["pca"] == 0  # 16-d vectors are kept whole
  assert search.describe("ivf", 16, index.params) == "IVF4,Flat,RFlat(4)"


def test_precision_and_recall_by_hand():
  gallery_labels = np.array([0, 0, 1, 1, -1])
  rows = np.array([[1, 2], [0, 4], [3, -1], [2, 0]])
  p = search.precision_at_k(np.array([0, 0, 1, -1]), gallery_labels, rows, ["x", "y"])
  # Query 0: 1 of 2; query 1: 1 of 2; query 2: 1 of 2 (a missing result is a miss);
  # query 3 has no label and does not count.
  assert p["precision_at_k"] == pytest.approx(0.5) and p["num_queries"] == 3
  assert p["per_class"] == {"x": pytest.approx(0.5), "y": pytest.approx(0.5)}
  multi = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1]])
  p = search.precision_at_k(np.array([[1, 0, 0], [0, 1, 1]]), multi, np.array([[0, 1],
                                                                               [1, 2]]))
  assert p["precision_at_k"] == pytest.approx((0.5 + 1.0) / 2)
  assert search.recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]),
                            np.array([[3, 2, 9], [7, 8, 9]])) == pytest.approx((2 / 3 + 0) / 2)


def test_evaluate_precision_against_numpy():
  x, labels = _clustered(150, 12, seed=3)
  gallery = store.from_arrays(x, labels=labels, meta={"model": "m"})
  index = search.build_index(gallery, "ivf", nlist=4, nprobe=4)
  out = search.evaluate(gallery, k=5, index=index, single=5)
  _, ref = _reference(gallery.vectors, gallery.vectors, 5, np.arange(150))
  expected = np.mean(labels[ref] == labels[:, None])
  assert out["precision_at_k"] == pytest.approx(expected)
  assert out["approximate"]["recall_at_k"] == 1.0
  assert out["exact"]["batched_queries_per_s"] > 0 and out["num_queries"] == 150


# -- The command line. ----------------------------------------------------------------------------


def _cli(capsys, *argv):
  code = search.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
  folder = tmp_path_factory.mktemp("cli") / "store"
  assert search.main(["embed", "--model", "pixels", "--dataset", "digits", "--split", "test",
                      "--out", str(folder), "--batch-size", "40", "--chunk-size", "100"]) == 0
  return folder


def test_cli_embed_build_query_sheet_evaluate(tmp_path, capsys, digits_store):
  gallery = store.load(digits_store)
  assert gallery.vectors.shape == (360, 64) and gallery.meta["model"] == "pixels"
  code, out, _ = _cli(capsys, "build", "--store", digits_store, "--kind", "hnsw", "--m", 8,
                      "--out", tmp_path / "idx")
  assert code == 0 and json.loads(out)["num_vectors"] == 360
  code, out, err = _cli(capsys, "query", "--index", tmp_path / "idx", "--ids", "0,5", "-k", 4,
                        "--ef-search", 360, "--sheet", tmp_path / "sheet.png")
  assert code == 0, err
  results = json.loads(out)
  _, ref = _reference(gallery.vectors[[0, 5]], gallery.vectors, 4, [0, 5])
  names = gallery.meta["class_names"]
  for r, ref_rows, qid in zip(results, ref, (0, 5)):
    assert r["query"] == {"id": qid, "label": names[gallery.labels[qid]]}
    assert [h["id"] for h in r["results"]] == ref_rows.tolist()
    assert [h["label"] for h in r["results"]] == [names[gallery.labels[i]] for i in ref_rows]
  with Image.open(tmp_path / "sheet.png") as sheet:
    w, h = sheet.size
  assert w == 800 and h == 420  # 5 columns x 160 px, 2 rows x 190 px + a title at 100 dpi
  # A query image file goes through the gallery's own preprocessing: image 7 finds itself.
  from jaxvision import data
  from jaxvision.data import pipeline
  images, _ = pipeline.load_split(*data.get_dataset("digits"), "test")
  Image.fromarray(images[7, ..., 0]).save(tmp_path / "q.png")
  code, out, err = _cli(capsys, "query", "--index", digits_store, "--images", tmp_path / "q.png",
                        "-k", 3, "--out", tmp_path / "r.json")
  assert code == 0, err
  hit = json.loads((tmp_path / "r.json").read_text())[0]["results"][0]
  assert hit["id"] == 7 and hit["score"] == pytest.approx(1.0, abs=1e-6)
  code, out, err = _cli(capsys, "evaluate", "--store", digits_store, "--index", tmp_path / "idx",
                        "-k", 5, "--single", 5)
  assert code == 0, err
  ev = json.loads(out)
  _, ref = _reference(gallery.vectors, gallery.vectors, 5, np.arange(360))
  assert ev["precision_at_k"] == pytest.approx(np.mean(gallery.labels[ref]
                                                       == gallery.labels[:, None]))
  assert 0.9 <= ev["approximate"]["recall_at_k"] <= 1.0


def test_cli_image_folder_gallery_query_by_file_with_sheet(tmp_path, capsys):
  rng = np.random.default_rng(5)
  (tmp_path / "photos").mkdir()
  for i in range(6):
    Image.fromarray(rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)).save(
        tmp_path / "photos" / f"p{i}.png")
  code, _, err = _cli(capsys, "embed", "--model", "pixels", "--pp", "value_range(-1, 1)",
                      "--images", tmp_path / "photos", "--out", tmp_path / "s",
                      "--batch-size", 8)
  assert code == 0, err
  code, out, err = _cli(capsys, "query", "--index", tmp_path / "s", "--images",
                        tmp_path / "photos" / "p4.png", "-k", 3, "--sheet", tmp_path / "q.png")
  assert code == 0, err
  hits = json.loads(out)[0]["results"]
  assert hits[0]["id"] == 4 and hits[0]["score"] == pytest.approx(1.0, abs=1e-6)
  assert hits[0]["label"] is None and len(hits) == 3
  with Image.open(tmp_path / "q.png") as sheet:
    assert sheet.size == (640, 230)  # 4 columns x 160 px, 1 row x 190 px + a title


def _one_error_line(code, err, pattern):
  import re
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and re.fullmatch(f"error: {pattern}", lines[0]), err


def test_cli_bad_input_one_line(tmp_path, capsys, digits_store):
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG broken")
  _one_error_line(*_cli(capsys, "query", "--index", digits_store, "--images", bad)[::2],
                  r"cannot decode .*bad\.png as an image.*")
  _one_error_line(*_cli(capsys, "query", "--index", digits_store, "--ids", "3,1000")[::2],
                  r"unknown id 1000: the gallery holds 360 ids from 0 to 359")
  # A store of another model (other preprocessing) and one of another dimension.
  assert search.main(["embed", "--model", "pixels", "--pp", "value_range(0, 1)", "--dataset",
                      "digits", "--out", str(tmp_path / "other"), "--batch-size", "40"]) == 0
  assert search.main(["embed", "--model", "pixels", "--pp", "resize(4)|value_range(-1, 1)",
                      "--dataset", "digits", "--out", str(tmp_path / "small"),
                      "--batch-size", "40"]) == 0
  capsys.readouterr()
  _one_error_line(*_cli(capsys, "query", "--index", digits_store, "--ids", "1",
                        "--from-store", tmp_path / "other")[::2],
                  r"the index holds 'pixels' embeddings of dim 64; the query store's "
                  r"vectors are 'pixels\+pp=value_range\(0, 1\)' embeddings of dim 64: .*")
  assert search.main(["build", "--store", str(digits_store), "--kind", "flat", "--out",
                      str(tmp_path / "flat")]) == 0
  capsys.readouterr()
  _one_error_line(*_cli(capsys, "evaluate", "--store", tmp_path / "small", "--index",
                        tmp_path / "flat")[::2],
                  r"the index holds 'pixels' embeddings of dim 64; the gallery store holds "
                  r"'pixels\+pp=resize\(4\)\|value_range\(-1, 1\)' embeddings of dim 16")
  (tmp_path / "empty").mkdir()
  _one_error_line(*_cli(capsys, "embed", "--model", "pixels", "--pp", "resize(8)", "--images",
                        tmp_path / "empty", "--out", tmp_path / "e")[::2],
                  r"empty gallery: no image files .*")
  _one_error_line(*_cli(capsys, "build", "--store", tmp_path / "nothing", "--out",
                        tmp_path / "x")[::2], r".*nothing is not an embedding store.*")
  with pytest.raises(SystemExit) as usage:  # argparse's exit, in one line too
    search.main(["query", "--index", str(digits_store), "--ids", "x"])
  _one_error_line(usage.value.code, capsys.readouterr().err,
                  r"python -m jaxvision.apps.search query: argument --ids: expected integer "
                  r"ids like 3,17; found 'x'")
  _one_error_line(*_cli(capsys, "build", "--store", digits_store, "--kind", "flat", "--nprobe",
                        3, "--out", tmp_path / "y")[::2],
                  r"--nprobe do not apply to a 'flat' index")


@pytest.mark.parametrize("sub", [None, "embed", "build", "query", "evaluate"])
def test_cli_help(capsys, sub):
  with pytest.raises(SystemExit) as e:
    search.main(([sub] if sub else []) + ["--help"])
  assert e.value.code == 0 and "usage:" in capsys.readouterr().out
