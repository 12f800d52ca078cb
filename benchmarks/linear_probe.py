"""Linear probe on frozen embeddings: multinomial logistic regression on two embedding stores.

  python -m jaxvision.apps.search embed --model EfficientNetLite0 \\
      --pp "resize(160)|value_range(-0.9921875, 1)" --dataset cifar10 --split train \\
      --out stores/c10-train-160
  python -m jaxvision.apps.search embed ... --split test --out stores/c10-test-160
  python -m benchmarks.linear_probe --train stores/c10-train-160 --test stores/c10-test-160 \\
      --out benchmarks/results/<machine>_<date>_linear-probe.json

The protocol of linear-probe evaluations (Kornblith et al. 2019, CLIP): the backbone runs once
per image (no augmentation) and a softmax classifier is fitted to the stored features to
convergence. Features are standardised with the train split's mean and standard deviation;
the objective is the mean cross-entropy plus ``l2 / 2 * ||W||^2`` (the bias is not
penalised), minimised with Optax's L-BFGS (zoom line search) in float32. ``l2`` is chosen
from ``--l2`` by accuracy on a seeded hold-out of the train split (``--val-fraction``), then
the classifier is refitted on the whole train split and scored once on the test split.

The train-mode alternative (the head trained with SGD through the trainer, the backbone
frozen) is ``train/configs/cifar10_finetune_effnet.py:probe``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvision.apps import store


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
  """``(x - mean) / std`` with the train rows' statistics (a constant column stays 0)."""
  mean = train.mean(0, dtype=np.float64)
  std = train.std(0, dtype=np.float64)
  std = np.where(std > 0, std, 1.0)
  return [((x - mean) / std).astype(np.float32) for x in (train, *others)]


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, *, l2: float,
                 max_iter: int = 1000, tol: float = 1e-5) -> dict[str, np.ndarray]:
  """Multinomial logistic regression: ``{'w': [D, K], 'b': [K]}`` minimising
  ``mean_i CE(x_i @ w + b, y_i) + l2 / 2 * ||w||^2`` over ``x`` float32 ``[N, D]``, ``y`` int
  ``[N]`` in ``[0, num_classes)``, by L-BFGS until the gradient's max-norm is below ``tol``
  or ``max_iter`` iterations."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.int32)
  if x.ndim != 2 or y.shape != (x.shape[0],):
    raise ValueError(f"expected x [N, D] and y [N]; found {x.shape} and {y.shape}")
  onehot = jax.nn.one_hot(y, num_classes)

  def loss(params):
    logits = x @ params["w"] + params["b"]
    ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))
    return ce + 0.5 * l2 * jnp.sum(params["w"] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    params, state, _, i = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    gmax = optax.tree_utils.tree_max(jax.tree.map(jnp.abs, grad))
    return optax.apply_updates(params, updates), state, gmax, i + 1

  def keep_going(carry):
    _, _, gmax, i = carry
    return (i < max_iter) & (gmax >= tol)

  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  init = (params, opt.init(params), jnp.array(jnp.inf), jnp.array(0))
  params, _, gmax, iters = jax.jit(lambda c: jax.lax.while_loop(keep_going, step, c))(init)
  return {"w": np.asarray(params["w"]), "b": np.asarray(params["b"]),
          "iterations": int(iters), "grad_max": float(gmax)}


def accuracy(params, x: np.ndarray, y: np.ndarray) -> float:
  return float(np.mean(np.argmax(x @ params["w"] + params["b"], axis=1) == y))


def probe(train: store.Embeddings, test: store.Embeddings, *, l2_grid, val_fraction: float = 0.1,
          seed: int = 0, max_iter: int = 1000) -> dict:
  """Chooses ``l2`` on a hold-out of ``train``, refits on all of it, scores on ``test``."""
  for name, emb in (("train", train), ("test", test)):
    if emb.labels.ndim != 1 or np.any(emb.labels < 0):
      raise ValueError(f"the {name} store needs one class id per example; found labels of "
                       f"shape {emb.labels.shape} (min {emb.labels.min()})")
  if train.meta.get("model") != test.meta.get("model") or train.dim != test.dim:
    raise ValueError(f"the train store holds {train.meta.get('model')!r} embeddings of dim "
                     f"{train.dim}; the test store {test.meta.get('model')!r} of dim {test.dim}")
  num_classes = int(max(train.labels.max(), test.labels.max())) + 1
  perm = np.random.default_rng(seed).permutation(len(train))
  n_val = int(round(val_fraction * len(train)))
  val, fit = perm[:n_val], perm[n_val:]
  x_fit, x_val = standardize(train.vectors[fit], train.vectors[val])
  search = []
  for l2 in l2_grid:
    t0 = time.perf_counter()
    params = fit_logistic(x_fit, train.labels[fit], num_classes, l2=l2, max_iter=max_iter)
    search.append({"l2": l2, "val_accuracy": accuracy(params, x_val, train.labels[val]),
                   "iterations": params["iterations"], "seconds": time.perf_counter() - t0})
    print(f"l2={l2:g}: hold-out accuracy {search[-1]['val_accuracy']:.4f} "
          f"({params['iterations']} iterations)", file=sys.stderr)
  best = max(search, key=lambda r: r["val_accuracy"])
  x_train, x_test = standardize(train.vectors, test.vectors)
  t0 = time.perf_counter()
  params = fit_logistic(x_train, train.labels, num_classes, l2=best["l2"], max_iter=max_iter)
  return {"model": train.meta.get("model"), "dim": train.dim,
          "preprocessing": train.meta.get("preprocessing"),
          "num_train": len(train), "num_test": len(test), "num_classes": num_classes,
          "val_fraction": val_fraction, "seed": seed, "l2_search": search, "l2": best["l2"],
          "iterations": params["iterations"], "grad_max": params["grad_max"],
          "fit_seconds": time.perf_counter() - t0,
          "train_accuracy": accuracy(params, x_train, train.labels),
          "test_accuracy": accuracy(params, x_test, test.labels)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--train", required=True, help="embedding store of the train split")
  p.add_argument("--test", required=True, help="embedding store of the test split")
  p.add_argument("--l2", default="1e-3,3e-3,1e-2,3e-2,1e-1,3e-1",
                 help="comma-separated l2 values to choose from on the hold-out")
  p.add_argument("--val-fraction", type=float, default=0.1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-iter", type=int, default=1000)
  p.add_argument("--out", help="JSON file for the figures (default: stdout only)")
  args = p.parse_args(argv)
  result = probe(store.load(args.train), store.load(args.test),
                 l2_grid=[float(v) for v in args.l2.split(",")],
                 val_fraction=args.val_fraction, seed=args.seed, max_iter=args.max_iter)
  result.update(date=datetime.date.today().isoformat(), jax=jax.__version__,
                train_store=args.train, test_store=args.test)
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
