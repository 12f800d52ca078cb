"""Image search speed and scale: exact faiss search beside approximate indexes.

  python -m benchmarks.search --store stores/cifar10-train --queries stores/cifar10-test \
      --out benchmarks/results/<machine>_<date>_search-cifar10-train.json
  python -m benchmarks.search --n 50000 --dim 1280 --num-queries 10000 \
      --out benchmarks/results/<machine>_<date>_search-synthetic-50k.json

Gallery and queries: two embedding stores (``apps.store``; e.g. EfficientNet-Lite0
embeddings of the CIFAR-10 train split as the gallery and of the test split as the queries),
or, without ``--store``, synthetic clustered unit vectors of the same shape
(:func:`synthetic_embeddings`: a stand-in whose recall figures only indicate what real
embeddings give).

For each ``--configs`` entry (``kind:key=value,...``, ``;``-separated; ``apps.search.DEFAULTS``
fill the rest) and each ``--threads`` setting: build time, recall@k of the top-k against exact
search (faiss ``IndexFlatIP`` over the same vectors), and queries/s of both, batched (every
query in one ``search`` call: the median of ``--repeats`` calls after a warm-up call) and one
query at a time (``--single`` queries in all, one call each, after a warm-up). Exact search
is timed in the same rounds as the approximate indexes (interleaved, the order rotating), so
every speed-up is a ratio on the same machine under the same load. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import sys
import time

import faiss
import numpy as np

from benchmarks import timing
from jaxvision.apps import search, store

DEFAULT_CONFIGS = ("hnsw;hnsw:ef_search=64;ivf;ivf:nprobe=64;flat:pca=128,refine=4;"
                   "flat:pca=96,refine=8")
DEFAULT_MACHINE = "cpu-2core-epyc-zen4"
SEARCH_PARAMS = ("ef_search", "nprobe", "refine")  # set on a built index, no rebuild


def synthetic_embeddings(n: int, dim: int, *, num_queries: int = 0, classes: int = 10,
                         modes: int = 10, latent: int = 512, seed: int = 0
                         ) -> tuple[store.Embeddings, store.Embeddings | None]:
  """Clustered unit vectors shaped like pooled CNN features (a stand-in, not real data).

  A latent ``z`` in ``latent`` dimensions is a mixture of ``classes * modes`` Gaussians
  (mode centres scattered around class centres) plus per-vector variation with scales
  decaying as ``i**-0.5`` (a few strong directions shared by every class, as lighting and
  background are in photos); a vector is ``relu(b + z @ W + 0.3 noise)`` (non-negative, as
  pooled ReLU features are; ``b`` a per-dimension offset), L2-normalised. Labels are the
  classes; queries (``num_queries``) are drawn from the same mixture.

  The constants were set so that 1,000 vectors match EfficientNet-Lite0 ImageNet embeddings
  of 1,000 CIFAR-10 test images (100 per class, ``resize(112)``) on: fraction of zeros
  0.54 (real 0.48), mean cosine 0.38 (0.33), mean cosine of the nearest / 10th nearest
  neighbour 0.59 / 0.54 (0.62 / 0.53), precision@10 by class 0.49 (0.48), variance in the
  top 8 / 32 / 128 principal components 0.23 / 0.42 / 0.68 (0.21 / 0.43 / 0.72).
  """
  rng = np.random.default_rng(seed)
  scales = np.arange(1, latent + 1) ** -0.5
  class_c = rng.normal(size=(classes, latent)) * 0.4 * scales.mean()
  mode_c = class_c[:, None, :] + rng.normal(size=(classes, modes, latent)) * 0.5 * scales.mean()
  mode_c = mode_c.reshape(classes * modes, latent)
  w = rng.normal(size=(latent, dim)) / np.sqrt(np.sum(scales ** 2))
  offset = -0.1 + 0.5 * rng.normal(size=dim)

  def draw(count, stream):
    r = np.random.default_rng([seed, stream])
    mode = r.integers(0, classes * modes, count)
    z = mode_c[mode] + r.normal(size=(count, latent)) * scales
    x = np.maximum(offset + z @ w + 0.3 * r.normal(size=(count, dim)), 0.0)
    return store.from_arrays(x.astype(np.float32), labels=(mode // modes).astype(np.int32),
                             meta={"model": "synthetic", "dataset": "synthetic"})

  return draw(n, 1), (draw(num_queries, 2) if num_queries else None)


def parse_configs(text: str) -> list[tuple[str, dict]]:
  """``'hnsw:m=32,ef_search=64;flat'`` -> ``[('hnsw', {'m': 32, 'ef_search': 64}), ...]``."""
  out = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    kind, _, rest = part.partition(":")
    params = {}
    for item in filter(None, (t.strip() for t in rest.split(","))):
      key, _, value = item.partition("=")
      params[key.strip()] = int(value)
    out.append((kind.strip(), params))
  return out


def _time_batched(index, queries, k) -> tuple[float, np.ndarray]:
  t0 = time.perf_counter()
  _, rows = index.search(queries, k)
  return time.perf_counter() - t0, rows


def _time_single(index, queries, k) -> list[float]:
  out = []
  for i in range(len(queries)):
    t0 = time.perf_counter()
    index.search(queries[i:i + 1], k)
    out.append(time.perf_counter() - t0)
  return out


def _figures(batched: list[float], single: list[float], num_queries: int) -> dict:
  median = statistics.median(batched)
  return {"batched_seconds_all": batched, "batched_seconds_median": median,
          "batched_queries_per_s": num_queries / median,
          # Queries over their total time (as batched is), and the per-query median and p90.
          "single_queries_per_s": len(single) / sum(single) if single else None,
          "single_ms_median": 1e3 * statistics.median(single) if single else None,
          "single_ms_p90": 1e3 * float(np.percentile(single, 90)) if single else None,
          "single_num_queries": len(single)}


def run(gallery: store.Embeddings, queries: np.ndarray, *, configs, threads, k: int = 10,
        repeats: int = 3, single: int = 200, log=print) -> list[dict]:
  """One record for exact search and one per config, per thread setting.

  The indexes are built first (once: structure parameters; search-time ones are set before
  each use). Then ``repeats`` rounds, each timing every index in turn (exact first, then the
  configs, the order rotating by one each round so that a change of the machine's load
  touches all alike): one batched call over all queries, and ``single / repeats`` queries one
  at a time (a different slice each round). Warm-up calls before the first round.
  """
  default_threads = faiss.omp_get_max_threads()
  built, entries = {}, [("flat", {}, {})]
  for kind, params in configs:
    full = {**search.DEFAULTS.get(kind, {}), **params}
    tuning = {key: v for key, v in full.items() if key in SEARCH_PARAMS}
    structure = {key: v for key, v in full.items() if key not in SEARCH_PARAMS}
    structure["refine"] = bool(full.get("refine"))
    entries.append((kind, params, tuning))
    key = (kind, tuple(sorted(structure.items())))
    if key not in built:
      t0 = time.perf_counter()
      index = search.build_index(gallery, kind, **params)
      built[key] = (index, time.perf_counter() - t0, faiss.omp_get_max_threads())
      log(f"built {search.describe(kind, gallery.dim, index.params)} in "
          f"{built[key][1]:.1f} s")
  exact_index = search.build_index(gallery, "flat")

  def index_of(entry):
    kind, params, tuning = entry
    if kind == "flat" and not params:
      return exact_index, None
    full = {**search.DEFAULTS.get(kind, {}), **params}
    structure = {key: v for key, v in full.items() if key not in SEARCH_PARAMS}
    structure["refine"] = bool(full.get("refine"))
    index, build_s, build_threads = built[(kind, tuple(sorted(structure.items())))]
    if tuning:
      index.set_search_params(**tuning)
    return index, (build_s, build_threads)

  records = []
  per_round = max(1, single // max(1, repeats))
  for n_threads in threads:
    faiss.omp_set_num_threads(n_threads or default_threads)
    label = f"{faiss.omp_get_max_threads()} ({'default' if not n_threads else 'set'})"
    batched = [[] for _ in entries]
    singles = [[] for _ in entries]
    rows = [None] * len(entries)
    for e, entry in enumerate(entries):  # warm-up
      index, _ = index_of(entry)
      _time_batched(index, queries[:256], k)
      _time_single(index, queries[:10], k)
    for r in range(repeats):
      order = list(range(len(entries)))
      order = order[r % len(order):] + order[:r % len(order)]
      for e in order:
        index, _ = index_of(entries[e])
        seconds, found = _time_batched(index, queries, k)
        batched[e].append(seconds)
        rows[e] = found if rows[e] is None else rows[e]
        start = (r * per_round) % max(1, len(queries) - per_round)
        singles[e] += _time_single(index, queries[start:start + per_round], k)
    exact_fig = _figures(batched[0], singles[0], len(queries))
    records.append({"kind": "flat", "params": {}, "structure": "Flat (exact)",
                    "threads": faiss.omp_get_max_threads(), "recall_at_k": 1.0, **exact_fig})
    log(f"[threads {label}] exact: {exact_fig['batched_queries_per_s']:.0f} q/s batched, "
        f"{exact_fig['single_queries_per_s']:.1f} q/s one at a time")
    for e, entry in enumerate(entries[1:], start=1):
      index, (build_s, build_threads) = index_of(entry)
      fig = _figures(batched[e], singles[e], len(queries))
      rec = {"kind": entry[0], "params": dict(index.params),
             "structure": search.describe(entry[0], gallery.dim, index.params),
             "threads": faiss.omp_get_max_threads(), "build_seconds": build_s,
             "build_threads": build_threads,
             "recall_at_k": search.recall_at_k(rows[e], rows[0]), **fig,
             "speedup_batched": fig["batched_queries_per_s"] / exact_fig["batched_queries_per_s"],
             "speedup_single": fig["single_queries_per_s"] / exact_fig["single_queries_per_s"]}
      records.append(rec)
      log(f"[threads {label}] {rec['structure']} {entry[2] or ''}: "
          f"recall@{k} {rec['recall_at_k']:.4f}, "
          f"{fig['batched_queries_per_s']:.0f} q/s batched ({rec['speedup_batched']:.1f}x), "
          f"{fig['single_queries_per_s']:.0f} q/s single ({rec['speedup_single']:.1f}x)")
  faiss.omp_set_num_threads(default_threads)
  return records


def default_out(machine: str, what: str) -> pathlib.Path:
  now = datetime.datetime.now(datetime.timezone.utc)
  path = pathlib.Path("benchmarks/results") / f"{machine}_{now:%Y-%m-%d}_search-{what}.json"
  if path.exists():
    path = path.with_name(f"{path.stem}-{now:%H%M%S}.json")
  return path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--store", default=None, help="gallery store (default: synthetic vectors)")
  p.add_argument("--queries", default=None, help="query store (default: synthetic, or the "
                 "first --num-queries gallery vectors when only --store is given)")
  p.add_argument("--n", type=int, default=50_000, help="synthetic gallery size")
  p.add_argument("--dim", type=int, default=1280, help="synthetic dimension")
  p.add_argument("--num-queries", type=int, default=10_000)
  p.add_argument("--configs", default=DEFAULT_CONFIGS, help="kind:key=value,...;...")
  p.add_argument("--threads", default="0,1", help="faiss thread counts, 0: faiss's default")
  p.add_argument("-k", "--k", type=int, default=10)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--single", type=int, default=200, help="queries timed one at a time")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--machine", default=DEFAULT_MACHINE, help="tag of the default --out name")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  if args.store:
    gallery = store.load(args.store)
    if args.queries:
      q = store.load(args.queries)
      if q.meta.get("model") != gallery.meta.get("model") or q.dim != gallery.dim:
        p.error(f"the gallery holds {gallery.meta.get('model')!r} embeddings of dim "
                f"{gallery.dim}; the queries {q.meta.get('model')!r} of dim {q.dim}")
      queries = q.vectors[:args.num_queries]
    else:
      queries = gallery.vectors[:args.num_queries]
    what = f"{gallery.meta.get('dataset')}-{gallery.meta.get('split')}"
  else:
    gallery, q = synthetic_embeddings(args.n, args.dim, num_queries=args.num_queries,
                                      seed=args.seed)
    queries = q.vectors
    what = f"synthetic-{args.n // 1000}k-{args.dim}"
  print(f"gallery {len(gallery)} x {gallery.dim}, {len(queries)} queries "
        f"({time.perf_counter() - t0:.1f} s to get them)", file=sys.stderr)
  threads = [int(t) for t in args.threads.split(",")]
  records = run(gallery, queries, configs=parse_configs(args.configs), threads=threads,
                k=args.k, repeats=args.repeats, single=args.single,
                log=lambda s: print(s, file=sys.stderr, flush=True))
  env = timing.environment()
  env["versions"]["faiss"] = faiss.__version__
  env["faiss_default_threads"] = faiss.omp_get_max_threads()
  out = {"command": "python -m benchmarks.search " + " ".join(sys.argv[1:] if argv is None
                                                               else argv),
         "environment": env,
         "data": {"gallery": args.store or "synthetic_embeddings", "queries": args.queries,
                  "num_vectors": len(gallery), "dim": gallery.dim,
                  "num_queries": len(queries), "model": gallery.meta.get("model"),
                  "seed": None if args.store else args.seed},
         "k": args.k, "repeats": args.repeats, "single": args.single, "records": records}
  path = pathlib.Path(args.out) if args.out else default_out(args.machine, what)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1) + "\n")
  print(f"wrote {path}", file=sys.stderr)
  return out


if __name__ == "__main__":
  main()
