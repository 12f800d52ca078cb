"""Content-based recommendation: profiles, MMR, the popularity blend and fallback, the simulated
log, the metrics (against hand computations) and the CLI's one-line errors."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from jaxvision.apps import recommend, store


def _catalog(n_per=30, classes=3, dim=8, sep=2.0, seed=0, model="m", labels=True):
  """Well-separated synthetic classes: class c's items around a random unit centre."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  y = np.repeat(np.arange(classes), n_per).astype(np.int32)
  x = sep * centres[y] + rng.normal(size=(len(y), dim)) / np.sqrt(dim)
  meta = {"model": model, "dataset": "syn", "split": "test",
          "class_names": [f"class{c}" for c in range(classes)]}
  return store.from_arrays(x, labels=y if labels else None, ids=np.arange(len(y)) * 10 + 7,
                           meta=meta)


def _mmr_reference(rel, vec, k, lam):
  """Textbook MMR greedy in float64 over the full similarity matrix."""
  rel, vec = np.asarray(rel, np.float64), np.asarray(vec, np.float64)
  sim = vec @ vec.T
  chosen = []
  while len(chosen) < min(k, len(rel)):
    best, best_gain = None, -np.inf
    for i in range(len(rel)):
      if i in chosen:
        continue
      red = max(sim[i, j] for j in chosen) if chosen else 0.0
      gain = lam * rel[i] - (1 - lam) * red
      if gain > best_gain:
        best, best_gain = i, gain
    chosen.append(best)
  return chosen


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_mmr_matches_a_plain_greedy(lam):
  rng = np.random.default_rng(1)
  vec = store.l2_normalize(rng.normal(size=(25, 6)))
  rel = rng.random(25)
  got = recommend.mmr(rel, vec, k=8, lam=lam)
  assert got.tolist() == _mmr_reference(rel, vec, 8, lam)
  if lam == 1.0:
    assert got.tolist() == np.argsort(-rel)[:8].tolist()


def test_mean_profile_and_top_k_unseen_by_brute_force():
  cat = _catalog()
  rec = recommend.Recommender(cat)
  history_pos = [0, 3, 31, 5]
  r = rec.recommend(cat.ids[history_pos], k=6, strategy="mean")
  v = cat.vectors.astype(np.float64)
  profile = v[history_pos].mean(0)
  profile /= np.linalg.norm(profile)
  sims = v @ profile
  sims[history_pos] = -np.inf
  expected = np.argsort(-sims)[:6]
  assert r.positions.tolist() == expected.tolist()
  np.testing.assert_allclose(r.scores, sims[expected], atol=1e-5)
  np.testing.assert_allclose(r.similarity, sims[expected], atol=1e-5)
  assert r.strategy == "mean" and not r.fallback
  # MMR with lambda=1 keeps the relevance order; lambda=0.2 changes it but keeps the pool's best.
  same = rec.recommend(cat.ids[history_pos], k=6, strategy="mean", mmr_lambda=1.0, mmr_pool=20)
  assert same.positions.tolist() == expected.tolist()
  diverse = rec.recommend(cat.ids[history_pos], k=6, strategy="mean", mmr_lambda=0.2,
                          mmr_pool=20)
  pool = np.argsort(-sims)[:20]
  rel = (sims[pool] - sims[pool].min()) / (sims[pool].max() - sims[pool].min())
  assert diverse.positions.tolist() == pool[_mmr_reference(rel, v[pool], 6, 0.2)].tolist()
  assert diverse.strategy == "mean + MMR (lambda=0.2)"


def test_popularity_blend_is_z_scored_similarity_plus_log_count():
  cat = _catalog(seed=3)
  counts = np.random.default_rng(4).integers(0, 50, len(cat)).astype(np.float64)
  rec = recommend.Recommender(cat, counts)
  hist = [2, 40, 41]
  r = rec.recommend(cat.ids[hist], k=7, strategy="mean", popularity_weight=0.5)
  v = cat.vectors.astype(np.float64)
  q = v[hist].mean(0)
  q /= np.linalg.norm(q)
  sims = v @ q
  score = (sims - sims.mean()) / sims.std() + 0.5 * np.log1p(counts)
  score[hist] = -np.inf
  expected = np.argsort(-score)[:7]
  assert r.positions.tolist() == expected.tolist()
  np.testing.assert_allclose(r.scores, score[expected], atol=1e-4)
  np.testing.assert_allclose(r.similarity, sims[expected], atol=1e-5)
  assert r.strategy == "mean + popularity (w=0.5)"


def test_multi_interest_allocates_slots_by_weight():
  dim = 6
  e = np.eye(dim)
  rng = np.random.default_rng(0)
  # Items near e0 (positions 0..19) and near e1 (20..39); a history of 6 near e0, 4 near e1.
  x = np.concatenate([e[0] + 0.05 * rng.normal(size=(20, dim)),
                      e[1] + 0.05 * rng.normal(size=(20, dim))])
  cat = store.from_arrays(x, meta={"model": "m"})
  hist = [0, 1, 2, 3, 4, 5, 20, 21, 22, 23]
  centroids, weights = recommend.interests(cat.vectors[hist], max_interests=4,
                                           min_per_interest=5, seed=0)
  np.testing.assert_allclose(weights, [0.6, 0.4])
  for c, group in zip(centroids, ([0, 1, 2, 3, 4, 5], [20, 21, 22, 23])):
    mean = cat.vectors[group].astype(np.float64).mean(0)
    np.testing.assert_allclose(c, mean / np.linalg.norm(mean), atol=1e-5)
  r = recommend.Recommender(cat).recommend(cat.ids[hist], k=10, strategy="multi")
  # Sainte-Lague keys (r + 0.5) / w for w = 0.6, 0.4 by hand: A .83, B 1.25, A 2.5, B 3.75,
  # A 4.17, A 5.83, B 6.25, A 7.5, B 8.75, A 9.17.
  sides = ["A" if p < 20 else "B" for p in r.positions]
  assert "".join(sides) == "ABABAABABA"
  assert not set(r.positions.tolist()) & set(hist)
  assert r.interests == pytest.approx([0.6, 0.4])
  # Within an interest, items come in order of similarity to its centroid.
  a = [p for p in r.positions if p < 20]
  sims = cat.vectors[a].astype(np.float64) @ centroids[0]
  assert np.all(np.diff(sims) <= 1e-6)
  # MMR keeps the interests' shares (it re-ranks the interleaved order, not the best
  # interest's scores, which would hand the slots back to interest A).
  for lam in (0.3, 0.7, 1.0):
    m = recommend.Recommender(cat).recommend(cat.ids[hist], k=10, strategy="multi",
                                             mmr_lambda=lam, mmr_pool=20)
    assert sum(p >= 20 for p in m.positions) == 4, lam
  lam1 = recommend.Recommender(cat).recommend(cat.ids[hist], k=10, strategy="multi",
                                              mmr_lambda=1.0, mmr_pool=20)
  np.testing.assert_array_equal(lam1.positions, r.positions)


def test_num_interests_by_history_size():
  assert [recommend.num_interests(n) for n in (1, 4, 5, 12, 19, 20, 200)] == [1, 1, 1, 2, 3, 4, 4]


def test_no_history_falls_back_to_popularity_and_says_so():
  cat = _catalog()
  counts = np.zeros(len(cat))
  counts[[5, 17, 60, 2]] = [9, 7, 7, 1]
  rec = recommend.Recommender(cat, counts)
  for strategy in ("mean", "multi"):
    r = rec.recommend([], k=4, strategy=strategy)
    assert r.positions.tolist() == [5, 17, 60, 2]      # ties broken by catalog position
    assert r.fallback and r.strategy == "popularity (no history)"
  out = rec.to_json(rec.recommend([], k=2), held_out=[int(cat.ids[17])])
  assert out["strategy"] == "popularity (no history)"
  assert [i["id"] for i in out["items"]] == [57, 177]
  assert [i["held_out"] for i in out["items"]] == [False, True]
  assert out["items"][0]["class"] == "class0" and out["items"][0]["score"] == 9
  # Popularity (asked for) excludes what the user has seen.
  assert rec.recommend(cat.ids[[5]], k=2, strategy="popularity").positions.tolist() == [17, 60]


def test_bad_input_is_refused():
  empty = store.from_arrays(np.zeros((0, 4)), meta={"model": "m"})
  with pytest.raises(ValueError, match="empty catalog"):
    recommend.Recommender(empty)
  with pytest.raises(ValueError, match="empty catalog"):
    recommend.simulate(empty)
  rec = recommend.Recommender(_catalog())
  with pytest.raises(ValueError, match="history item id 3 is not in the catalog"):
    rec.recommend([7, 3])
  with pytest.raises(ValueError, match="strategy"):
    rec.recommend([7], strategy="collaborative")
  with pytest.raises(ValueError, match="lambda in"):
    recommend.mmr(np.ones(3), np.eye(3), k=2, lam=1.5)
  with pytest.raises(ValueError, match="one class id"):
    recommend.simulate(_catalog(labels=False))


def test_recall_and_ndcg_by_hand():
  recs, relevant = [5, 3, 9, 1, 7], {3, 1, 7}
  # k=3: hits at rank 2 only. recall 1/3; DCG = 1/log2(3) = 0.6309298; IDCG (3 relevant) =
  # 1 + 0.6309298 + 0.5 = 2.1309298; NDCG = 0.2960819.
  assert recommend.recall_at_k(recs, relevant, 3) == pytest.approx(1 / 3)
  assert recommend.ndcg_at_k(recs, relevant, 3) == pytest.approx(0.2960819, abs=1e-7)
  # k=10: hits at ranks 2, 4, 5: DCG = 0.6309298 + 0.4306766 + 0.3868528 = 1.4484592; NDCG =
  # 1.4484592 / 2.1309298 = 0.6797311; recall 1.
  assert recommend.recall_at_k(recs, relevant, 10) == 1.0
  assert recommend.ndcg_at_k(recs, relevant, 10) == pytest.approx(0.6797311, abs=1e-7)
  # One relevant item at rank 1 out of 2 relevant: IDCG = 1.6309298, NDCG = 0.6131472.
  assert recommend.ndcg_at_k([4, 0], {4, 8}, 10) == pytest.approx(0.6131472, abs=1e-7)
  assert recommend.recall_at_k([1], set(), 10) == 0.0 == recommend.ndcg_at_k([1], set(), 10)


def test_simulation_is_seeded_and_shaped():
  cat = _catalog(n_per=40)
  params = recommend.SimulationParams(num_users=30, cold_start_fraction=0.07, history_min=3,
                                      history_max=8, held_out=4, seed=5)
  log = recommend.simulate(cat, params)
  assert log == recommend.simulate(cat, params)
  other = recommend.simulate(cat, recommend.SimulationParams(num_users=30, seed=6))
  assert other["interactions_sha256"] != log["interactions_sha256"]
  assert log["simulated"] is True and "SIMULATED" in log["note"]
  assert log["params"]["concentration"] == 0.3 and log["params"]["seed"] == 5
  ids = set(cat.ids.tolist())
  for u in log["users"]:
    seq = u["history"] + u["held_out"]
    assert len(set(seq)) == len(seq) and set(seq) <= ids
    assert len(u["held_out"]) == 4 and sum(u["taste"]) == pytest.approx(1, abs=1e-4)
    assert (len(u["history"]) == 0) == (u["id"] < 2) and len(u["history"]) <= 8
    assert u["id"] < 2 or len(u["history"]) >= 3
  json.dumps(log)


def test_simulated_popularity_is_zipf_within_a_class():
  # Two classes of 5 items, tastes near uniform, no noise: a user's first interaction is item i
  # with probability taste[c] * zipf(rank_i) ~ 0.5 * rank ** -1 / H_5.
  cat = _catalog(n_per=5, classes=2)
  params = recommend.SimulationParams(num_users=6000, cold_start_fraction=0.0, history_min=0,
                                      history_max=0, held_out=1, concentration=1000.0,
                                      popularity_exponent=1.0, noise=0.0, seed=2)
  log = recommend.simulate(cat, params)
  labels = cat.labels.astype(np.int64)
  within = recommend.popularity_weights(labels, 1.0, seed=2)
  first = np.asarray([u["held_out"][0] for u in log["users"]])
  freq = np.asarray([(first == i).mean() for i in cat.ids])
  h5 = sum(1 / r for r in range(1, 6))
  for c in range(2):
    members = np.flatnonzero(labels == c)
    order = members[np.argsort(-within[members])]      # most popular first
    expected = 0.5 * np.arange(1, 6) ** -1.0 / h5
    np.testing.assert_allclose(freq[order], expected, atol=0.02)


def test_class_shaped_tastes_and_noise():
  cat = _catalog(n_per=40, classes=4)
  labels = dict(zip(cat.ids.tolist(), cat.labels.tolist()))
  peaked = recommend.simulate(cat, recommend.SimulationParams(
      num_users=50, cold_start_fraction=0.0, history_min=10, history_max=10, concentration=0.01,
      noise=0.0))
  share = [np.bincount([labels[i] for i in u["history"] + u["held_out"]], minlength=4).max() / 15
           for u in peaked["users"]]
  assert np.mean(share) > 0.95
  noisy = recommend.simulate(cat, recommend.SimulationParams(
      num_users=50, cold_start_fraction=0.0, history_min=10, history_max=10, concentration=0.01,
      noise=1.0))
  share = [np.bincount([labels[i] for i in u["history"] + u["held_out"]], minlength=4).max() / 15
           for u in noisy["users"]]
  assert np.mean(share) < 0.6


def test_log_over_another_store_is_refused_naming_both():
  cat = _catalog(model="imagenet")
  log = recommend.simulate(cat, recommend.SimulationParams(num_users=5))
  recommend.check_log(log, cat)
  with pytest.raises(recommend.LogError, match=r"model='imagenet' \(90 items.*model='tuned' "
                                               r"\(90 items"):
    recommend.check_log(log, _catalog(model="tuned"))
  with pytest.raises(recommend.LogError, match=r"90 items.*60 items"):
    recommend.check_log(log, _catalog(n_per=20, model="imagenet"))
  log["users"][1]["history"] = [3]            # ids are 7, 17, ...: 3 is none of them
  with pytest.raises(recommend.LogError, match="item id 3 is not in the store's catalog"):
    recommend.Recommender.from_log(cat, log)
  # The same labels under another model's embeddings get the same interactions.
  again = recommend.simulate(_catalog(model="tuned", seed=9),
                             recommend.SimulationParams(num_users=5))
  assert again["interactions_sha256"] == log["interactions_sha256"]


def test_evaluate_popularity_row_by_hand():
  cat = _catalog(n_per=30, classes=3)
  log = recommend.simulate(cat, recommend.SimulationParams(
      num_users=40, cold_start_fraction=0.075, history_min=4, history_max=12, held_out=3))
  result = recommend.evaluate(cat, log, k=5, mmr_pool=20, popularity_weight=1.0)
  rows = {r["strategy"]: r for r in result["rows"]}
  assert len(rows) == 12 and result["simulation"] == log["params"] and result["simulated"]
  assert rows["mean"]["fallback_users"] == 3
  # Popularity by hand: counts over histories, ties by catalog position, seen items skipped.
  ids = cat.ids.tolist()
  counts = np.zeros(len(ids))
  for u in log["users"]:
    for i in u["history"]:
      counts[ids.index(i)] += 1
  order = sorted(range(len(ids)), key=lambda p: (-counts[p], p))
  recalls, ndcgs = [], []
  for u in log["users"]:
    top = [ids[p] for p in order if ids[p] not in u["history"]][:5]
    hits = [1.0 if i in u["held_out"] else 0.0 for i in top]
    recalls.append(sum(hits) / 3)
    ndcgs.append(sum(h / math.log2(r + 2) for r, h in enumerate(hits))
                 / sum(1 / math.log2(r + 2) for r in range(3)))
  assert rows["popularity"]["recall@5"] == pytest.approx(np.mean(recalls), abs=1e-5)
  assert rows["popularity"]["ndcg@5"] == pytest.approx(np.mean(ndcgs), abs=1e-5)
  # With well-separated classes and class-shaped tastes, content puts the user's classes
  # first: the recommended items' taste weight is far above random's (about 1/3).
  assert rows["mean"]["taste@5"] > rows["random"]["taste@5"] + 0.2


def _write_store(folder, model="m", seed=0, n_per=30):
  cat = _catalog(n_per=n_per, model=model, seed=seed)
  w = store.StoreWriter(folder, model=model, dim=cat.dim, num_examples=len(cat), chunk_size=50,
                        dataset="syn", split="test", class_names=cat.meta["class_names"])
  for i in w.missing_chunks():
    s, e = w.chunk_range(i)
    w.write_chunk(i, cat.ids[s:e], cat.labels[s:e], cat.vectors[s:e])
  w.finish()


def test_cli_simulate_recommend_evaluate(tmp_path, capsys):
  _write_store(tmp_path / "s")
  _write_store(tmp_path / "other", model="other")
  log = tmp_path / "log.json"
  main = recommend.main
  assert main(["simulate", "--store", str(tmp_path / "s"), "--out", str(log),
               "--num_users", "12", "--cold_start_fraction", "0.1", "--history_min", "3",
               "--history_max", "9"]) == 0
  capsys.readouterr()
  assert main(["recommend", "--store", str(tmp_path / "s"), "--log", str(log), "--user", "4",
               "--k", "3", "--mmr_lambda", "0.5"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["strategy"] == "multi + MMR (lambda=0.5)" and len(out["items"]) == 3
  assert {"id", "score", "label", "class", "held_out"} <= set(out["items"][0])
  assert main(["recommend", "--store", str(tmp_path / "s"), "--log", str(log), "--user", "0",
               "--k", "2"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["strategy"] == "popularity (no history)" and out["history_size"] == 0
  assert main(["evaluate", "--store", str(tmp_path / "s"), "--log", str(log), "--k", "5",
               "--out", str(tmp_path / "new" / "eval.json")]) == 0
  assert "popularity: recall@5" in capsys.readouterr().err      # progress on stderr
  result = json.loads((tmp_path / "new" / "eval.json").read_text())
  assert result["simulation"]["num_users"] == 12 and len(result["rows"]) == 12
  for argv, message in [
      (["recommend", "--store", str(tmp_path / "s"), "--log", str(log), "--user", "99"],
       "error: user 99 is not in the log (12 users, ids 0..11)"),
      (["evaluate", "--store", str(tmp_path / "other"), "--log", str(log)],
       "error: the log was made over another store: model='m'"),
      (["evaluate", "--store", str(tmp_path / "missing"), "--log", str(log)],
       "is not an embedding store"),
      (["evaluate", "--store", str(tmp_path / "s"), "--log",
        str(tmp_path / "new" / "eval.json")],
       "expected an interaction log"),
  ]:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_help_and_usage_errors_in_one_line():
  for args, code in ([["--help"], 0], [["evaluate", "--help"], 0], [["recommend"], 2]):
    proc = subprocess.run([sys.executable, "-m", "jaxvision.apps.recommend", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    if code:
      assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1
    else:
      assert "usage:" in proc.stdout
