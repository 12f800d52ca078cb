"""GAN trainer (DCGAN and class-conditional GAN): ``train_and_evaluate`` and ``generate``.

Workdir layout::

    <workdir>/checkpoints/<step>/      Orbax steps: the whole GANState plus meta (the latest
                                       ``keep_checkpoints`` and the best by lowest Frechet
                                       classifier distance, when quality metrics are on)
    <workdir>/metrics.jsonl            one JSON record per log or evaluation
    <workdir>/tensorboard/             TensorBoard event files
    <workdir>/results.json             config, steps, timings and the final evaluation
    <workdir>/plots/samples_<step>.png sample grid at each evaluation (fixed latents; one row
                                       per class when conditional)
    <workdir>/plots/samples_final.png  the final grid
    <workdir>/plots/interpolation.png  spherical latent interpolations (one strip per row)
    <workdir>/plots/curves.png         losses and quality over steps

Running the same command with the same workdir resumes from the latest checkpoint.

Self-conditioning (``config.self_condition.num_clusters = K > 0``; Liu et al. 2020): the
conditional pair is trained on K "classes" that are k-means clusters of the discriminator's
features of the training images (``jaxvision.training.clustering``), computed before the first
step and again every ``recluster_every_steps`` (never again when it is 0); no dataset label
is used. The cluster id of every training example is part of the checkpointed state; generated
images get ids drawn from the empirical cluster distribution, and quality is measured as for
an unconditional model. Each clustering writes a ``kind='cluster'`` record (its purity against
the dataset's labels, a diagnostic only) to ``metrics.jsonl``.

Sample quality (``config.classifier_workdir``: the workdir of a completed classifier run, e.g.
``python -m train.main --config=train/configs/mnist_cnn.py --workdir=/tmp/runs/mnist_cnn``):
generated images are quantized to uint8 (what a PNG stores), preprocessed with the
classifier's evaluation spec and scored with ``jaxvision.metrics.generative``; every report
prints the real-data references beside the model's values (the classifier score of the real
test set, and the Frechet distance between real train and test features). Without
``classifier_workdir`` the quality metrics are skipped (with a warning).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from jaxvision.data import pipeline, preprocess
from jaxvision.metrics import generative
from jaxvision.models import gan as gan_models
from jaxvision.training import checkpoint as ckpt_lib
from jaxvision.training import clustering
from jaxvision.training import gan as gan_lib
from jaxvision.training import loop, optim, reporting, sharding, steps as steps_lib
from train import classification

GENERATORS = {"Generator": gan_models.Generator,
              "ConditionalGenerator": gan_models.ConditionalGenerator}
DISCRIMINATORS = {"Discriminator": gan_models.Discriminator,
                  "ProjectionDiscriminator": gan_models.ProjectionDiscriminator}
CONDITIONAL_MODELS = ("ConditionalGenerator", "ProjectionDiscriminator")
BEST_METRIC = "frechet_classifier_distance"  # lower is better
# Metrics that must stay finite; a NaN/inf in any stops the run before the next checkpoint.
GUARDED_METRICS = ("d_loss", "g_loss")
# Images from the data pipeline must lie in the generator's tanh range, up to round-off.
RANGE_TOLERANCE = 1e-3
# Fixed-latent streams: NumPy generators seeded with [seed, stream].
_GRID_STREAM, _EVAL_STREAM, _INTERP_STREAM, _STATS_STREAM, _GENERATE_STREAM = range(1, 6)
_LABEL_STREAM_OFFSET = 100  # label draws from a pseudo-label pool: stream + this offset


def num_clusters(config) -> int:
  """``config.self_condition.num_clusters`` (0: not self-conditioned)."""
  self_condition = config.get("self_condition")
  k = int(self_condition.num_clusters) if self_condition is not None else 0
  if k < 0 or k == 1:
    raise ValueError(f"config.self_condition.num_clusters must be 0 (off) or >= 2; found {k}")
  return k


def _build(table: dict, cfg, what: str, *, num_classes: int, **kwargs):
  if cfg.name not in table:
    raise ValueError(f"unknown {what} {cfg.name!r}; expected one of {sorted(table)}")
  if cfg.name in CONDITIONAL_MODELS:
    kwargs["num_classes"] = num_classes
  return table[cfg.name](**{k: v for k, v in cfg.items() if k != "name"}, **kwargs)


def create_models(config, image_shape, num_classes: int):
  """``(generator, discriminator)`` from ``config.generator`` / ``config.discriminator``.

  Each is ``name`` plus constructor keywords; conditional models get ``num_classes``, or the
  number of clusters when the run is self-conditioned (which needs the conditional pair).
  """
  clusters = num_clusters(config)
  if clusters:
    if (config.generator.name, config.discriminator.name) != CONDITIONAL_MODELS:
      raise ValueError(
          f"config.self_condition.num_clusters={clusters} conditions the GAN on clusters: it "
          f"needs generator 'ConditionalGenerator' and discriminator "
          f"'ProjectionDiscriminator'; found {config.generator.name!r} and "
          f"{config.discriminator.name!r}")
    num_classes = clusters
  dtype = classification._dtype(config)  # pylint: disable=protected-access
  generator = _build(GENERATORS, config.generator, "generator", num_classes=num_classes,
                     image_shape=tuple(int(d) for d in image_shape), dtype=dtype)
  discriminator = _build(DISCRIMINATORS, config.discriminator, "discriminator",
                         num_classes=num_classes, dtype=dtype)
  gan_lib.num_classes_of(generator, discriminator)  # both conditional or neither
  return generator, discriminator


def _class_names(config, info: pipeline.DatasetInfo) -> list[str]:
  """Names of the generator's classes: the dataset's, or ``cluster<k>`` when self-conditioned."""
  clusters = num_clusters(config)
  return [f"cluster{k}" for k in range(clusters)] if clusters else list(info.class_names)


def _meta(config, info: pipeline.DatasetInfo, image_shape, generator) -> dict:
  clusters = num_clusters(config)
  return {
      "model": f"{config.generator.name}/{config.discriminator.name}",
      "generator": config.generator.to_dict(),
      "discriminator": config.discriminator.to_dict(),
      "latent_dim": int(generator.latent_dim),
      "image_shape": [int(d) for d in image_shape],
      "num_classes": getattr(generator, "num_classes", None),
      "class_names": _class_names(config, info),
      "self_condition": ({"num_clusters": clusters,
                          "num_examples": pipeline.split_size(info, config.train_split)}
                         if clusters else None),
      "dataset": info.name,
      "loss": config.loss,
      "ema": config.ema_decay > 0,
  }


_META_KEYS = ("model", "latent_dim", "image_shape", "num_classes")


def create_state(config, generator, discriminator, image_shape, total_steps: int, mesh, *,
                 num_examples: int = 0, abstract: bool = False):
  """A replicated :class:`GANState` with the optimizers and EMA setting of ``config``.

  ``num_examples``: size of the training split; a self-conditioned run's state holds one
  cluster id per example. ``abstract=True`` gives its shapes and shardings only (a restore
  target; nothing is initialised or compiled).
  """
  if num_clusters(config) and num_examples <= 0:
    raise ValueError("a self-conditioned GAN state needs num_examples, the training split size")
  g_tx, _ = optim.make_optimizer(config.g_optimizer, total_steps)
  d_tx, _ = optim.make_optimizer(config.d_optimizer, total_steps)
  return gan_lib.create_gan_state(generator, discriminator, g_tx, d_tx, image_shape=image_shape,
                                  rng=jax.random.PRNGKey(config.seed),
                                  ema=config.ema_decay > 0,
                                  num_pseudo_labels=num_examples if num_clusters(config) else 0,
                                  mesh=mesh, abstract=abstract)


class QualityEvaluator:
  """Scores image sets with a trained classifier; real-data references are computed once.

  Args:
    classifier_workdir: workdir of a completed classification run (see
      ``train.classification.load_classifier``).
    builder, info: the GAN's dataset (its stored images must match the classifier's).
    checkpoint: the classifier checkpoint, ``'best'`` or ``'latest'``.
    num_real: real images per reference set (the first ``num_real`` of the test split, and
      of the train split).
    batch_size: classifier batch size.

  Attributes:
    reference: ``{'real_classifier_score', 'real_train_test_distance', 'num_real_samples'}``.
  """

  def __init__(self, classifier_workdir, *, builder, info, checkpoint: str = "best",
               num_real: int = 10000, batch_size: int = 500):
    self.apply_fn, self.variables, self.meta = classification.load_classifier(
        classifier_workdir, checkpoint=checkpoint)
    self.workdir = str(pathlib.Path(classifier_workdir).resolve())
    self.batch_size = batch_size
    if list(self.meta["dataset_image_shape"]) != list(info.image_shape):
      raise ValueError(
          f"the classifier in {self.workdir} was trained on images of shape "
          f"{tuple(self.meta['dataset_image_shape'])} ({self.meta['dataset']}); the GAN's "
          f"dataset {info.name!r} has {tuple(info.image_shape)}")
    if self.meta["num_classes"] != info.num_classes:
      raise ValueError(f"the classifier in {self.workdir} has {self.meta['num_classes']} "
                       f"classes; dataset {info.name!r} has {info.num_classes}")
    self._pp = preprocess.parse(self.meta["pp_eval"])
    test_probs, test_feats = self._real_features(builder, info, "test", num_real)
    _, train_feats = self._real_features(builder, info, "train", num_real)
    self._test_stats = generative.gaussian_stats(test_feats)
    self.reference = {
        "real_classifier_score": generative.classifier_score(test_probs),
        "real_train_test_distance": generative.frechet_distance(
            *generative.gaussian_stats(train_feats), *self._test_stats),
        "num_real_samples": len(test_feats),
    }

  def _real_features(self, builder, info, split, num):
    if pipeline.split_size(info, split) > num:
      split = f"{split}[:{num}]"
    batches = pipeline.make_eval_iterator(builder, info, split=split,
                                          global_batch_size=self.batch_size,
                                          pp=self.meta["pp_eval"], process_index=0,
                                          process_count=1)
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    return generative.classifier_features(self.apply_fn, self.variables, images,
                                          self.batch_size)

  def _classifier_inputs(self, images_uint8: np.ndarray) -> np.ndarray:
    ds = tf.data.Dataset.from_tensor_slices(images_uint8).map(
        lambda image: tf.cast(preprocess.apply_eval(self._pp, {"image": image})["image"],
                              tf.float32))
    return np.concatenate(list(ds.batch(self.batch_size).as_numpy_iterator()))

  def evaluate(self, images_uint8: np.ndarray, labels: np.ndarray | None = None,
               class_names=None) -> dict:
    """Quality of uint8 images ``[N, H, W, C]`` (``labels [N]``: the requested classes).

    Returns:
      ``classifier_score``, ``frechet_classifier_distance`` (to the real test features), the
      :attr:`reference` values, ``num_samples``, ``predicted_class_fractions`` (``[K]``, the
      share of samples classified as each class) and, with labels, ``conditional_accuracy``
      and ``per_class_accuracy`` (``{class name: accuracy}``).
    """
    images_uint8 = np.asarray(images_uint8)
    expected = tuple(self.meta["dataset_image_shape"])
    if images_uint8.dtype != np.uint8 or images_uint8.shape[1:] != expected:
      raise ValueError(f"the classifier expects uint8 images of shape [N, {expected}] (its "
                       f"dataset's); found {images_uint8.dtype} {images_uint8.shape}")
    probs, feats = generative.classifier_features(
        self.apply_fn, self.variables, self._classifier_inputs(images_uint8), self.batch_size)
    predicted = np.bincount(np.argmax(probs, axis=1), minlength=probs.shape[1]) / len(probs)
    out = {
        "num_samples": int(len(probs)),
        "classifier_score": generative.classifier_score(probs),
        "frechet_classifier_distance": generative.frechet_distance(
            *generative.gaussian_stats(feats), *self._test_stats),
        **self.reference,
        # Share of the samples the classifier assigns to each class (mode dropping shows here).
        "predicted_class_fractions": [float(f) for f in predicted],
    }
    if labels is not None:
      per_class = generative.per_class_accuracy(probs, labels)
      names = class_names or [str(k) for k in range(len(per_class))]
      out["conditional_accuracy"] = generative.conditional_accuracy(probs, labels)
      out["per_class_accuracy"] = {str(n): float(a) for n, a in zip(names, per_class)}
    return out


def summary_line(ev: dict) -> str:
  """One line for an ``eval`` dict: the model's values beside the real-data references."""
  step = ev["step"]
  if "classifier_score" not in ev:
    return f"[eval] step {step}: samples written (quality metrics skipped)"
  line = (f"[eval] step {step}: classifier score {ev['classifier_score']:.3f} "
          f"(real test {ev['real_classifier_score']:.3f}) | Frechet classifier distance "
          f"{ev['frechet_classifier_distance']:.3f} (real train-test "
          f"{ev['real_train_test_distance']:.3f}) | {ev['num_samples']} samples")
  fractions = ev.get("predicted_class_fractions")
  if fractions and "conditional_accuracy" not in ev:
    rare = int(np.argmin(fractions))
    line += f" | rarest class {rare}: {100 * fractions[rare]:.1f}% of samples"
  if "conditional_accuracy" in ev:
    worst = min(ev["per_class_accuracy"], key=ev["per_class_accuracy"].get)
    line += (f" | conditional accuracy {ev['conditional_accuracy']:.4f} (lowest class "
             f"{worst!r}: {ev['per_class_accuracy'][worst]:.4f})")
  return line


class _Sampler:
  """Generates images from host latents with the evaluation generator, in sharded batches."""

  def __init__(self, generator, mesh, batch_size: int):
    sharding.check_batch_size(batch_size, mesh, "eval_batch_size")
    self.generator = generator
    self.mesh = mesh
    self.batch_size = batch_size
    self._sample = gan_lib.make_sample_fn(generator, mesh)
    self.num_classes = getattr(generator, "num_classes", None)

  def __call__(self, variables, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Images ``[N, H, W, C]`` float32 in ``[-1, 1]`` for ``z [N, D]`` (and ``labels [N]``)."""
    num, size = len(z), self.batch_size
    pad = -num % size
    arrays = {"z": np.concatenate([z, np.zeros((pad, z.shape[1]), z.dtype)])}
    if self.num_classes is not None:
      arrays["labels"] = np.concatenate([labels, np.zeros(pad, labels.dtype)]).astype(np.int32)
    p, count = jax.process_index(), jax.process_count()
    local = size // count
    out = []
    for start in range(0, num + pad, size):
      rows = slice(start + p * local, start + (p + 1) * local)
      batch = sharding.shard_batch({k: v[rows] for k, v in arrays.items()}, self.mesh)
      args = (batch["z"],) + ((batch["labels"],) if self.num_classes is not None else ())
      out.append(np.asarray(jax.device_get(self._sample(variables, *args))))
    return np.concatenate(out)[:num]


def _latents(seed: int, stream: int, shape) -> np.ndarray:
  """Fixed float32 N(0, I) latents of one stream (host-side NumPy: nothing to compile)."""
  return np.random.default_rng([seed, stream]).standard_normal(shape).astype(np.float32)


def _pool_labels(pool: np.ndarray, num: int, seed: int, stream: int) -> np.ndarray:
  """``num`` fixed draws (with replacement) from the pseudo-label ``pool [N]``: int32 ``[num]``."""
  rng = np.random.default_rng([seed, stream + _LABEL_STREAM_OFFSET])
  return np.asarray(pool)[rng.integers(0, len(pool), num)].astype(np.int32)


def _grid_inputs(config, num_classes, pool=None):
  """Fixed latents of the sample grid: ``(z [N, D], labels [N] or None)``, row-major.

  With a pseudo-label ``pool`` (self-conditioning) the grid is laid out as an unconditional
  one, each sample's cluster drawn from the pool.
  """
  cols = config.grid_columns
  if num_classes is None or pool is not None:
    z = _latents(config.seed, _GRID_STREAM,
                 (config.grid_rows * cols, config.generator.latent_dim))
    return z, None if pool is None else _pool_labels(pool, len(z), config.seed, _GRID_STREAM)
  # One row per class, the same latent in each column: style fixed down a column.
  z = _latents(config.seed, _GRID_STREAM, (cols, config.generator.latent_dim))
  return np.tile(z, (num_classes, 1)), np.repeat(np.arange(num_classes, dtype=np.int32), cols)


def _eval_inputs(config, num_classes, pool=None):
  """Fixed latents of the quality evaluation; class-balanced labels when conditional, or
  labels drawn from the pseudo-label ``pool`` when self-conditioned."""
  n = config.num_eval_samples
  z = _latents(config.seed, _EVAL_STREAM, (n, config.generator.latent_dim))
  if num_classes is None:
    return z, None
  if pool is not None:
    return z, _pool_labels(pool, n, config.seed, _EVAL_STREAM)
  return z, np.arange(n, dtype=np.int32) % num_classes


def _generator_variables(generator, state, config):
  return gan_lib.generator_variables(
      generator, state, use_ema=True,
      rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), _STATS_STREAM),
      num_samples=config.standing_stats_samples)


def _plot_samples(sampler, variables, config, num_classes, class_names, path, title, pool=None):
  z, labels = _grid_inputs(config, num_classes, pool)
  images = sampler(variables, z, labels)
  row_labels = (None if num_classes is None or pool is not None
                else [class_names[k] for k in range(num_classes)])
  reporting.plot_image_grid(images, path, ncols=config.grid_columns, row_labels=row_labels,
                            title=title)


def _plot_interpolation(sampler, variables, config, num_classes, class_names, path, pool=None):
  rows, steps = config.interpolation_rows, config.interpolation_steps
  ends = _latents(config.seed, _INTERP_STREAM, (2, rows, config.generator.latent_dim))
  z = gan_lib.slerp(ends[0], ends[1], np.linspace(0.0, 1.0, steps))
  labels, row_labels = None, None
  if num_classes is not None:
    row_classes = (np.arange(rows) % num_classes if pool is None
                   else _pool_labels(pool, rows, config.seed, _INTERP_STREAM))
    labels = np.repeat(row_classes, steps).astype(np.int32)
    row_labels = [class_names[k] for k in row_classes]
  images = sampler(variables, z.reshape(rows * steps, -1), labels)
  reporting.plot_image_grid(images, path, ncols=steps, row_labels=row_labels,
                            title="latent interpolation (slerp)")


def _flush(pending, writer, first_step) -> dict:
  """Fetches queued per-step metrics, stops on NaN/inf, writes their mean."""
  return loop.flush_metrics(pending, writer, first_step, guarded=GUARDED_METRICS, what="GAN",
                            hint="lower the learning rates or switch config.loss")


class _Clusterer:
  """Clusters the training split by the discriminator's features (self-conditioning).

  The images go through ``config.pp_train`` (with a fixed per-example rng) in stored order,
  the same order as the train iterator's split, so cluster id ``i`` belongs to example ``i``.
  Every process computes all ids from its local copy of the replicated discriminator.
  """

  def __init__(self, config, builder, info, discriminator):
    self.config = config
    self.num_clusters = num_clusters(config)
    self.batches = pipeline.make_eval_iterator(
        builder, info, split=config.train_split,
        global_batch_size=int(config.self_condition.feature_batch_size), pp=config.pp_train,
        process_index=0, process_count=1)

    def features(params, stats, images):
      # phi(x) of the projection discriminator does not depend on the label.
      ids = jax.numpy.zeros(images.shape[:1], jax.numpy.int32)
      variables = {"params": params, **({"batch_stats": stats} if stats else {})}
      _, aux = discriminator.apply(variables, images, ids, train=False)
      return aux["features"]

    self._features = jax.jit(features)

  def __call__(self, state, step: int, previous: np.ndarray | None):
    """``(ids int32 [N], record)``: cluster ids (renumbered to agree with ``previous``) and a
    record of the clustering for ``metrics.jsonl``."""
    start = time.perf_counter()
    local = lambda a: a.addressable_data(0)  # pylint: disable=unnecessary-lambda-assignment
    params, stats = jax.tree.map(local, (state.d_params, state.d_batch_stats))
    feats, labels = [], []
    for batch in self.batches:
      keep = batch["mask"]
      feats.append(np.asarray(self._features(params, stats, batch["image"]))[keep])
      labels.append(batch["label"][keep])
    feats, labels = np.concatenate(feats), np.concatenate(labels)
    sc = self.config.self_condition
    ids = clustering.cluster_features(feats, self.num_clusters, pca_dims=int(sc.pca_dims),
                                      seed=int(self.config.seed) + step)
    record = {}
    if previous is not None:
      ids = clustering.match_clusters(previous, ids, self.num_clusters)
      record["kept_fraction"] = float(np.mean(ids == previous))
    sizes = np.bincount(ids, minlength=self.num_clusters) / len(ids)
    record.update(purity=clustering.purity(ids, labels), largest_cluster=float(sizes.max()),
                  smallest_cluster=float(sizes.min()), seconds=time.perf_counter() - start)
    return ids, record


def _host_pool(state) -> np.ndarray | None:
  """This process's copy of the state's cluster ids (int32 ``[N]``), or ``None``."""
  if state.pseudo_labels is None:
    return None
  return np.asarray(jax.device_get(state.pseudo_labels.addressable_data(0)))


def _with_pool(state, pool: np.ndarray, mesh):
  """``state`` with cluster ids ``pool`` (replicated on ``mesh``, as the rest of the state)."""
  return state.replace(pseudo_labels=jax.device_put(pool, sharding.replicated(mesh)))


def _check_image_range(batch):
  lo, hi = float(np.min(batch["image"])), float(np.max(batch["image"]))
  if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
    raise ValueError(f"GAN training images must lie in [-1, 1] (the generator's tanh range; "
                     f"end config.pp_train with 'value_range(-1, 1)'); found values in "
                     f"[{lo:.4g}, {hi:.4g}]")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains the GAN of ``config`` into ``workdir`` (resuming if it holds checkpoints)."""
  builder, info = pipeline.get_dataset(config.dataset, data_dir=config.get("data_dir"))
  total_steps = int(config.num_train_steps)
  if total_steps <= 0:
    raise ValueError(f"config.num_train_steps must be > 0; found {total_steps}")

  with loop.session(config, workdir, best_metric=BEST_METRIC, best_mode="min") as run:
    workdir, mesh, start_step = run.workdir, run.mesh, run.start_step
    checkpointer, writer = run.checkpointer, run.writer
    evaluator = None
    if config.get("classifier_workdir"):
      evaluator = QualityEvaluator(config.classifier_workdir, builder=builder, info=info,
                                   checkpoint=config.get("classifier_checkpoint", "best"),
                                   num_real=config.num_real_samples,
                                   batch_size=config.eval_batch_size)
    else:
      logging.warning("config.classifier_workdir is not set: sample quality is not measured")
      print("Warning: config.classifier_workdir is not set; sample-quality metrics are "
            "skipped.")

    def train_batches(start, labels=None):
      return pipeline.make_train_iterator(
          builder, info, split=config.train_split, global_batch_size=config.batch_size,
          pp=config.pp_train, seed=config.seed, start_step=start, labels=labels)

    train_iter = train_batches(start_step)
    first = next(train_iter)
    _check_image_range(first)
    image_shape = first["image"].shape[1:]
    generator, discriminator = create_models(config, image_shape, info.num_classes)
    num_classes = getattr(generator, "num_classes", None)
    class_names = _class_names(config, info)
    meta = _meta(config, info, image_shape, generator)
    clusters = num_clusters(config)
    state = create_state(config, generator, discriminator, image_shape, total_steps, mesh,
                         num_examples=pipeline.split_size(info, config.train_split),
                         abstract=bool(start_step))
    state = run.resume(state, meta, total_steps, check_keys=_META_KEYS)
    pool, clusterer, cluster_seconds = None, None, 0.0
    recluster_every = 0
    if clusters:
      # The cluster ids replace the dataset's labels before any step sees a batch.
      recluster_every = int(config.self_condition.recluster_every_steps)
      clusterer = _Clusterer(config, builder, info, discriminator)
      if start_step:
        pool = _host_pool(state)
      else:
        pool, record = clusterer(state, 0, None)
        cluster_seconds += record["seconds"]
        writer.write(0, "cluster", record)
        state = _with_pool(state, pool, mesh)
      train_iter = train_batches(start_step, pool)  # `first` now only gives shapes

    train_step, compile_seconds = loop.compile_step(
        steps_lib.jit_train_step(
            gan_lib.make_gan_step(generator, discriminator, loss=config.loss,
                                  ema_decay=config.ema_decay, fake_labels=config.fake_labels),
            mesh), state, first, mesh)
    sampler = _Sampler(generator, mesh, config.eval_batch_size)

    def evaluate(state, step, path):
      variables = _generator_variables(generator, state, config)
      ev = {"step": int(step), "generator": "ema" if state.has_ema else "trained"}
      if evaluator is not None:
        eval_z, eval_labels = _eval_inputs(config, num_classes, pool)
        images = reporting.to_uint8(sampler(variables, eval_z, eval_labels))
        # Cluster ids are not the classifier's classes: no conditional accuracy for them.
        ev.update(evaluator.evaluate(images, None if clusters else eval_labels, class_names),
                  classifier_workdir=evaluator.workdir,
                  classifier_checkpoint_step=evaluator.meta["checkpoint_step"])
      title = f"step {step}"
      if "classifier_score" in ev:
        title += (f": classifier score {ev['classifier_score']:.2f}, "
                  f"FCD {ev['frechet_classifier_distance']:.2f}")
      if jax.process_index() == 0:
        _plot_samples(sampler, variables, config, num_classes, class_names, path, title, pool)
      return ev

    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else total_steps
    log_every = max(1, config.get("log_every_steps", 100))
    ckpt_every = config.get("checkpoint_every_steps", -1)
    train_seconds, eval_seconds, last_eval = 0.0, 0.0, None
    pending, pending_from = [], start_step
    batch = None if clusters else first
    bar = tqdm.tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                    dynamic_ncols=True, disable=config.get("disable_progress_bar", None))
    t_mark, n_mark = time.perf_counter(), 0
    for step in range(start_step, total_steps):
      if batch is None:
        batch = next(train_iter)
      state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
      batch = None
      pending.append(metrics)
      done = step + 1
      bar.update(1)
      n_mark += 1
      do_eval = done % eval_every == 0 or done == total_steps
      do_ckpt = do_eval or (ckpt_every > 0 and done % ckpt_every == 0)
      do_cluster = (clusters and recluster_every > 0 and done % recluster_every == 0
                    and done < total_steps)
      if done % log_every == 0 or do_ckpt or do_cluster:
        means = _flush(pending, writer, pending_from)
        pending, pending_from = [], done
        now = time.perf_counter()
        train_seconds += now - t_mark
        ips = n_mark * config.batch_size / max(now - t_mark, 1e-9)
        writer.write(done, "train", {"images_per_s": ips})
        bar.set_postfix(d_loss=f"{means['d_loss']:.3f}", g_loss=f"{means['g_loss']:.3f}")
        if bar.disable:
          print(f"[train] step {done}/{total_steps}: d_loss {means['d_loss']:.4f} g_loss "
                f"{means['g_loss']:.4f} ({ips:.0f} img/s, {train_seconds:.0f} s)", flush=True)
        if do_eval:
          last_eval = evaluate(state, done, workdir / "plots" / f"samples_{done}.png")
          writer.write(done, "eval", {k: v for k, v in last_eval.items()
                                      if isinstance(v, float)})
          tqdm.tqdm.write(summary_line(last_eval))
        if do_cluster:  # after the evaluation (it samples the pool it was trained on)
          pool, record = clusterer(state, done, pool)
          cluster_seconds += record["seconds"]
          writer.write(done, "cluster", record)
          tqdm.tqdm.write(f"[cluster] step {done}: purity {record['purity']:.3f}, "
                          f"{record['kept_fraction']:.3f} kept their cluster "
                          f"({record['seconds']:.0f} s)")
          state = _with_pool(state, pool, mesh)
          train_iter, batch = train_batches(done, pool), None
        if do_ckpt or do_cluster:
          ranked = do_eval and BEST_METRIC in last_eval
          checkpointer.save(done, state, meta,
                            metrics={BEST_METRIC: last_eval[BEST_METRIC]} if ranked else None)
        t_mark, n_mark = time.perf_counter(), 0
        eval_seconds += t_mark - now - (record["seconds"] if do_cluster else 0.0)
    bar.close()
    final_step = int(jax.device_get(state.step))
    if last_eval is None:  # Already complete: evaluate what the checkpoint holds.
      last_eval = evaluate(state, final_step, workdir / "plots" / f"samples_{final_step}.png")
      print(summary_line(last_eval))
    if jax.process_index() == 0:
      variables = _generator_variables(generator, state, config)
      title = f"final (step {final_step})"
      if "classifier_score" in last_eval:
        title += f": classifier score {last_eval['classifier_score']:.2f}"
      _plot_samples(sampler, variables, config, num_classes, class_names,
                    workdir / "plots" / "samples_final.png", title, pool)
      _plot_interpolation(sampler, variables, config, num_classes, class_names,
                          workdir / "plots" / "interpolation.png", pool)
    results = {
        "config": config.to_dict(),
        "dataset": {"name": info.name, "source": info.source,
                    "num_examples": dict(info.num_examples)},
        "steps": final_step,
        "resumed_from_step": start_step,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "compile_seconds": compile_seconds,
        "cluster_seconds": cluster_seconds,
        "devices": mesh.devices.size,
        "eval": last_eval,
    }
    if jax.process_index() == 0:
      (workdir / "results.json").write_text(json.dumps(results, indent=2))
      reporting.plot_curves(reporting.read_metrics(workdir / "metrics.jsonl"),
                            workdir / "plots" / "curves.png", metrics=_curve_metrics(last_eval))
    return results


def _curve_metrics(ev: dict) -> tuple[str, ...]:
  names = ("d_loss", "g_loss")
  if "classifier_score" in ev:
    names += ("classifier_score", BEST_METRIC)
  if "conditional_accuracy" in ev:
    names += ("conditional_accuracy",)
  return names


def restore_generator(config, workdir, checkpoint: str = "best"):
  """Restores a GAN workdir's generator for sampling.

  ``checkpoint='best'`` (lowest Frechet classifier distance) falls back to the latest step
  when no checkpoint was ranked (runs without quality metrics).

  Returns:
    ``(generator, variables, meta, step, mesh, pool)``: ``variables`` are the EMA params with
    re-measured BatchNorm statistics when the run kept an EMA (else the trained params and
    running averages); ``meta`` is the checkpoint's; ``pool`` is the int32 ``[N]`` cluster
    ids of a self-conditioned run (labels are drawn from it), else ``None``.
  """
  ckpt_dir = pathlib.Path(workdir).resolve() / "checkpoints"
  if not ckpt_dir.is_dir():
    raise FileNotFoundError(f"no checkpoints in {ckpt_dir}: train into this workdir first")
  if checkpoint not in ("best", "latest"):
    raise ValueError(f"checkpoint must be 'best' or 'latest'; found {checkpoint!r}")
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir, async_save=False, best_metric=BEST_METRIC,
                                       best_mode="min")
  try:
    step = checkpointer.best_step() if checkpoint == "best" else None
    step = step if step is not None else checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    stored = checkpointer.read_meta(step)
    image_shape = stored["image_shape"]
    generator, discriminator = create_models(config, image_shape, len(stored["class_names"]))
    self_condition = stored.get("self_condition") or {}
    expected = {"model": f"{config.generator.name}/{config.discriminator.name}",
                "latent_dim": int(generator.latent_dim), "image_shape": image_shape,
                "num_classes": getattr(generator, "num_classes", None)}
    mesh = sharding.make_mesh(config.get("num_devices"))
    state = create_state(config, generator, discriminator, image_shape,
                         max(int(config.num_train_steps), 1), mesh,
                         num_examples=int(self_condition.get("num_examples", 0)), abstract=True)
    state = checkpointer.restore(step, state, expected, check_keys=_META_KEYS)
  finally:
    checkpointer.close()
  pool = _host_pool(state)
  return generator, _generator_variables(generator, state, config), stored, step, mesh, pool


def generate(config, workdir, *, num: int, out, checkpoint: str = "best") -> list[dict]:
  """Writes ``num`` generated PNG samples into ``out``, plus ``samples.json``.

  Files are ``sample_<i>.png`` (unconditional) or ``sample_<i>_class_<name>.png`` with the
  requested classes cycling over all classes (``i % num_classes``; a self-conditioned run's
  clusters ``cluster<k>`` are drawn from the empirical cluster distribution instead).
  ``samples.json`` lists ``{'file', 'class_id', 'class_name'}`` per sample (class fields only
  when conditional) and the checkpoint step. Latents come from ``config.seed``.

  Returns:
    The list of sample records.
  """
  from PIL import Image
  if not isinstance(num, int) or num < 1:
    raise ValueError(f"--num must be a positive number of samples; found {num!r}")
  generator, variables, meta, step, mesh, pool = restore_generator(config, workdir, checkpoint)
  num_classes = getattr(generator, "num_classes", None)
  z = _latents(config.seed, _GENERATE_STREAM, (num, generator.latent_dim))
  labels = None if num_classes is None else np.arange(num, dtype=np.int32) % num_classes
  if pool is not None:
    labels = _pool_labels(pool, num, config.seed, _GENERATE_STREAM)
  size = mesh.devices.size
  batch = min(config.eval_batch_size, -(-num // size) * size)
  images = reporting.to_uint8(_Sampler(generator, mesh, batch)(variables, z, labels))
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  width = max(5, len(str(num - 1)))
  records = []
  for i, image in enumerate(images):
    record = {}
    name = f"sample_{i:0{width}d}"
    if labels is not None:
      class_name = meta["class_names"][labels[i]]
      record.update(class_id=int(labels[i]), class_name=class_name)
      name += f"_class_{class_name}"
    record["file"] = f"{name}.png"
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(out / record["file"])
    records.append(record)
  (out / "samples.json").write_text(json.dumps(
      {"workdir": str(pathlib.Path(workdir).resolve()), "checkpoint_step": step,
       "samples": records}, indent=2))
  return records
