"""Content-based recommendation from image embeddings, with a simulated log to evaluate it.

>>> from jaxvision.apps import recommend, store
>>> catalog = store.load("stores/cifar10_test_lite0")          # Embeddings [N, D]
>>> log = recommend.simulate(catalog, recommend.SimulationParams(seed=0))
>>> rec = recommend.Recommender.from_log(catalog, log)
>>> rec.recommend(log["users"][5]["history"], k=10, strategy="multi", mmr_lambda=0.7)
>>> recommend.evaluate(catalog, log)                            # recall@10 / NDCG@10 table

**Profiles.** A user's history is the list of catalog item ids they interacted with, oldest
first. ``mean``: the mean of the history's embeddings, re-normalised to unit L2 norm.
``multi``: spherical k-means over the history's embeddings (seeded k-means++ then Lloyd steps;
``k = clip(len(history) // min_per_interest, 1, max_interests)``), each centroid an interest
weighted by its share of the history; the interests' ranked lists are interleaved by the
Sainte-Lague rule (the r-th item of interest j comes at ``(r + 0.5) / weight_j``), so each
interest gets slots in proportion to its weight. Candidates are the unseen catalog items by
inner product with a profile, from a faiss ``IndexFlatIP`` (exact).

**Popularity blend** (``popularity_weight`` w > 0): an item's score is its similarity to the
profile z-scored over the whole catalog (exactly, from the catalog's mean and covariance)
plus ``w * log(1 + count)``, count = the item's interactions in the log's histories. Content
alone says which *kinds* of images a user likes, not which items of a kind people pick; the
blend uses both.

**Diversity.** Maximal marginal relevance over a candidate pool (``mmr_pool`` items): greedily
take ``argmax lambda * rel_i - (1 - lambda) * max_{j taken} cos(v_i, v_j)`` with the pool's
relevance min-max scaled to [0, 1]; ``lambda = 1`` is the plain relevance order. For ``multi``
the relevance is the interleaved order (not the best interest's score), so MMR keeps each
interest's share of the slots and diversifies within it.

**Cold start.** A user with no history gets the most popular unseen items, and the result says
so (``strategy: "popularity (no history)"``).

**The simulated log** (:func:`simulate`; every parameter in :class:`SimulationParams`, written
into the log and into every evaluation) is *simulated*, not observed behaviour: each user's
taste is a Dirichlet(concentration) mixture over the catalog's classes; items within a class
have a Zipf popularity (a seeded random order of the class, weight ``rank ** -exponent``,
independent of the images' content); an interaction is, with probability ``noise``, a uniform
random catalog item, else an item of a class drawn from the taste, by popularity. A user's
interactions are drawn without replacement in order (Plackett-Luce, by Gumbel top-k); the last
``held_out`` are held out and the rest are the history. The simulation reads only the labels,
so two stores of the same dataset split (e.g. ImageNet and fine-tuned embeddings) get the same
log from the same seed. Because tastes here are class-shaped, content helps exactly as far as
the embeddings separate the classes; with tastes that are not class-shaped (or not visual) it
would not help, and nothing here shows that real users' tastes are class-shaped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pathlib
import sys
import time
from collections.abc import Collection, Sequence

import numpy as np

from jaxvision.apps import cli
from jaxvision.apps import store as store_lib

LOG_FORMAT = "jaxvision-interactions-v1"
STRATEGIES = ("mean", "multi", "popularity", "random")
FALLBACK = "popularity (no history)"
SIMULATED_NOTE = (
    "SIMULATED interactions, not observed behaviour: users' tastes are Dirichlet mixtures over "
    "the catalog's classes and item popularity is Zipf within a class, independent of the "
    "images' content; content-based methods can help only because tastes are class-shaped.")


class LogError(ValueError):
  """An interaction log that cannot be used as asked (unreadable, or made over another store)."""


# ------------------------------------------------------------------------------------ ranking


def mean_profile(vectors: np.ndarray) -> np.ndarray:
  """The mean of ``vectors [n, D]`` (n >= 1) re-normalised to unit L2 norm: float32 ``[D]``."""
  vectors = np.asarray(vectors, np.float64)
  if vectors.ndim != 2 or len(vectors) == 0:
    raise ValueError(f"expected a history of embeddings [n >= 1, D]; found {vectors.shape}")
  return store_lib.l2_normalize(vectors.mean(0)[None])[0]


def num_interests(history_size: int, *, max_interests: int = 4, min_per_interest: int = 5) -> int:
  """How many interests a history of ``history_size`` items gets: one per ``min_per_interest``
  items, at least 1 and at most ``max_interests``."""
  return int(np.clip(history_size // max(min_per_interest, 1), 1, max(max_interests, 1)))


def interests(vectors: np.ndarray, *, max_interests: int = 4, min_per_interest: int = 5,
              iterations: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A user's interests: spherical k-means over their history's embeddings.

  Args:
    vectors: float ``[n, D]`` (n >= 1) unit-norm embeddings of the history.
    max_interests, min_per_interest: ``k = clip(n // min_per_interest, 1, max_interests)``.
    iterations: Lloyd steps after a seeded k-means++ start (cosine distance).
    seed: the k-means++ seed.

  Returns:
    ``(centroids, weights)``: float32 ``[m, D]`` unit-norm centroids and float64 ``[m]`` weights
    (each interest's share of the history, summing to 1, in decreasing order); ``m <= k``
    (clusters left empty are dropped).
  """
  x = np.asarray(vectors, np.float64)
  if x.ndim != 2 or len(x) == 0:
    raise ValueError(f"expected a history of embeddings [n >= 1, D]; found {x.shape}")
  k = min(num_interests(len(x), max_interests=max_interests, min_per_interest=min_per_interest),
          len(x))
  rng = np.random.default_rng(seed)
  centers = [x[rng.integers(len(x))]]
  for _ in range(1, k):
    dist = np.clip(1.0 - np.max(x @ np.stack(centers).T, axis=1), 0.0, None)
    if dist.sum() <= 0:          # fewer distinct points than k
      break
    centers.append(x[rng.choice(len(x), p=dist / dist.sum())])
  c = np.stack(centers)
  assign = np.zeros(len(x), np.int64)
  for _ in range(iterations):
    assign = np.argmax(x @ c.T, axis=1)
    new = np.stack([x[assign == j].sum(0) if np.any(assign == j) else c[j]
                    for j in range(len(c))])
    new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
    if np.allclose(new, c):
      break
    c = new
  assign = np.argmax(x @ c.T, axis=1)
  sizes = np.bincount(assign, minlength=len(c))
  order = [j for j in np.argsort(-sizes, kind="stable") if sizes[j] > 0]
  return c[order].astype(np.float32), sizes[order] / len(x)


def interleave(ranked: Sequence[Sequence[int]], weights: Sequence[float], n: int) -> list[int]:
  """Merges per-interest ranked lists of item positions into one of up to ``n`` distinct
  items: the r-th item of list j comes at ``(r + 0.5) / weights[j]`` (Sainte-Lague), ties to
  the lower j; an item already taken is skipped."""
  keys = [((r + 0.5) / w, j, r) for j, (items, w) in enumerate(zip(ranked, weights)) if w > 0
          for r in range(len(items))]
  out, seen = [], set()
  for _, j, r in sorted(keys):
    item = int(ranked[j][r])
    if item not in seen:
      seen.add(item)
      out.append(item)
      if len(out) == n:
        break
  return out


def mmr(relevance: np.ndarray, vectors: np.ndarray, *, k: int, lam: float) -> np.ndarray:
  """Maximal marginal relevance: greedy re-ranking of a candidate pool.

  Step t takes ``argmax_i lam * relevance[i] - (1 - lam) * max_{j taken} vectors[i] . vectors[j]``
  over the candidates not yet taken (the first step: the most relevant); ties go to the lower
  index.

  Args:
    relevance: float ``[P]``. vectors: float ``[P, D]`` (unit norm: the dot is the cosine).
    k: how many to take (at most P). lam: the trade-off in [0, 1]; 1 is pure relevance.

  Returns:
    int64 ``[min(k, P)]`` indices into the pool, in the order taken.
  """
  relevance = np.asarray(relevance, np.float64)
  vectors = np.asarray(vectors, np.float64)
  if not 0.0 <= lam <= 1.0:
    raise ValueError(f"expected an MMR lambda in [0, 1]; found {lam}")
  if relevance.ndim != 1 or vectors.ndim != 2 or len(vectors) != len(relevance):
    raise ValueError(f"expected relevance [P] and vectors [P, D]; found {relevance.shape}, "
                     f"{vectors.shape}")
  n = min(k, len(relevance))
  taken = np.zeros(len(relevance), bool)
  redundancy = np.zeros(len(relevance))     # max similarity to the items taken so far
  out = []
  for t in range(n):
    gain = lam * relevance - (1.0 - lam) * (redundancy if t else 0.0)
    gain[taken] = -np.inf
    i = int(np.argmax(gain))
    out.append(i)
    taken[i] = True
    sim = vectors @ vectors[i]
    redundancy = sim if t == 0 else np.maximum(redundancy, sim)
  return np.asarray(out, np.int64)


def _unit_interval(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  span = x.max() - x.min() if len(x) else 0.0
  return (x - x.min()) / span if span > 0 else np.ones_like(x)


# ----------------------------------------------------------------------------- recommender


@dataclasses.dataclass
class Recommendation:
  """One user's recommendations.

  Attributes:
    positions: int64 ``[n]`` catalog positions (rows of the store), best first (n <= k).
    scores: float64 ``[n]`` the ranking score (cosine similarity to the profile for pure
      content; z-scored similarity + w * log(1 + count) for the popularity blend; the count for
      popularity; a uniform draw for random), before any MMR re-ranking.
    similarity: float64 ``[n]`` cosine similarity to the (nearest) profile; NaN for popularity
      and random.
    strategy: what ran, e.g. ``"multi"``, ``"mean + popularity (w=1)"``,
      ``"popularity (no history)"``; with ``" + MMR (lambda=0.7)"`` when re-ranked.
    fallback: True when the user had no history (popularity instead of the asked strategy).
    interests: for ``multi``, the interests' weights (shares of the history).
  """
  positions: np.ndarray
  scores: np.ndarray
  similarity: np.ndarray
  strategy: str
  fallback: bool = False
  interests: list[float] | None = None


class Recommender:
  """Top-k unseen catalog items for a user's history.

  Args:
    catalog: the items (:class:`jaxvision.apps.store.Embeddings`, N >= 1, unit-norm vectors).
    popularity: float ``[N]`` interaction counts per catalog position (the popularity baseline,
      the cold-start fallback and the blend); zeros when None.
  """

  def __init__(self, catalog: store_lib.Embeddings, popularity: np.ndarray | None = None):
    import faiss  # pylint: disable=import-outside-toplevel
    if len(catalog) == 0:
      raise ValueError("empty catalog: expected at least one item to recommend, found 0")
    self.catalog = catalog
    n = len(catalog)
    self.popularity = (np.zeros(n) if popularity is None
                       else np.asarray(popularity, np.float64))
    if self.popularity.shape != (n,):
      raise ValueError(f"expected popularity counts [{n}]; found {self.popularity.shape}")
    self._position = {int(i): p for p, i in enumerate(catalog.ids)}
    if len(self._position) != n:
      raise ValueError(f"catalog ids must be distinct; found {n - len(self._position)} repeats")
    v = catalog.vectors.astype(np.float32)
    self._log_count = np.log1p(self.popularity)
    self._index = faiss.IndexFlatIP(catalog.dim + 1)   # [v, log(1 + count)]
    self._index.add(np.ascontiguousarray(np.concatenate([v, self._log_count[:, None]], 1),
                                         np.float32))
    self._mean = v.astype(np.float64).mean(0)          # [D]
    self._cov_cache: np.ndarray | None = None
    self._interests: dict = {}
    # Popularity order: count descending, then catalog position.
    self._by_popularity = np.lexsort((np.arange(n), -self.popularity))

  @property
  def _cov(self) -> np.ndarray:
    """The catalog's covariance float64 ``[D, D]`` (for z-scoring similarities; computed once,
    on first use)."""
    if self._cov_cache is None:
      v = self.catalog.vectors.astype(np.float32)
      self._cov_cache = (v.T @ v).astype(np.float64) / len(v) - np.outer(self._mean, self._mean)
    return self._cov_cache

  @classmethod
  def from_log(cls, catalog: store_lib.Embeddings, log: dict) -> Recommender:
    """A recommender whose popularity is the interaction count in the log's histories (the
    held-out interactions are not counted)."""
    check_log(log, catalog)
    positions = np.arange(len(catalog))
    counts = np.zeros(len(catalog))
    ids = np.concatenate([np.asarray(u["history"], np.int64) for u in log["users"]] or [[]])
    if len(ids):
      sorter = np.argsort(catalog.ids)
      pos = positions[sorter][np.minimum(np.searchsorted(catalog.ids, ids, sorter=sorter),
                                         len(catalog) - 1)]
      bad = ids[catalog.ids[pos] != ids]
      if len(bad):
        raise LogError(f"the log's item id {int(bad[0])} is not in the store's catalog "
                       f"({len(catalog)} items)")
      np.add.at(counts, pos, 1.0)
    return cls(catalog, counts)

  def positions_of(self, ids: Sequence[int], what: str = "history") -> np.ndarray:
    """Catalog positions ``[n]`` of item ``ids``; a ValueError names an id not in the catalog."""
    out = []
    for i in ids:
      if int(i) not in self._position:
        raise ValueError(f"{what} item id {int(i)} is not in the catalog "
                         f"({len(self.catalog)} items, model {self.catalog.meta.get('model')!r})")
      out.append(self._position[int(i)])
    return np.asarray(out, np.int64)

  def recommend(self, history: Sequence[int], *, k: int = 10, strategy: str = "mean",
                mmr_lambda: float | None = None, mmr_pool: int = 100,
                popularity_weight: float = 0.0, max_interests: int = 4,
                min_per_interest: int = 5, seed: int = 0) -> Recommendation:
    """The top-``k`` unseen items for a user whose history is the item ``ids`` in
    ``history`` (oldest first). See the module docstring for the strategies; ``seed`` seeds
    ``random`` and the k-means start."""
    return self.recommend_many(
        [self.positions_of(history)], k=k, strategy=strategy, mmr_lambda=mmr_lambda,
        mmr_pool=mmr_pool, popularity_weight=popularity_weight, max_interests=max_interests,
        min_per_interest=min_per_interest, seeds=[seed])[0]

  def recommend_many(self, histories: Sequence[np.ndarray], *, k: int = 10,
                     strategy: str = "mean", mmr_lambda: float | None = None,
                     mmr_pool: int = 100, popularity_weight: float = 0.0,
                     max_interests: int = 4, min_per_interest: int = 5,
                     seeds: Sequence[int] | None = None) -> list[Recommendation]:
    """:meth:`recommend` for many users at once; ``histories`` are catalog *positions*
    (int ``[n_u]`` each), one faiss search for all of them."""
    if strategy not in STRATEGIES:
      raise ValueError(f"expected a strategy in {STRATEGIES}; found {strategy!r}")
    if k < 1 or mmr_pool < 1:
      raise ValueError(f"expected k >= 1 and mmr_pool >= 1; found k={k}, mmr_pool={mmr_pool}")
    if mmr_lambda is not None and not 0.0 <= mmr_lambda <= 1.0:
      raise ValueError(f"expected mmr_lambda in [0, 1]; found {mmr_lambda}")
    if popularity_weight < 0:
      raise ValueError(f"expected popularity_weight >= 0; found {popularity_weight}")
    seeds = list(range(len(histories))) if seeds is None else list(seeds)
    histories = [np.asarray(h, np.int64) for h in histories]
    depth = max(mmr_pool, k) if mmr_lambda is not None else k   # ranked items before MMR
    name = strategy
    if strategy in ("mean", "multi") and popularity_weight > 0:
      name += f" + popularity (w={popularity_weight:g})"
    suffix = f" + MMR (lambda={mmr_lambda:g})" if mmr_lambda is not None else ""

    out: list[Recommendation | None] = [None] * len(histories)
    content = []
    for u, h in enumerate(histories):
      if strategy == "popularity" or (len(h) == 0 and strategy != "random"):
        pos = self._top_popular(h, depth)
        out[u] = self._finish(pos, self.popularity[pos], np.full(len(pos), np.nan),
                              FALLBACK if strategy != "popularity" else "popularity",
                              mmr_lambda, k, suffix, fallback=strategy != "popularity")
      elif strategy == "random":
        rng = np.random.default_rng(seeds[u])
        pos = self._random_unseen(h, depth, rng)
        out[u] = self._finish(pos, rng.random(len(pos)), np.full(len(pos), np.nan), "random",
                              mmr_lambda, k, suffix)
      else:
        content.append(u)
    if not content:
      return out   # type: ignore[return-value]

    # Profiles: one query per user (mean) or per interest (multi).
    queries, owner, weights = [], [], []
    for u in content:
      hv = self.catalog.vectors[histories[u]]
      if strategy == "mean":
        queries.append(mean_profile(hv)[None])
        weights.append([1.0])
      else:
        key = (histories[u].tobytes(), max_interests, min_per_interest, seeds[u])
        if key not in self._interests:     # evaluate asks for each user's interests 4 times
          self._interests[key] = interests(hv, max_interests=max_interests,
                                           min_per_interest=min_per_interest, seed=seeds[u])
        c, w = self._interests[key]
        queries.append(c)
        weights.append(list(w))
      owner += [u] * len(queries[-1])
    q = np.concatenate(queries).astype(np.float64)            # [Q, D]
    owner = np.asarray(owner)
    if popularity_weight > 0:
      sigma = np.sqrt(np.maximum(((q @ self._cov) * q).sum(1), 1e-12))   # [Q]
      aug = np.concatenate([q / sigma[:, None], np.full([len(q), 1], popularity_weight)], 1)
      offset = (q @ self._mean) / sigma                         # z = q.v / sigma - offset
    else:
      aug = np.concatenate([q, np.zeros([len(q), 1])], 1)
      offset = np.zeros(len(q))
    longest = max(len(histories[u]) for u in content)
    n_search = min(len(self.catalog), depth + longest)
    scores, found = self._index.search(np.ascontiguousarray(aug, np.float32), n_search)
    scores = scores.astype(np.float64) - offset[:, None]

    row = 0
    for u, w in zip(content, weights):
      seen = set(histories[u].tolist())
      lists, list_scores = [], []
      for _ in w:
        keep = [(int(p), s) for p, s in zip(found[row], scores[row]) if p >= 0 and p not in seen]
        lists.append([p for p, _ in keep][:depth])
        list_scores.append(dict(keep))
        row += 1
      if strategy == "mean":
        pos = lists[0]
        sc = [list_scores[0][p] for p in pos]
      else:
        pos = interleave(lists, w, depth)
        sc = [max(s[p] for s in list_scores if p in s) for p in pos]
      pos = np.asarray(pos, np.int64)
      qs = q[owner == u]                                         # [m, D]
      sim = (self.catalog.vectors[pos].astype(np.float64) @ qs.T).max(1) if len(pos) else \
          np.zeros(0)
      # MMR re-ranks multi-interest lists by their interleaved order, not by the best
      # interest's score (which would hand every slot back to the dominant interest).
      relevance = None if strategy == "mean" else -np.arange(len(pos), dtype=np.float64)
      out[u] = self._finish(pos, np.asarray(sc), sim, name, mmr_lambda, k, suffix,
                            interests=w if strategy == "multi" else None, relevance=relevance)
    return out   # type: ignore[return-value]

  def _finish(self, pos, scores, sim, name, mmr_lambda, k, suffix, fallback=False,
              interests=None, relevance=None) -> Recommendation:
    """The top ``k`` of ``pos`` (MMR over ``relevance``, default ``scores``, when
    ``mmr_lambda`` is set)."""
    pos = np.asarray(pos, np.int64)
    if mmr_lambda is not None and len(pos):
      relevance = scores if relevance is None else relevance
      order = mmr(_unit_interval(relevance), self.catalog.vectors[pos], k=k, lam=mmr_lambda)
      name += suffix
    else:
      order = np.arange(min(k, len(pos)))
    return Recommendation(pos[order], np.asarray(scores, np.float64)[order],
                          np.asarray(sim, np.float64)[order], name, fallback,
                          None if interests is None else [float(x) for x in interests])

  def _top_popular(self, seen: np.ndarray, n: int) -> np.ndarray:
    mask = np.ones(len(self.catalog), bool)
    mask[seen] = False
    order = self._by_popularity[mask[self._by_popularity]]
    return order[:n]

  def _random_unseen(self, seen: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    size = len(self.catalog)
    draw = rng.choice(size, size=min(size, n + len(seen)), replace=False)
    return draw[~np.isin(draw, seen)][:n]

  def to_json(self, rec: Recommendation, held_out: Collection[int] = ()) -> dict:
    """``rec`` as JSON: the strategy and, per item, rank, id, score, similarity, label (and
    class name when the store has ``class_names``); ``held_out`` ids are marked."""
    names = self.catalog.meta.get("class_names")
    held = {int(i) for i in held_out}
    items = []
    for rank, (p, s, m) in enumerate(zip(rec.positions, rec.scores, rec.similarity), 1):
      label = self.catalog.labels[p]
      item = {"rank": rank, "id": int(self.catalog.ids[p]), "score": round(float(s), 6)}
      if not np.isnan(m):
        item["similarity"] = round(float(m), 6)
      if np.ndim(label) == 0:
        item["label"] = int(label)
        if names and 0 <= int(label) < len(names):
          item["class"] = names[int(label)]
      else:
        item["labels"] = [int(j) for j in np.flatnonzero(label)]
      if held:
        item["held_out"] = item["id"] in held
      items.append(item)
    out = {"strategy": rec.strategy, "fallback": rec.fallback, "items": items}
    if rec.interests is not None:
      out["interests"] = [round(w, 4) for w in rec.interests]
    return out


# ------------------------------------------------------------------------------ simulation


def _param(default, help_text):
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class SimulationParams:
  """Every parameter of the simulated interaction log (written into the log and every result);
  each field's ``metadata["help"]`` says what it does (also ``simulate --help``)."""
  num_users: int = _param(2000, "users simulated (ids 0 .. num_users - 1)")
  cold_start_fraction: float = _param(
      0.01, "the first round(fraction * num_users) users have no history (only held-out "
      "items): every strategy falls back to popularity for them")
  history_min: int = _param(10, "shortest history (lengths uniform in [min, max])")
  history_max: int = _param(40, "longest history")
  held_out: int = _param(5, "last interactions per user held out: the relevant items")
  concentration: float = _param(
      0.3, "symmetric Dirichlet parameter of a user's class mixture (small: a few classes per "
      "user; large: every class alike, and content cannot help)")
  popularity_exponent: float = _param(
      1.0, "Zipf exponent of item popularity within a class (0: uniform)")
  noise: float = _param(0.1, "probability that an interaction is a uniform random item")
  seed: int = _param(0, "seeds everything")

  def validate(self, num_items: int) -> None:
    if self.num_users < 1 or not 0 <= self.cold_start_fraction <= 1:
      raise ValueError(f"expected num_users >= 1 and cold_start_fraction in [0, 1]; found "
                       f"{self.num_users}, {self.cold_start_fraction}")
    if not 0 <= self.history_min <= self.history_max or self.held_out < 1:
      raise ValueError(f"expected 0 <= history_min <= history_max and held_out >= 1; found "
                       f"{self.history_min}, {self.history_max}, {self.held_out}")
    if self.history_max + self.held_out > num_items:
      raise ValueError(f"a user's history_max + held_out ({self.history_max + self.held_out}) "
                       f"exceeds the catalog's {num_items} items")
    if self.concentration <= 0 or self.popularity_exponent < 0 or not 0 <= self.noise <= 1:
      raise ValueError(f"expected concentration > 0, popularity_exponent >= 0 and noise in "
                       f"[0, 1]; found {self.concentration}, {self.popularity_exponent}, "
                       f"{self.noise}")


def class_labels(catalog: store_lib.Embeddings) -> np.ndarray:
  """The catalog's single class ids int64 ``[N]`` (the simulation needs one class per item)."""
  labels = np.asarray(catalog.labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or np.any(labels < 0):
    raise ValueError(f"the simulation needs one class id >= 0 per item (labels [N]); found "
                     f"labels of shape {labels.shape}, dtype {labels.dtype}"
                     + (f", min {labels.min()}" if labels.size else ""))
  return labels.astype(np.int64)


def popularity_weights(labels: np.ndarray, exponent: float, seed: int) -> np.ndarray:
  """The simulated within-class popularity float64 ``[N]``: in each class a seeded random
  order of its items, the item at rank r (1-based) weighing ``r ** -exponent``, normalised to
  sum to 1 within the class."""
  rng = np.random.default_rng([seed, 1])
  w = np.zeros(len(labels))
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    ranks = np.arange(1, len(members) + 1, dtype=np.float64)
    w[members] = ranks ** -exponent / np.sum(ranks ** -exponent)
  return w


def _digest(array: np.ndarray, dtype: str) -> str:
  return hashlib.sha256(np.ascontiguousarray(array, dtype).tobytes()).hexdigest()[:16]


def catalog_identity(catalog: store_lib.Embeddings) -> dict:
  """What a log is tied to: the store's model, dataset, split, size and ids/labels digests."""
  meta = catalog.meta
  return {"model": meta.get("model"), "dataset": meta.get("dataset"),
          "split": meta.get("split"), "num_items": len(catalog),
          "ids_sha256": _digest(catalog.ids, "<i8"),
          "labels_sha256": _digest(np.asarray(catalog.labels), "<i4")}


def interactions_digest(users: Sequence[dict]) -> str:
  """A digest of every user's history and held-out ids (equal logs, equal digests)."""
  h = hashlib.sha256()
  for u in users:
    h.update(json.dumps([u["id"], u["history"], u["held_out"]]).encode())
  return h.hexdigest()[:16]


def simulate(catalog: store_lib.Embeddings,
             params: SimulationParams = SimulationParams()) -> dict:
  """A seeded simulated interaction log over ``catalog`` (see the module docstring).

  Returns:
    A JSON-able dict: ``format``, ``simulated: true``, ``note``, ``params`` (the dataclass),
    ``catalog`` (:func:`catalog_identity`), ``class_names``, ``interactions_sha256`` and
    ``users``: ``[{"id", "taste": [C] class mixture, "history": [ids, oldest first],
    "held_out": [ids, the last interactions]}]``.
  """
  if len(catalog) == 0:
    raise ValueError("empty catalog: expected at least one item to simulate interactions on")
  labels = class_labels(catalog)
  params.validate(len(catalog))
  num_classes = int(labels.max()) + 1
  n = len(catalog)
  within = popularity_weights(labels, params.popularity_exponent, params.seed)
  rng = np.random.default_rng([params.seed, 2])
  users = []
  num_cold = round(params.cold_start_fraction * params.num_users)
  for u in range(params.num_users):
    taste = rng.dirichlet(np.full(num_classes, params.concentration))
    cold = u < num_cold
    length = 0 if cold else int(rng.integers(params.history_min, params.history_max + 1))
    p = (1.0 - params.noise) * taste[labels] * within + params.noise / n
    # Plackett-Luce draw without replacement: order by log p + Gumbel noise.
    keys = np.log(np.maximum(p, 1e-300)) + rng.gumbel(size=n)
    total = length + params.held_out
    top = np.argpartition(-keys, total - 1)[:total]
    seq = catalog.ids[top[np.argsort(-keys[top], kind="stable")]].tolist()
    users.append({"id": u, "taste": [round(float(t), 5) for t in taste],
                  "history": seq[:length], "held_out": seq[length:]})
  return {"format": LOG_FORMAT, "simulated": True, "note": SIMULATED_NOTE,
          "params": dataclasses.asdict(params), "catalog": catalog_identity(catalog),
          "class_names": catalog.meta.get("class_names"),
          "interactions_sha256": interactions_digest(users), "users": users}


def check_log(log: dict, catalog: store_lib.Embeddings) -> None:
  """Raises :class:`LogError` (one line, naming both) when ``log`` was not made over
  ``catalog``'s store: another model, dataset, split, size, or other ids/labels."""
  if not isinstance(log, dict) or log.get("format") != LOG_FORMAT:
    found = log.get("format") if isinstance(log, dict) else type(log).__name__
    raise LogError(f"expected an interaction log of format {LOG_FORMAT!r}; found {found!r}")
  have, want = log.get("catalog", {}), catalog_identity(catalog)
  for key in ("model", "num_items", "dataset", "split", "ids_sha256", "labels_sha256"):
    if have.get(key) != want[key]:
      raise LogError(
          f"the log was made over another store: model={have.get('model')!r} "
          f"({have.get('num_items')} items, {have.get('dataset')}/{have.get('split')}), this "
          f"store holds model={want['model']!r} ({want['num_items']} items, "
          f"{want['dataset']}/{want['split']}); {key} differs: simulate a log for this store "
          "(the same seed over the same labels gives the same interactions)")


def save_log(log: dict, path: str | pathlib.Path) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(log, separators=(",", ":")))


def load_log(path: str | pathlib.Path) -> dict:
  """Reads a log written by :func:`save_log` / ``simulate --out``; one-line LogError if not."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise LogError(f"interaction log {path} not found")
  try:
    log = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise LogError(f"{path} is not an interaction log (invalid JSON: {e})") from None
  if not isinstance(log, dict) or log.get("format") != LOG_FORMAT or "users" not in log:
    raise LogError(f"{path}: expected an interaction log of format {LOG_FORMAT!r}")
  return log


def user_seed(log: dict, user_id: int) -> int:
  """The seed of a user's k-means start and random draws (evaluate and recommend agree)."""
  return int(log.get("params", {}).get("seed", 0)) * 1_000_003 + int(user_id)


def find_user(log: dict, user_id: int) -> dict:
  """The log's record of user ``user_id``; a LogError when absent."""
  for u in log["users"]:
    if u["id"] == user_id:
      return u
  ids = [u["id"] for u in log["users"]]
  span = f"ids {min(ids)}..{max(ids)}" if ids else "no users"
  raise LogError(f"user {user_id} is not in the log ({len(ids)} users, {span})")


# ------------------------------------------------------------------------------ evaluation


def recall_at_k(recommended: Sequence[int], relevant: Collection[int], k: int = 10) -> float:
  """``|top-k of recommended ∩ relevant| / |relevant|`` (0 when nothing is relevant)."""
  relevant = set(relevant)
  if not relevant:
    return 0.0
  return len(relevant.intersection(list(recommended)[:k])) / len(relevant)


def ndcg_at_k(recommended: Sequence[int], relevant: Collection[int], k: int = 10) -> float:
  """Binary-relevance NDCG@k: ``sum_{r <= k, item_r relevant} 1 / log2(r + 1)`` over its
  ideal, ``sum_{r <= min(k, |relevant|)} 1 / log2(r + 1)`` (0 when nothing is relevant)."""
  relevant = set(relevant)
  if not relevant:
    return 0.0
  dcg = sum(1.0 / math.log2(r + 2) for r, i in enumerate(list(recommended)[:k]) if i in relevant)
  ideal = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(relevant))))
  return dcg / ideal


DEFAULT_ROWS = tuple((s, w, lam) for s, w in (("random", 0.0), ("popularity", 0.0),
                                              ("mean", 0.0), ("multi", 0.0),
                                              ("mean", None), ("multi", None))
                     for lam in (False, True))


def evaluate(catalog: store_lib.Embeddings, log: dict, *, k: int = 10, mmr_lambda: float = 0.7,
             mmr_pool: int = 100, popularity_weight: float = 1.0, max_interests: int = 4,
             min_per_interest: int = 5, progress=None) -> dict:
  """Offline evaluation on a log: every strategy with and without MMR.

  Rows: random, popularity, mean, multi (pure content), mean and multi blended with popularity
  (``popularity_weight``), each without and with MMR (``mmr_lambda``, ``mmr_pool``). Per row,
  averaged over the log's users (users without history get the popularity fallback, counted in
  ``fallback_users``): ``recall@k`` and ``ndcg@k`` with the held-out items as the relevant set
  (``*_se``: standard error over users), ``taste@k`` (the mean simulated taste weight of the
  recommended items' classes: 1/C for random, ``taste_ceiling`` = the mean of each user's
  largest weight when every item is of their favourite class), ``classes@k`` (distinct labels
  among the k) and ``diversity@k`` (1 - the mean pairwise cosine similarity of the k).
  """
  check_log(log, catalog)
  t0 = time.perf_counter()
  rec = Recommender.from_log(catalog, log)
  labels = class_labels(catalog)
  users = log["users"]
  histories = [rec.positions_of(u["history"]) for u in users]
  held = [rec.positions_of(u["held_out"], "held-out") for u in users]
  tastes = np.asarray([u["taste"] for u in users], np.float64)        # [U, C]
  seeds = [user_seed(log, u["id"]) for u in users]
  rows = []
  for strategy, weight, use_mmr in DEFAULT_ROWS:
    w = popularity_weight if weight is None else weight
    if weight is None and w <= 0:
      continue
    recs = rec.recommend_many(histories, k=k, strategy=strategy,
                              mmr_lambda=mmr_lambda if use_mmr else None, mmr_pool=mmr_pool,
                              popularity_weight=w, max_interests=max_interests,
                              min_per_interest=min_per_interest, seeds=seeds)
    recall = np.asarray([recall_at_k(r.positions, h, k) for r, h in zip(recs, held)])
    ndcg = np.asarray([ndcg_at_k(r.positions, h, k) for r, h in zip(recs, held)])
    taste = np.asarray([tastes[u, labels[r.positions]].mean() for u, r in enumerate(recs)
                        if len(r.positions)])
    classes = np.asarray([len(np.unique(labels[r.positions])) for r in recs])
    diversity = []
    for r in recs:
      v = catalog.vectors[r.positions].astype(np.float64)
      m = len(v)
      if m > 1:
        g = v @ v.T
        diversity.append(1.0 - (g.sum() - np.trace(g)) / (m * (m - 1)))
    name = strategy + (f" + popularity (w={w:g})" if weight is None else "")
    name += f" + MMR (lambda={mmr_lambda:g})" if use_mmr else ""
    se = lambda x: float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0  # noqa: E731
    rows.append({"strategy": name, f"recall@{k}": round(float(recall.mean()), 5),
                 f"recall@{k}_se": round(se(recall), 5),
                 f"ndcg@{k}": round(float(ndcg.mean()), 5), f"ndcg@{k}_se": round(se(ndcg), 5),
                 f"taste@{k}": round(float(taste.mean()), 4),
                 f"classes@{k}": round(float(classes.mean()), 3),
                 f"diversity@{k}": round(float(np.mean(diversity)), 4) if diversity else None,
                 "fallback_users": int(sum(r.fallback for r in recs))})
    if progress:
      progress(f"{name}: recall@{k} {rows[-1][f'recall@{k}']:.4f}, "
               f"ndcg@{k} {rows[-1][f'ndcg@{k}']:.4f}")
  meta = catalog.meta
  return {"simulated": True, "note": log.get("note", SIMULATED_NOTE),
          "simulation": log["params"], "interactions_sha256": log.get("interactions_sha256"),
          "store": {"model": meta.get("model"), "dataset": meta.get("dataset"),
                    "split": meta.get("split"), "num_items": len(catalog), "dim": catalog.dim},
          "users": len(users), "held_out_per_user": int(np.mean([len(h) for h in held])),
          "taste_ceiling": round(float(tastes.max(1).mean()), 4),
          "settings": {"k": k, "mmr_lambda": mmr_lambda, "mmr_pool": mmr_pool,
                       "popularity_weight": popularity_weight, "max_interests": max_interests,
                       "min_per_interest": min_per_interest,
                       "popularity": "interaction counts in the log's histories"},
          "rows": rows, "seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------------------------- CLI


def _load_store(path: str) -> store_lib.Embeddings:
  catalog = store_lib.load(path)
  if len(catalog) == 0:
    raise ValueError(f"empty catalog: the store {path} holds no items")
  return catalog


def build_parser() -> argparse.ArgumentParser:
  p = cli.OneLineParser(
      prog="python -m jaxvision.apps.recommend",
      description="Content-based recommendation over an embedding store, and its "
                  "offline evaluation on a seeded SIMULATED interaction log.")
  sub = p.add_subparsers(dest="command", required=True, parser_class=cli.OneLineParser)
  s = sub.add_parser("simulate", help="store -> a simulated interaction log (JSON)",
                     description="Writes a seeded simulated interaction log over a store's "
                                 "items (class-shaped tastes, Zipf popularity within a class).")
  s.add_argument("--store", required=True, help="embedding store folder")
  s.add_argument("--out", help="write the log here (default: stdout)")
  for f in dataclasses.fields(SimulationParams):
    s.add_argument(f"--{f.name}", type=type(f.default), default=f.default,
                   help=f"{f.metadata['help']} (default {f.default})")

  def common(q):
    q.add_argument("--store", required=True, help="embedding store folder")
    q.add_argument("--log", required=True, help="interaction log from `simulate`")
    q.add_argument("--k", type=int, default=10, help="items to recommend (default 10)")
    q.add_argument("--mmr_pool", type=int, default=100,
                   help="candidates MMR re-ranks (default 100)")
    q.add_argument("--max_interests", type=int, default=4,
                   help="most interests of the multi-interest profile (default 4)")
    q.add_argument("--out", help="write the JSON here (default: stdout)")

  r = sub.add_parser("recommend", help="top-k unseen items for one user of the log",
                     description="Recommends for a user of the log from their history (the "
                                 "held-out items are not used; recommended ones are marked).")
  common(r)
  r.add_argument("--user", type=int, required=True, help="user id in the log")
  r.add_argument("--strategy", choices=STRATEGIES, default="multi", help="(default multi)")
  r.add_argument("--mmr_lambda", type=float, default=None,
                 help="re-rank by MMR with this lambda in [0, 1] (default: no MMR)")
  r.add_argument("--popularity_weight", type=float, default=0.0,
                 help="blend popularity into mean/multi (default 0: pure content)")
  e = sub.add_parser("evaluate", help="recall@k / NDCG@k of every strategy on the log",
                     description="The metric table (JSON) of random, popularity, mean, multi and "
                                 "their popularity blends, each without and with MMR, with the "
                                 "simulation's parameters.")
  common(e)
  e.add_argument("--mmr_lambda", type=float, default=0.7, help="lambda of the MMR rows (0.7)")
  e.add_argument("--popularity_weight", type=float, default=1.0,
                 help="w of the popularity-blend rows (default 1; 0 drops those rows)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    catalog = _load_store(args.store)
    if args.command == "simulate":
      params = SimulationParams(**{f.name: getattr(args, f.name)
                                   for f in dataclasses.fields(SimulationParams)})
      log = simulate(catalog, params)
      if args.out:
        save_log(log, args.out)
        print(f"wrote {args.out}: {params.num_users} simulated users over {len(catalog)} items "
              f"(interactions {log['interactions_sha256']})", file=sys.stderr)
      else:
        print(json.dumps(log, separators=(",", ":")))
      return 0
    log = load_log(args.log)
    check_log(log, catalog)
    if args.command == "recommend":
      user = find_user(log, args.user)
      rec = Recommender.from_log(catalog, log)
      result = rec.recommend(user["history"], k=args.k, strategy=args.strategy,
                             mmr_lambda=args.mmr_lambda, mmr_pool=args.mmr_pool,
                             popularity_weight=args.popularity_weight,
                             max_interests=args.max_interests,
                             seed=user_seed(log, args.user))
      names = log.get("class_names") or []
      taste = sorted(enumerate(user.get("taste", [])), key=lambda t: -t[1])[:3]
      out = {"user": args.user, "history_size": len(user["history"]), "simulated": True,
             "simulated_taste": {(names[c] if c < len(names) else str(c)): w for c, w in taste},
             **rec.to_json(result, user["held_out"])}
      out["held_out_hits"] = sum(i.get("held_out", False) for i in out["items"])
      cli.emit(out, args.out)
    else:
      result = evaluate(catalog, log, k=args.k, mmr_lambda=args.mmr_lambda,
                        mmr_pool=args.mmr_pool, popularity_weight=args.popularity_weight,
                        max_interests=args.max_interests,
                        progress=lambda m: print(m, file=sys.stderr, flush=True))
      cli.emit(result, args.out)
    return 0
  except (ValueError, OSError) as e:   # StoreError and LogError are ValueErrors
    msg = " ".join(str(e).split())
    print(f"error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
