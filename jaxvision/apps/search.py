"""Image search over an embedding store: faiss indexes, an exact top-k in JAX, a CLI.

>>> from jaxvision.apps import search, store
>>> gallery = store.load("stores/cifar10-train")
>>> index = search.build_index(gallery, "hnsw")           # or "flat", "ivf"
>>> index.save("indexes/cifar10-train-hnsw")
>>> index = search.load_index("indexes/cifar10-train-hnsw")
>>> search.query_ids(index, [3, 17], k=10)                # by gallery id, the query excluded
>>> search.query_files(index, ["cat.jpg"], k=10)          # embedded with the index's model

Index kinds (scores are inner products of unit vectors: cosine similarity, highest first):

============  ================================================================================
``flat``      faiss ``IndexFlatIP``: exact, a BLAS matmul over the whole gallery (approximate
              with ``pca``: a matmul over fewer dimensions, then ``refine``).
``hnsw``      faiss ``IndexHNSWFlat`` (inner product): a graph of ``m`` links per vector, built
              with ``ef_construction``, searched with ``ef_search`` candidates.
``ivf``       faiss IVF (inner product): ``nlist`` k-means cells of which ``nprobe`` are
              scanned, holding the vectors (float32), scalar-quantised ones (``sq``: 8 or 16
              bits a dimension) or product-quantised codes (``pq`` sub-vectors of
              ``pq_bits`` bits; 4 bits use faiss's fast-scan SIMD kernels).
``jax``       exact top-k in JAX (:func:`exact_top_k`), chunked over the gallery: for small
              galleries, or a store given where an index is expected.
============  ================================================================================

``flat``, ``hnsw`` and ``ivf`` take two more stages: ``pca`` projects vectors of more than ``pca``
dimensions onto the top ``pca`` eigenvectors of their second-moment matrix (a PCA without
centring: centring, as faiss's ``PCAMatrix`` does, changes inner products and loses
neighbours; 0: no projection), and ``refine`` re-ranks ``refine * k`` candidates by their
exact inner products with the full vectors (``IndexRefineFlat``; 0: none), which recovers
the ranking after PCA or quantisation. ``ivf``'s ``nlist=0`` picks :func:`auto_nlist`.

============  ================================================================================

:data:`DEFAULTS` holds the parameters picked with ``benchmarks/search.py`` on 50,000 x 1280
vectors with 10,000 queries (the issue's goal: recall@10 >= 0.95 against exact search at
>= 10x its queries/s; the figures are in benchmarks/RESULTS.md).

An index folder holds ``index.json`` (format, kind, params, ``model`` and ``dim`` of the
embeddings, the gallery store's path and meta), ``index.faiss`` (faiss's serialisation),
``ids.npy`` and ``labels.npy``. A query embedding of another model or dimension is refused
with one line naming both (:class:`MismatchError`).

Command line: ``python -m jaxvision.apps.search {embed,build,query,evaluate} --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence

import faiss
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxvision import cache
from jaxvision.apps import cli
from jaxvision.apps import store as store_lib

INDEX_FORMAT = "jaxvision-index-v1"
INDEX_META = "index.json"
INDEX_FILE = "index.faiss"
KINDS = ("flat", "hnsw", "ivf", "jax")
# Parameters by kind (see the module docstring); chosen with benchmarks/search.py.
DEFAULTS = {
    "flat": {"pca": 0, "refine": 0},
    "hnsw": {"m": 32, "ef_construction": 64, "ef_search": 48, "pca": 256, "refine": 4},
    "ivf": {"nlist": 0, "nprobe": 96, "pca": 256, "sq": 0, "pq": 0, "pq_bits": 8,
            "refine": 4},
    "jax": {"chunk_size": 4096, "query_block": 512},
}


class SearchError(ValueError):
  """Bad search input (unknown id, empty gallery, bad parameters), in one line."""


class MismatchError(SearchError):
  """Embeddings of another model or dimension than the index's (both named)."""


# -- Exact top-k in JAX. ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_scan(queries, chunks, exclude, num_valid, *, k: int):
  """Running top-k of ``queries [Q, D] @ chunks[c].T`` over ``chunks [C, S, D]``."""
  num_queries, chunk = queries.shape[0], chunks.shape[1]
  kk = min(k, chunk)

  def body(carry, xs):
    best_s, best_i = carry
    g, start = xs
    s = jnp.matmul(queries, g.T, precision=lax.Precision.HIGHEST)      # [Q, S]
    idx = start + jnp.arange(chunk, dtype=jnp.int32)                    # [S]
    keep = (idx[None, :] < num_valid) & (idx[None, :] != exclude[:, None])
    s = jnp.where(keep, s, -jnp.inf)
    cs, ci = lax.top_k(s, kk)                                           # [Q, kk]
    # The running best holds lower gallery rows than this chunk: on equal scores top_k keeps
    # the earlier (lower) one, as a stable sort does.
    all_s = jnp.concatenate([best_s, cs], axis=1)
    all_i = jnp.concatenate([best_i, idx[ci]], axis=1)
    ts, ti = lax.top_k(all_s, k)
    return (ts, jnp.take_along_axis(all_i, ti, axis=1)), None

  init = (jnp.full((num_queries, k), -jnp.inf, jnp.float32),
          jnp.full((num_queries, k), -1, jnp.int32))
  starts = jnp.arange(chunks.shape[0], dtype=jnp.int32) * chunk
  (scores, rows), _ = lax.scan(body, init, (chunks, starts))
  return scores, jnp.where(jnp.isfinite(scores), rows, -1)


def _as_chunks(gallery: np.ndarray, chunk_size: int) -> jax.Array:
  n, d = gallery.shape
  chunk = max(1, min(chunk_size, n))
  padded = np.zeros((-(-n // chunk) * chunk, d), np.float32)
  padded[:n] = gallery
  return jnp.asarray(padded.reshape(-1, chunk, d))


def exact_top_k(queries, gallery, k: int, *, exclude=None, chunk_size: int = 4096,
                query_block: int = 512, _chunks=None) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k inner products in JAX: ``jax.lax.top_k`` over ``queries @ gallery.T``.

  The gallery is scanned in chunks of ``chunk_size`` rows and the queries in blocks of
  ``query_block``, so memory beyond the gallery stays ``O(query_block * (chunk_size + k))``.

  Args:
    queries: float32 ``[Q, D]``; gallery: float32 ``[N, D]``.
    k: results per query (>= 1).
    exclude: int ``[Q]`` gallery row to leave out per query (-1: none), e.g. the query itself.

  Returns:
    ``(scores float32 [Q, k], rows int64 [Q, k])``, best first; ties in gallery order.
    Where fewer than ``k`` rows are left, the rest is ``-inf`` and row ``-1``.
  """
  queries = np.asarray(queries, np.float32)
  gallery = np.asarray(gallery, np.float32)
  if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
    raise SearchError(f"expected queries [Q, D] and gallery [N, D] of one D; found "
                      f"{queries.shape} and {gallery.shape}")
  _check_k(k)
  if len(gallery) == 0:
    raise SearchError("empty gallery: nothing to search")
  n = len(gallery)
  exclude = (np.full(len(queries), -1, np.int32) if exclude is None
             else np.asarray(exclude, np.int32))
  chunks = _chunks if _chunks is not None else _as_chunks(gallery, chunk_size)
  block = max(1, min(query_block, len(queries)))
  scores, rows = [], []
  for start in range(0, len(queries), block):
    q = np.zeros((block, queries.shape[1]), np.float32)
    ex = np.full(block, -1, np.int32)
    m = min(block, len(queries) - start)
    q[:m], ex[:m] = queries[start:start + m], exclude[start:start + m]
    s, r = _top_k_scan(jnp.asarray(q), chunks, jnp.asarray(ex), jnp.int32(n), k=k)
    scores.append(np.asarray(s)[:m])
    rows.append(np.asarray(r)[:m])
  if not scores:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  return np.concatenate(scores), np.concatenate(rows).astype(np.int64)


def _check_k(k):
  if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
    raise SearchError(f"k must be a positive number of results; found {k!r}")


# -- Indexes. --------------------------------------------------------------------------------------


def _identity_meta(meta: Mapping) -> dict:
  keep = ("dataset", "split", "source", "class_names", "files", "embedder", "preprocessing",
          "image_shape")
  return {key: meta[key] for key in keep if key in meta}


@dataclasses.dataclass
class SearchIndex:
  """A gallery of unit vectors ready to search.

  Attributes:
    kind: one of :data:`KINDS`; params: its parameters.
    model: the embeddings' model identity string; dim: their dimension ``D``.
    ids: int64 ``[N]`` gallery ids (positions in the store's source); labels: ``[N]`` class
      ids (-1: none) or multi-hot ``[N, L]``.
    gallery: the store's meta that queries need (``dataset``, ``split``, ``class_names``,
      ``files``, ``source``, ``embedder``, ...) plus ``store`` (its folder, when known).
    index: the faiss index (kinds other than ``jax``); vectors: float32 ``[N, D]`` (``jax``;
      for faiss kinds, loaded from the store when a query by id needs them).
  """
  kind: str
  params: dict
  model: str
  dim: int
  ids: np.ndarray
  labels: np.ndarray
  gallery: dict
  index: object | None = None
  vectors: np.ndarray | None = None

  def __post_init__(self):
    self._rows = {int(i): r for r, i in enumerate(self.ids)}
    self._chunks = None

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def class_names(self) -> list:
    return list(self.gallery.get("class_names") or [])

  def describe(self) -> str:
    return f"{self.model!r} embeddings of dim {self.dim}"

  def check_queries(self, queries: np.ndarray, *, model: str | None = None,
                    what: str = "the queries") -> np.ndarray:
    """``queries`` as float32 ``[Q, D]``; a :class:`MismatchError` naming both models and
    dimensions when they are another model's (``model`` given) or another dimension."""
    queries = np.asarray(queries, np.float32)
    if queries.ndim == 1:
      queries = queries[None]
    dim = queries.shape[-1] if queries.ndim == 2 else None
    if queries.ndim != 2 or dim != self.dim or (model is not None and model != self.model):
      shape = f"dim {dim}" if dim is not None else f"shape {queries.shape}"
      raise MismatchError(f"the index holds {self.describe()}; {what} are "
                          f"{model or 'unnamed'!r} embeddings of {shape}: embed them with "
                          "the index's model")
    return queries

  def rows_of(self, ids: Sequence[int]) -> np.ndarray:
    """Gallery rows of ``ids``; a one-line :class:`SearchError` for an unknown id."""
    rows = []
    for i in ids:
      row = self._rows.get(int(i))
      if row is None:
        lo, hi = (int(self.ids.min()), int(self.ids.max())) if len(self.ids) else (0, -1)
        raise SearchError(f"unknown id {int(i)}: the gallery holds {len(self.ids)} ids from "
                          f"{lo} to {hi}")
      rows.append(row)
    return np.asarray(rows, np.int64)

  def gallery_vectors(self) -> np.ndarray:
    """The gallery's vectors (read from its store for faiss kinds)."""
    if self.vectors is None:
      folder = self.gallery.get("store")
      if not folder:
        raise SearchError("the index does not know its store: pass --store")
      emb = store_lib.load(folder)
      check_same_gallery(self, emb, f"the store {folder}")
      self.vectors = emb.vectors
    return self.vectors

  def search(self, queries, k: int, *, exclude=None, model: str | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows of each query.

    Args:
      queries: float32 ``[Q, D]`` unit vectors (``D`` must be :attr:`dim`).
      k: results per query.
      exclude: int ``[Q]`` gallery row left out per query (-1: none): the query itself when
        querying by id.
      model: the queries' model identity; refused when it is not :attr:`model`.

    Returns:
      ``(scores float32 [Q, k], rows int64 [Q, k])``, highest score first; ``-inf`` and
      ``-1`` where fewer than ``k`` rows exist.
    """
    _check_k(k)
    queries = self.check_queries(queries, model=model)
    if self.kind == "jax":
      if self._chunks is None:
        self._chunks = _as_chunks(self.vectors, self.params["chunk_size"])
      return exact_top_k(queries, self.vectors, k, exclude=exclude,
                         query_block=self.params["query_block"], _chunks=self._chunks)
    extra = 0 if exclude is None else 1
    kk = min(k + extra, len(self))
    scores, rows = self.index.search(np.ascontiguousarray(queries), kk)
    rows = rows.astype(np.int64)
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
    if exclude is not None:
      dropped = rows == np.asarray(exclude, np.int64)[:, None]
      # Move the excluded row (if found) to the end, keeping the order of the others.
      order = np.argsort(dropped, axis=1, kind="stable")
      rows = np.take_along_axis(rows, order, axis=1)
      scores = np.take_along_axis(scores, order, axis=1)
      dropped = np.take_along_axis(dropped, order, axis=1)
      rows, scores = np.where(dropped, -1, rows), np.where(dropped, -np.inf, scores)
      rows, scores = rows[:, :min(k, kk)], scores[:, :min(k, kk)]
    if rows.shape[1] < k:
      pad = k - rows.shape[1]
      rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
      scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return scores.astype(np.float32), rows

  def set_search_params(self, **params) -> None:
    """Changes search-time parameters (``ef_search``, ``nprobe``, ``refine``) in place."""
    allowed = {"flat": ("refine",), "hnsw": ("ef_search", "refine"),
               "ivf": ("nprobe", "refine"),
               "jax": ("query_block",)}.get(self.kind, ())
    for key, value in params.items():
      if key not in allowed:
        raise SearchError(f"{key} is not a search parameter of a {self.kind!r} index "
                          f"(those are: {', '.join(allowed) or 'none'})")
      if not (isinstance(value, (int, np.integer)) and value >= 1 - (key == "refine")):
        raise SearchError(f"{key} must be a positive integer; found {value!r}")
      if key == "refine" and bool(value) != bool(self.params["refine"]):
        raise SearchError(f"this index was built {'with' if self.params['refine'] else 'without'}"
                          " a re-ranking stage: refine can change only between positive values")
      self.params[key] = int(value)
    if self.index is not None:
      _apply_search_params(self.index, self.kind, self.params)

  # -- Disk. --------------------------------------------------------------------------------------

  def save(self, folder: str | os.PathLike) -> pathlib.Path:
    """Writes the index folder (each file atomically); returns it."""
    folder = pathlib.Path(folder)
    if (folder / store_lib.META).exists():
      raise SearchError(f"{folder} is an embedding store: save the index to another folder")
    folder.mkdir(parents=True, exist_ok=True)
    if self.index is not None:
      data = faiss.serialize_index(self.index)
      cache.write_atomically(folder / INDEX_FILE, lambda f: f.write(data.tobytes()))
    for name, array in (("ids.npy", self.ids), ("labels.npy", self.labels)):
      buf = io.BytesIO()
      np.save(buf, array, allow_pickle=False)
      cache.write_atomically(folder / name, lambda f, b=buf: f.write(b.getvalue()))
    meta = {"format": INDEX_FORMAT, "kind": self.kind, "params": self.params,
            "model": self.model, "dim": self.dim, "num_vectors": len(self),
            "gallery": self.gallery}
    text = json.dumps(meta, indent=1, sort_keys=True).encode()
    cache.write_atomically(folder / INDEX_META, lambda f: f.write(text))
    return folder


def _apply_search_params(index, kind: str, params: Mapping) -> None:
  ps = faiss.ParameterSpace()
  if kind == "hnsw":
    ps.set_index_parameter(index, "efSearch", int(params["ef_search"]))
  elif kind == "ivf":
    ps.set_index_parameter(index, "nprobe", int(params["nprobe"]))
  if params.get("refine"):
    ps.set_index_parameter(index, "k_factor_rf", float(params["refine"]))


def _params(kind: str, params: Mapping, n: int, dim: int) -> dict:
  if kind not in KINDS:
    raise SearchError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")
  unknown = sorted(set(params) - set(DEFAULTS[kind]))
  if unknown:
    raise SearchError(f"unknown parameter(s) {', '.join(unknown)} for a {kind!r} index; "
                      f"expected {', '.join(DEFAULTS[kind]) or 'none'}")
  out = {**DEFAULTS[kind], **{k: v for k, v in params.items() if v is not None}}
  for key, value in out.items():
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0):
      raise SearchError(f"{kind} parameter {key} must be a non-negative integer; found {value!r}")
  if out.get("pca", 0) >= dim:
    out["pca"] = 0  # vectors of at most ``pca`` dimensions are kept whole
  if kind == "ivf":
    if out["nlist"] == 0:
      out["nlist"] = auto_nlist(n)
    out["nprobe"] = min(out["nprobe"], out["nlist"])
    if out["nprobe"] < 1:
      raise SearchError(f"ivf needs nprobe >= 1; found {out['nprobe']}")
    if n < out["nlist"]:
      raise SearchError(f"an ivf index of nlist={out['nlist']} cells needs at least that many "
                        f"vectors to train on; the gallery has {n} (use fewer cells or 'hnsw')")
    d = out["pca"] or dim
    if out["sq"] not in (0, 8, 16) or (out["sq"] and out["pq"]):
      raise SearchError(f"sq must be 0 (float32 vectors), 8 or 16 bits, and not combined with "
                        f"pq; found sq={out['sq']}, pq={out['pq']}")
    if out["pq"] and (d % out["pq"] or out["pq_bits"] not in (4, 8)):
      raise SearchError(f"pq={out['pq']} sub-vectors must divide the dimension {d} and pq_bits "
                        f"be 4 or 8; found pq_bits={out['pq_bits']}")
  if kind == "hnsw" and (out["m"] < 2 or out["ef_search"] < 1 or out["ef_construction"] < 1):
    raise SearchError(f"hnsw needs m >= 2, ef_construction >= 1, ef_search >= 1; found {out}")
  if kind == "jax" and (out["chunk_size"] < 1 or out["query_block"] < 1):
    raise SearchError(f"jax needs chunk_size >= 1 and query_block >= 1; found {out}")
  return out


def auto_nlist(n: int) -> int:
  """IVF cells for ``n`` vectors when ``nlist=0``: the power of two nearest ``n / 24`` (about
  24 vectors a cell: 2048 for 50,000 vectors, 512 for 10,000), at least 1."""
  return int(2 ** max(0, round(math.log2(max(n / 24, 1)))))


def describe(kind: str, dim: int, params: Mapping) -> str:
  """A faiss-factory-like description of an index, e.g. ``'PCA256(uncentred),IVF1024,Flat,
  RFlat(4)'``."""
  if kind == "jax":
    return "JAX exact"
  pre = f"PCA{params['pca']}(uncentred)," if params.get("pca") else ""
  if kind == "flat":
    body = "Flat"
  elif kind == "hnsw":
    body = f"HNSW{params['m']},Flat"
  elif params["sq"]:
    body = f"IVF{params['nlist']},SQ{'fp16' if params['sq'] == 16 else 8}"
  elif not params["pq"]:
    body = f"IVF{params['nlist']},Flat"
  else:
    body = f"IVF{params['nlist']},PQ{params['pq']}x{params['pq_bits']}" + (
        "fs" if params["pq_bits"] == 4 else "")
  return pre + body + (f",RFlat({params['refine']})" if params.get("refine") else "")


def uncentred_pca(vectors: np.ndarray, dim: int, *, max_samples: int = 100_000,
                  seed: int = 0) -> np.ndarray:
  """float32 ``[D, dim]``: the top ``dim`` eigenvectors of ``E[x x^T]`` (float64) over up to
  ``max_samples`` rows of ``vectors [N, D]``; ``x @ P`` keeps inner products best."""
  if len(vectors) > max_samples:
    rows = np.random.default_rng(seed).choice(len(vectors), max_samples, replace=False)
    vectors = vectors[np.sort(rows)]
  x = np.asarray(vectors, np.float64)
  w, v = np.linalg.eigh(x.T @ x / len(x))
  return np.ascontiguousarray(v[:, np.argsort(-w)[:dim]], np.float32)


def _faiss_index(kind: str, dim: int, params: Mapping, vectors: np.ndarray):
  """The untrained faiss index of ``kind`` (trained and filled by the caller)."""
  metric = faiss.METRIC_INNER_PRODUCT
  d = params["pca"] or dim
  if kind == "flat":
    index = faiss.IndexFlatIP(d)
  elif kind == "hnsw":
    index = faiss.IndexHNSWFlat(d, params["m"], metric)
    index.hnsw.efConstruction = params["ef_construction"]
  else:
    quantizer = faiss.IndexFlatIP(d)
    if params["sq"]:
      qtype = {8: faiss.ScalarQuantizer.QT_8bit, 16: faiss.ScalarQuantizer.QT_fp16}[params["sq"]]
      index = faiss.IndexIVFScalarQuantizer(quantizer, d, params["nlist"], qtype, metric)
    elif not params["pq"]:
      index = faiss.IndexIVFFlat(quantizer, d, params["nlist"], metric)
    elif params["pq_bits"] == 4:
      index = faiss.IndexIVFPQFastScan(quantizer, d, params["nlist"], params["pq"], 4, metric)
    else:
      index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["pq"], 8, metric)
  # faiss's Python constructors keep the sub-indexes and transforms they are given alive.
  if params["pca"]:
    transform = faiss.LinearTransform(dim, d, False)
    faiss.copy_array_to_vector(uncentred_pca(vectors, d).T.ravel(), transform.A)
    transform.is_trained = True
    index = faiss.IndexPreTransform(transform, index)
  if params["refine"]:
    index = faiss.IndexRefineFlat(index)
  return index


def build_index(gallery: store_lib.Embeddings, kind: str = "hnsw", *,
                store_path: str | os.PathLike | None = None, **params) -> SearchIndex:
  """An index of ``kind`` over ``gallery``'s vectors (parameters: :data:`DEFAULTS`).

  Raises:
    SearchError: an empty gallery, an unknown kind or parameter, an IVF index with more
      cells than vectors.
  """
  n = len(gallery)
  if n == 0:
    raise SearchError("empty gallery: the store holds no vectors to index")
  dim = gallery.dim
  params = _params(kind, params, n, dim)
  vectors = np.ascontiguousarray(gallery.vectors, np.float32)
  meta = _identity_meta(gallery.meta)
  if store_path is not None:
    meta["store"] = str(pathlib.Path(store_path).resolve())
  model = gallery.meta.get("model", "unknown")
  out = SearchIndex(kind, params, model, dim, np.asarray(gallery.ids, np.int64),
                    np.asarray(gallery.labels), meta)
  if kind == "jax":
    out.vectors = vectors
    return out
  index = _faiss_index(kind, dim, params, vectors)
  if not index.is_trained:
    index.train(vectors)
  index.add(vectors)
  _apply_search_params(index, kind, params)
  out.index = index
  return out


def load_index(folder: str | os.PathLike) -> SearchIndex:
  """An index folder (``index.json``), or a store folder (``meta.json``) as a ``jax`` index."""
  folder = pathlib.Path(folder)
  if (folder / INDEX_META).is_file():
    try:
      meta = json.loads((folder / INDEX_META).read_text())
      if meta.get("format") != INDEX_FORMAT:
        raise SearchError(f"{folder / INDEX_META}: expected format {INDEX_FORMAT!r}, found "
                          f"{meta.get('format')!r}")
      ids = np.load(folder / "ids.npy", allow_pickle=False)
      labels = np.load(folder / "labels.npy", allow_pickle=False)
      index = None
      if meta["kind"] != "jax":
        data = np.fromfile(folder / INDEX_FILE, dtype=np.uint8)
        index = faiss.deserialize_index(data)
    except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError) as e:
      if isinstance(e, SearchError):
        raise
      first = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise SearchError(f"index {folder} is damaged ({type(e).__name__}: {first[:160]}): "
                        "build it again") from None
    if index is not None and (index.d != meta["dim"] or index.ntotal != len(ids)):
      raise SearchError(f"index {folder} is damaged: index.faiss holds {index.ntotal} vectors "
                        f"of dim {index.d}, index.json says {len(ids)} of dim {meta['dim']}")
    out = SearchIndex(meta["kind"], meta["params"], meta["model"], meta["dim"], ids, labels,
                      meta["gallery"], index)
    if meta["kind"] == "jax":
      out.gallery_vectors()
    return out
  if (folder / store_lib.META).is_file():
    return build_index(store_lib.load(folder), "jax", store_path=folder)
  raise SearchError(f"expected an index folder ({INDEX_META}) or an embedding store "
                    f"({store_lib.META}) at {folder}; found neither")


def check_same_gallery(index: SearchIndex, emb: store_lib.Embeddings, what: str) -> None:
  """A :class:`MismatchError` unless ``emb`` is the index's gallery (model, dim, ids)."""
  model, dim = emb.meta.get("model"), emb.dim
  if model != index.model or dim != index.dim:
    raise MismatchError(f"the index holds {index.describe()}; {what} holds {model!r} "
                        f"embeddings of dim {dim}")
  if len(emb) != len(index) or not np.array_equal(emb.ids, index.ids):
    raise MismatchError(f"the index was built on another gallery of {index.describe()} "
                        f"({len(index)} vectors) than {what} ({len(emb)} vectors)")


# -- Queries and results. --------------------------------------------------------------------------


def label_name(label, class_names: Sequence[str]):
  """A class id's name (None for -1), or the names of a multi-hot row's labels."""
  label = np.asarray(label)
  if label.ndim == 1:
    return [class_names[j] if j < len(class_names) else str(j) for j in np.flatnonzero(label)]
  value = int(label)
  if value < 0:
    return None
  return class_names[value] if value < len(class_names) else str(value)


def labels_match(a, b) -> bool | None:
  """Whether two labels agree (multi-hot: share a label); None when either is unknown."""
  a, b = np.asarray(a), np.asarray(b)
  if a.ndim == 1:
    return bool(np.any((a > 0) & (b > 0))) if a.any() and b.any() else None
  if int(a) < 0 or int(b) < 0:
    return None
  return int(a) == int(b)


def results_json(index: SearchIndex, scores: np.ndarray, rows: np.ndarray,
                 queries: Sequence[dict]) -> list[dict]:
  """Per query: ``{'query': queries[i], 'results': [{'id', 'score', 'label'}, ...]}``."""
  names = index.class_names
  out = []
  for q, s_row, r_row in zip(queries, scores, rows):
    hits = [{"id": int(index.ids[r]), "score": float(s),
             "label": label_name(index.labels[r], names)}
            for s, r in zip(s_row, r_row) if r >= 0]
    out.append({"query": q, "results": hits})
  return out


def query_ids(index: SearchIndex, ids: Sequence[int], *, k: int = 10,
              source: store_lib.Embeddings | None = None) -> list[dict]:
  """Results of gallery items queried by id, each excluding itself; with ``source`` (another
  store of the same model, e.g. the test split against a train gallery) the ids are that
  store's and nothing is excluded."""
  if not len(ids):
    raise SearchError("no ids given")
  if source is None:
    rows = index.rows_of(ids)
    vectors = index.gallery_vectors()[rows]
    scores, found = index.search(vectors, k, exclude=rows, model=index.model)
    labels = [index.labels[r] for r in rows]
    names = index.class_names
  else:
    lookup = {int(i): r for r, i in enumerate(source.ids)}
    rows = []
    for i in ids:
      if int(i) not in lookup:
        raise SearchError(f"unknown id {int(i)}: the query store holds {len(source)} ids")
      rows.append(lookup[int(i)])
    queries = index.check_queries(source.vectors[rows], model=source.meta.get("model"),
                                  what="the query store's vectors")
    scores, found = index.search(queries, k)
    labels = [source.labels[r] for r in rows]
    names = list(source.meta.get("class_names") or [])
  queries = [{"id": int(i), "label": label_name(lab, names)} for i, lab in zip(ids, labels)]
  return results_json(index, scores, found, queries)


def query_files(index: SearchIndex, paths: Sequence[str | os.PathLike], *, k: int = 10,
                embedder=None) -> list[dict]:
  """Results of image files, embedded with the index's model (``embedder``: that model as an
  ``apps.embed.Embedder``, default rebuilt from the index's gallery meta)."""
  from jaxvision.apps import embed  # pylint: disable=g-import-not-at-top
  if not paths:
    raise SearchError("no query images given")
  if embedder is None:
    embedder = embed.Embedder.for_store({"model": index.model, **index.gallery})
  vectors = embed.embed_files(embedder, paths)
  scores, rows = index.search(vectors, k, model=embedder.model)
  return results_json(index, scores, rows, [{"file": str(p)} for p in paths])


# -- Evaluation. -----------------------------------------------------------------------------------


def precision_at_k(query_labels: np.ndarray, gallery_labels: np.ndarray,
                   rows: np.ndarray, class_names: Sequence[str] = ()) -> dict:
  """Precision@k by class label: the mean over queries with a label of the fraction of their
  ``k`` results (``rows [Q, k]``, -1: none, counted as a miss) with the query's label
  (multi-hot: sharing one). Also per class name (single labels)."""
  q_lab = np.asarray(query_labels)
  g_lab = np.asarray(gallery_labels)
  k = rows.shape[1]
  found = rows >= 0
  if g_lab.ndim == 1:
    hit = (g_lab[np.maximum(rows, 0)] == q_lab[:, None]) & found
    valid = q_lab >= 0
  else:
    hit = np.einsum("ql,qkl->qk", (q_lab > 0).astype(np.int32),
                    (g_lab[np.maximum(rows, 0)] > 0).astype(np.int32)) > 0
    hit &= found
    valid = q_lab.any(axis=1)
  per_query = hit.sum(axis=1) / k
  out = {"precision_at_k": float(per_query[valid].mean()) if valid.any() else None,
         "num_queries": int(valid.sum())}
  if g_lab.ndim == 1 and valid.any():
    out["per_class"] = {
        (class_names[c] if c < len(class_names) else str(c)):
            float(per_query[q_lab == c].mean()) for c in np.unique(q_lab[valid])}
  return out


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
  """Mean over queries of ``|approx top-k ∩ exact top-k| / |exact top-k|``."""
  total = []
  for a, e in zip(approx_rows, exact_rows):
    e = e[e >= 0]
    if len(e):
      total.append(len(np.intersect1d(a[a >= 0], e)) / len(e))
  return float(np.mean(total)) if total else float("nan")


def time_queries(index: SearchIndex, queries: np.ndarray, k: int, *, exclude=None,
                 single: int = 200, repeats: int = 1) -> tuple[dict, np.ndarray, np.ndarray]:
  """Queries/s of ``index`` batched (all queries in one call; median of ``repeats``) and one
  query at a time (the first ``single`` queries, one call each), after warm-up calls. Returns
  the figures and the batched results."""
  index.search(queries[:256], k, exclude=None if exclude is None else exclude[:256])
  for i in range(min(5, len(queries))):
    index.search(queries[i:i + 1], k)
  times, result = [], None
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    result = index.search(queries, k, exclude=exclude)
    times.append(time.perf_counter() - t0)
  batched = float(np.median(times))
  m = min(single, len(queries))
  t0 = time.perf_counter()
  for i in range(m):
    index.search(queries[i:i + 1], k, exclude=None if exclude is None else exclude[i:i + 1])
  single_s = time.perf_counter() - t0
  figures = {"batched_queries_per_s": len(queries) / batched, "batched_seconds": batched,
             "num_queries": len(queries), "single_queries_per_s": m / single_s if m else None,
             "single_num_queries": m}
  return figures, result[0], result[1]


def evaluate(gallery: store_lib.Embeddings, *, k: int = 10, index: SearchIndex | None = None,
             queries: store_lib.Embeddings | None = None, single: int = 200,
             repeats: int = 1) -> dict:
  """Search quality and speed over ``gallery``.

  Exact search (faiss ``IndexFlatIP``) of every query gives precision@k by class label; with
  ``queries`` None every gallery vector queries the rest (itself excluded), else the
  ``queries`` store's vectors query the gallery. With an approximate ``index`` of the same
  gallery: its recall@k against exact search. Queries/s of both, batched and one at a time
  (``single`` queries), with faiss's thread count.
  """
  _check_k(k)
  if len(gallery) == 0:
    raise SearchError("empty gallery: nothing to evaluate")
  exact = build_index(gallery, "flat")
  if queries is None:
    q_vectors, q_labels = gallery.vectors, gallery.labels
    exclude = np.arange(len(gallery), dtype=np.int64)
  else:
    if queries.meta.get("model") != gallery.meta.get("model") or queries.dim != gallery.dim:
      raise MismatchError(f"the gallery store holds {gallery.meta.get('model')!r} embeddings "
                          f"of dim {gallery.dim}; the query store holds "
                          f"{queries.meta.get('model')!r} embeddings of dim {queries.dim}")
    q_vectors, q_labels, exclude = queries.vectors, queries.labels, None
  if index is not None:
    check_same_gallery(index, gallery, "the gallery store")
  names = list(gallery.meta.get("class_names") or [])
  exact_speed, _, exact_rows = time_queries(exact, q_vectors, k, exclude=exclude,
                                            single=single, repeats=repeats)
  out = {"k": k, "gallery": {"model": gallery.meta.get("model"), "dim": gallery.dim,
                             "num_vectors": len(gallery), "dataset": gallery.meta.get("dataset"),
                             "split": gallery.meta.get("split")},
         "queries": ("every gallery vector, itself excluded" if queries is None else
                     {"dataset": queries.meta.get("dataset"), "split": queries.meta.get("split"),
                      "num_queries": len(queries)}),
         "faiss_threads": faiss.omp_get_max_threads(),
         **precision_at_k(q_labels, gallery.labels, exact_rows, names),
         "exact": {"kind": "flat", **exact_speed}}
  if index is not None:
    speed, _, rows = time_queries(index, q_vectors, k, exclude=exclude, single=single,
                                  repeats=repeats)
    out["approximate"] = {
        "kind": index.kind, "params": index.params,
        "recall_at_k": recall_at_k(rows, exact_rows), **speed,
        "speedup_batched": speed["batched_queries_per_s"] / exact_speed["batched_queries_per_s"],
        "speedup_single": (speed["single_queries_per_s"] / exact_speed["single_queries_per_s"]
                           if speed["single_queries_per_s"] else None),
        "precision_at_k": precision_at_k(q_labels, gallery.labels, rows)["precision_at_k"]}
  return out


# -- Contact sheet. --------------------------------------------------------------------------------


def gallery_images(gallery: Mapping, ids: Sequence[int]) -> list[np.ndarray]:
  """uint8 ``[H, W, C]`` images of gallery ``ids`` read back from the store's source: the
  dataset split (ids are positions in it) or the image folder (``files``)."""
  ids = [int(i) for i in ids]
  if gallery.get("files"):
    from jaxvision.data import images as image_io  # pylint: disable=g-import-not-at-top
    root = pathlib.Path(gallery["source"])
    channels = (gallery.get("image_shape") or [None, None, 3])[-1] or 3
    return [image_io.read_image(root / gallery["files"][i], channels).numpy() for i in ids]
  if gallery.get("dataset"):
    from jaxvision import data  # pylint: disable=g-import-not-at-top
    from jaxvision.data import pipeline  # pylint: disable=g-import-not-at-top
    builder, info = data.get_dataset(gallery["dataset"])
    images, _ = pipeline.load_split(builder, info, gallery["split"])
    return [images[i] for i in ids]
  raise SearchError("the gallery's images cannot be read back: its store names no dataset "
                    "or files")


def contact_sheet(rows: Sequence[dict], path: str | os.PathLike, *, title: str = "") -> None:
  """Writes a PNG: per row, the query image then its results with scores and labels.

  ``rows``: ``{'image': uint8 [H, W, C], 'title': str, 'results': [{'image', 'score',
  'label', 'match': bool | None}, ...]}``; a result's title is green when its label matches
  the query's, red when it differs, black when unknown.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  if not rows:
    raise SearchError("no queries to draw")
  cols = 1 + max(len(r["results"]) for r in rows)
  fig = Figure(figsize=(1.6 * cols, 1.9 * len(rows) + (0.4 if title else 0)))
  axes = fig.subplots(len(rows), cols, squeeze=False)
  colors = {True: "green", False: "red", None: "black"}
  for i, row in enumerate(rows):
    cells = [(row["image"], row["title"], "blue")] + [
        (r["image"], f"{r['score']:.3f}\n{r['label']}", colors[r["match"]])
        for r in row["results"]]
    for j, ax in enumerate(axes[i]):
      ax.set_xticks([])
      ax.set_yticks([])
      if j >= len(cells):
        ax.axis("off")
        continue
      image, text, color = cells[j]
      image = np.asarray(image)
      if image.ndim == 3 and image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
      else:
        ax.imshow(image)
      ax.set_title(text, fontsize=7, color=color)
      for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(2 if j == 0 else 1)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)


def sheet_rows(index: SearchIndex, results: Sequence[dict], *,
               query_gallery: Mapping | None = None) -> list[dict]:
  """The :func:`contact_sheet` rows of query results (images read back by id, or files)."""
  from jaxvision.data import images as image_io  # pylint: disable=g-import-not-at-top
  result_ids = sorted({h["id"] for r in results for h in r["results"]})
  images = dict(zip(result_ids, gallery_images(index.gallery, result_ids)))
  channels = (index.gallery.get("image_shape") or [None, None, 3])[-1] or 3
  by_id = [r["query"]["id"] for r in results if "id" in r["query"]]
  q_images = dict(zip(by_id, gallery_images(query_gallery or index.gallery, by_id)))
  rows = []
  for r in results:
    q = r["query"]
    if "file" in q:
      image, title, label = image_io.read_image(q["file"], channels).numpy(), \
          pathlib.Path(q["file"]).name, None
    else:
      image, label = q_images[q["id"]], q.get("label")
      title = f"query {q['id']}" + (f"\n{label}" if label is not None else "")
    hits = [{"image": images[h["id"]], "score": h["score"], "label": h["label"],
             "match": None if label is None or h["label"] is None else h["label"] == label}
            for h in r["results"]]
    rows.append({"image": image, "title": title, "results": hits})
  return rows


# -- Command line. ---------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
  try:
    return [int(t) for t in text.replace(",", " ").split()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected integer ids like 3,17; found {text!r}") from None


def _parser() -> argparse.ArgumentParser:
  p = cli.OneLineParser(
      prog="python -m jaxvision.apps.search",
      description="Image search over embeddings: embed a dataset or an image folder into a "
                  "store, build a faiss index, query it by image or id, evaluate precision@k, "
                  "recall@k and queries/s. JSON on stdout (or --out), progress on stderr.")
  sub = p.add_subparsers(dest="command", required=True, parser_class=cli.OneLineParser)

  e = sub.add_parser("embed", help="images -> an embedding store (resumable)",
                     description="Embeds a dataset split or a folder of images into a store "
                                 "(chunks already written are kept and skipped).")
  e.add_argument("--model", required=True,
                 help="'EfficientNetLite0' (ImageNet weights), a classification workdir, or "
                      "'pixels'")
  e.add_argument("--pp", default=None, help="preprocessing override, e.g. "
                 "'resize(112)|value_range(-0.9921875, 1)'")
  src = e.add_mutually_exclusive_group(required=True)
  src.add_argument("--dataset", help="registered dataset name, e.g. cifar10")
  src.add_argument("--images", help="a folder of image files (labels unknown)")
  e.add_argument("--split", default="test", help="dataset split (default test)")
  e.add_argument("--data-dir", default=None, help="the dataset's local folder")
  e.add_argument("--out", required=True, help="store folder")
  e.add_argument("--batch-size", type=int, default=256, help="global batch (default 256)")
  e.add_argument("--chunk-size", type=int, default=4096, help="vectors per chunk file")
  e.add_argument("--num-devices", type=int, default=None, help="mesh size (default: all)")
  e.add_argument("--overwrite", action="store_true", help="start the store over")

  b = sub.add_parser("build", help="store -> index",
                     description="Builds a faiss index over a store and saves it.")
  b.add_argument("--store", required=True, help="embedding store folder")
  b.add_argument("--kind", choices=KINDS, default="hnsw", help="index kind (default hnsw)")
  b.add_argument("--out", required=True, help="index folder")
  for key in sorted({k for d in DEFAULTS.values() for k in d}):
    b.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, dest=key,
                   help=f"({', '.join(kd for kd, d in DEFAULTS.items() if key in d)}) default "
                        + ", ".join(str(d[key]) for d in DEFAULTS.values() if key in d))
  b.add_argument("--threads", type=int, default=None, help="faiss threads (default: all)")

  q = sub.add_parser("query", help="query an index by image files or ids",
                     description="Top-k gallery items of query images (embedded with the "
                                 "index's model) or of gallery ids (each excluding itself).")
  q.add_argument("--index", required=True, help="index folder, or a store (exact JAX search)")
  what = q.add_mutually_exclusive_group(required=True)
  what.add_argument("--images", nargs="+", help="query image files")
  what.add_argument("--ids", type=_int_list, help="gallery ids, e.g. 3,17")
  q.add_argument("--from-store", default=None,
                 help="with --ids: the ids are this store's (same model), e.g. the test split")
  q.add_argument("--store", default=None, help="the gallery store, if it moved")
  q.add_argument("-k", "--k", type=int, default=10, help="results per query (default 10)")
  q.add_argument("--ef-search", type=int, default=None, help="hnsw search candidates")
  q.add_argument("--nprobe", type=int, default=None, help="ivf cells scanned")
  q.add_argument("--threads", type=int, default=None,
                 help="faiss threads (default: all; 1 is fastest for a few queries)")
  q.add_argument("--sheet", default=None, help="also write a PNG contact sheet here")
  q.add_argument("--out", default=None, help="JSON file (default stdout)")

  v = sub.add_parser("evaluate", help="precision@k, recall@k and queries/s",
                     description="Every gallery vector queries the rest (or --queries' vectors "
                                 "query the gallery): precision@k by class label with exact "
                                 "search; with --index, its recall@k against exact search; "
                                 "queries/s of both.")
  v.add_argument("--store", required=True, help="the gallery store")
  v.add_argument("--index", default=None, help="an approximate index of that store")
  v.add_argument("--queries", default=None, help="a store of query vectors (same model)")
  v.add_argument("-k", "--k", type=int, default=10, help="k (default 10)")
  v.add_argument("--single", type=int, default=200,
                 help="queries timed one at a time (default 200)")
  v.add_argument("--threads", type=int, default=None, help="faiss threads (default: all)")
  v.add_argument("--out", default=None, help="JSON file (default stdout)")
  return p


def _threads(n: int | None) -> None:
  if n is not None:
    if n < 1:
      raise SearchError(f"--threads must be >= 1; found {n}")
    faiss.omp_set_num_threads(n)


def _run(args) -> None:
  """Runs one subcommand; faiss's thread count is restored afterwards."""
  threads = faiss.omp_get_max_threads()
  try:
    _run_command(args)
  finally:
    faiss.omp_set_num_threads(threads)


def _run_command(args) -> None:
  if args.command == "embed":
    from jaxvision.apps import embed  # pylint: disable=g-import-not-at-top
    embedder = embed.make_embedder(args.model, pp=args.pp)
    kwargs = dict(batch_size=args.batch_size, chunk_size=args.chunk_size,
                  num_devices=args.num_devices, overwrite=args.overwrite)
    if args.dataset:
      meta = embed.embed_dataset(embedder, args.dataset, args.split, args.out,
                                 data_dir=args.data_dir, **kwargs)
    else:
      if args.images and not embedder.image_shape[0] and embedder.spec and \
          embedder.spec["kind"] == "pixels" and args.pp is None:
        raise SearchError("pixels of an image folder need one size: pass --pp='resize(32)|"
                          "value_range(-1, 1)' or similar")
      meta = embed.embed_folder(embedder, args.images, args.out, **kwargs)
    meta.pop("files", None)
    cli.emit(meta, None)
  elif args.command == "build":
    _threads(args.threads)
    gallery = store_lib.load(args.store)
    params = {k: getattr(args, k) for k in DEFAULTS[args.kind] if getattr(args, k) is not None}
    given = {k for d in DEFAULTS.values() for k in d if getattr(args, k, None) is not None}
    if given - set(DEFAULTS[args.kind]):
      raise SearchError(f"--{', --'.join(sorted(given - set(DEFAULTS[args.kind])))} do not "
                        f"apply to a {args.kind!r} index")
    t0 = time.perf_counter()
    index = build_index(gallery, args.kind, store_path=args.store, **params)
    seconds = time.perf_counter() - t0
    index.save(args.out)
    cli.emit({"index": str(args.out), "kind": index.kind, "params": index.params,
              "model": index.model, "dim": index.dim, "num_vectors": len(index),
              "build_seconds": seconds, "faiss_threads": faiss.omp_get_max_threads()}, None)
  elif args.command == "query":
    _threads(args.threads)
    index = load_index(args.index)
    if args.store:
      index.gallery["store"] = str(pathlib.Path(args.store).resolve())
    tuning = {k: getattr(args, k) for k in ("ef_search", "nprobe") if getattr(args, k)}
    if tuning:
      index.set_search_params(**tuning)
    _check_k(args.k)
    source = None
    if args.images:
      if args.from_store:
        raise SearchError("--from-store goes with --ids, not --images")
      results = query_files(index, args.images, k=args.k)
    else:
      source = store_lib.load(args.from_store) if args.from_store else None
      results = query_ids(index, args.ids, k=args.k, source=source)
    if args.sheet:
      rows = sheet_rows(index, results, query_gallery=None if source is None else source.meta)
      contact_sheet(rows, args.sheet, title=f"{index.model} ({index.kind}), top {args.k}")
      print(f"wrote {args.sheet}", file=sys.stderr)
    cli.emit(results, args.out)
  elif args.command == "evaluate":
    _threads(args.threads)
    gallery = store_lib.load(args.store)
    index = load_index(args.index) if args.index else None
    queries = store_lib.load(args.queries) if args.queries else None
    result = evaluate(gallery, k=args.k, index=index, queries=queries, single=args.single)
    result["store"] = str(args.store)
    cli.emit(result, args.out)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (``python -m jaxvision.apps.search --help``); returns the exit status:
  0, or 2 after one ``error: ...`` line on stderr for bad input (argparse's usage errors
  exit with status 2 after one such line)."""
  args = _parser().parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its banner; results unchanged (train.main)
  try:
    _run(args)
  except (ValueError, FileNotFoundError) as e:  # SearchError, StoreError, ...
    lines = str(e).strip().splitlines()
    print(f"error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
