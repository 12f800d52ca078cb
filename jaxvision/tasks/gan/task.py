"""GANs (DCGAN, class-conditional, self-conditioned): the task (``config.task = 'gan'``).

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
    <workdir>/eval_<classifier>.json   ``--mode=evaluate``: a checkpoint scored again with the
                                       classifier of ``config.classifier_workdir``

Running the same command with the same workdir resumes from the latest checkpoint.

Self-conditioning (``config.self_condition.num_clusters = K > 0``; Liu et al. 2020): the
conditional pair is trained on K "classes" that are k-means clusters of the discriminator's
features of the training images (``jaxvision.tasks.gan.clustering``), computed before the first
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
import tqdm
from PIL import Image

from jaxvision import data
from jaxvision import export as export_lib
from jaxvision.data import pipeline, preprocess
from jaxvision.models import gan as gan_models
from jaxvision.tasks.gan import clustering, steps as gan_steps
from jaxvision.tasks.gan.quality import QualityEvaluator, summary_line
from jaxvision.training import jit as jit_lib
from jaxvision.training import optim, reporting, sharding, trainer
from jaxvision.training.task import Hook, Task, compute_dtype

GENERATORS = {"Generator": gan_models.Generator,
              "ConditionalGenerator": gan_models.ConditionalGenerator}
DISCRIMINATORS = {"Discriminator": gan_models.Discriminator,
                  "ProjectionDiscriminator": gan_models.ProjectionDiscriminator}
CONDITIONAL_MODELS = ("ConditionalGenerator", "ProjectionDiscriminator")
BEST_METRIC = "frechet_classifier_distance"  # lower is better
# Config fields that decide which images an evaluation samples (latents, cluster draws,
# standing BatchNorm statistics, the generator): --mode=evaluate must use the run's values.
SAMPLE_FIELDS = ("seed", "num_eval_samples", "standing_stats_samples", "generator.")
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
  dtype = compute_dtype(config)
  generator = _build(GENERATORS, config.generator, "generator", num_classes=num_classes,
                     image_shape=tuple(int(d) for d in image_shape), dtype=dtype)
  discriminator = _build(DISCRIMINATORS, config.discriminator, "discriminator",
                         num_classes=num_classes, dtype=dtype)
  gan_steps.num_classes_of(generator, discriminator)  # both conditional or neither
  return generator, discriminator


def _class_names(config, info: data.DatasetInfo) -> list[str]:
  """Names of the generator's classes: the dataset's, or ``cluster<k>`` when self-conditioned."""
  clusters = num_clusters(config)
  return [f"cluster{k}" for k in range(clusters)] if clusters else list(info.class_names)


def _meta(config, info: data.DatasetInfo, image_shape, generator) -> dict:
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
  return gan_steps.create_gan_state(generator, discriminator, g_tx, d_tx, image_shape=image_shape,
                                  rng=jax.random.PRNGKey(config.seed),
                                  ema=config.ema_decay > 0,
                                  num_pseudo_labels=num_examples if num_clusters(config) else 0,
                                  mesh=mesh, abstract=abstract)


class _Sampler:
  """Generates images from host latents with the evaluation generator, in sharded batches."""

  def __init__(self, generator, mesh, batch_size: int):
    sharding.check_batch_size(batch_size, mesh, "eval_batch_size")
    self.generator = generator
    self.mesh = mesh
    self.batch_size = batch_size
    self._sample = gan_steps.make_sample_fn(generator, mesh)
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
  return gan_steps.generator_variables(
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
  z = gan_steps.slerp(ends[0], ends[1], np.linspace(0.0, 1.0, steps))
  labels, row_labels = None, None
  if num_classes is not None:
    row_classes = (np.arange(rows) % num_classes if pool is None
                   else _pool_labels(pool, rows, config.seed, _INTERP_STREAM))
    labels = np.repeat(row_classes, steps).astype(np.int32)
    row_labels = [class_names[k] for k in row_classes]
  images = sampler(variables, z.reshape(rows * steps, -1), labels)
  reporting.plot_image_grid(images, path, ncols=steps, row_labels=row_labels,
                            title="latent interpolation (slerp)")


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

    self._features = jit_lib.jit_step(features, None)  # one device: its local copy

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


def _check_sample_fields(workdir, config) -> None:
  """Raises ValueError when ``config`` differs from the run's ``config.json`` in a field of
  :data:`SAMPLE_FIELDS`: another seed would score other samples than the run's own
  evaluations did, so two classifiers' figures would not be comparable with them."""
  differ = {k: v for k, v in trainer.changed_fields(workdir, config).items()
            if k.startswith(SAMPLE_FIELDS)}
  if differ:
    raise ValueError(
        "--mode=evaluate samples with the run's own settings; pass "
        + " ".join(f"--config.{k}={old}" for k, (old, _) in differ.items())
        + f" (the run's values; found {', '.join(f'{k}={new}' for k, (_, new) in differ.items())})")


def _check_image_range(batch):
  lo, hi = float(np.min(batch["image"])), float(np.max(batch["image"]))
  if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
    raise ValueError(f"GAN training images must lie in [-1, 1] (the generator's tanh range; "
                     f"end config.pp_train with 'value_range(-1, 1)'); found values in "
                     f"[{lo:.4g}, {hi:.4g}]")


class _Evaluator:
  """Samples fixed latents, writes the sample grid and measures quality: ``run(state)``."""

  def __init__(self, task: "GANTask", workdir: pathlib.Path):
    self.task, self.workdir = task, workdir

  def run(self, state) -> dict:
    task, config = self.task, self.task.config
    step = int(jax.device_get(state.step))
    variables = _generator_variables(task.generator, state, config)
    ev = {"step": step, "generator": "ema" if state.has_ema else "trained"}
    if task.quality is not None:
      eval_z, eval_labels = _eval_inputs(config, task.num_classes, task.pool)
      images = reporting.to_uint8(task.sampler(variables, eval_z, eval_labels))
      # Cluster ids are not the classifier's classes: no conditional accuracy for them.
      ev.update(task.quality.evaluate(images, None if task.clusters else eval_labels,
                                      task.class_names),
                classifier_workdir=task.quality.workdir,
                classifier_checkpoint_step=task.quality.meta["checkpoint_step"])
    title = f"step {step}"
    if "classifier_score" in ev:
      title += (f": classifier score {ev['classifier_score']:.2f}, "
                f"FCD {ev['frechet_classifier_distance']:.2f}")
    if jax.process_index() == 0:
      _plot_samples(task.sampler, variables, config, task.num_classes, task.class_names,
                    self.workdir / "plots" / f"samples_{step}.png", title, task.pool)
    return ev


class GANTask(Task):
  """A GAN trained on a registered image dataset (see the module docstring).

  Config fields: ``dataset`` (and ``data_dir``), ``generator``/``discriminator`` (``name``
  plus keywords), ``g_optimizer``/``d_optimizer``, ``loss``, ``ema_decay``, ``fake_labels``,
  ``self_condition`` (``num_clusters``, ``recluster_every_steps``, ``pca_dims``,
  ``feature_batch_size``), ``classifier_workdir``/``classifier_checkpoint``,
  ``num_eval_samples``, ``num_real_samples``, ``standing_stats_samples``, grid and
  interpolation sizes, ``pp_train``, ``train_split``, ``batch_size``/``eval_batch_size``,
  ``num_train_steps``, ``eval_every_steps``, ``seed``, ``dtype``.
  """
  name = "gan"
  modes = ("train", "evaluate", "generate", "export")
  best_metric, best_mode = BEST_METRIC, "min"
  check_keys = _META_KEYS
  guarded_metrics = GUARDED_METRICS
  divergence_hint = "lower the learning rates or switch config.loss"
  progress_metrics = ("d_loss", "g_loss")
  throughput_name = "images_per_s"
  train_onednn = False  # DCGAN's step measured faster on XLA's convolutions (RESULTS.md)

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.clusters = num_clusters(config)
    self.pool = None  # int32 [N] cluster ids of the training examples (self-conditioned)
    self.quality = None
    self.cluster_seconds = 0.0

  def prepare(self):
    config = self.config
    self.total_steps()
    for table, cfg, what in ((GENERATORS, config.generator, "generator"),
                             (DISCRIMINATORS, config.discriminator, "discriminator")):
      if cfg.name not in table:  # before any data is prepared
        raise ValueError(f"config.{what}.name must be one of {sorted(table)}; found "
                         f"{cfg.name!r}")
    num_clusters(config)
    preprocess.parse(config.pp_train)  # an unknown op or bad argument fails before any data
    self.builder, self.info = data.get_dataset(config.dataset, data_dir=config.get("data_dir"))
    self.class_names = _class_names(config, self.info)
    if config.get("classifier_workdir"):
      self.quality = QualityEvaluator(
          config.classifier_workdir, builder=self.builder, info=self.info,
          checkpoint=config.get("classifier_checkpoint", "best"),
          num_real=config.num_real_samples, batch_size=config.eval_batch_size)
    else:
      print("Warning: config.classifier_workdir is not set; sample-quality metrics are "
            "skipped.")

  def train_batches(self, start_step: int):
    config = self.config
    return pipeline.make_train_iterator(
        self.builder, self.info, split=config.train_split, global_batch_size=config.batch_size,
        pp=config.pp_train, seed=config.seed, start_step=start_step, labels=self.pool)

  def create_state(self, example_batch, mesh, *, abstract: bool):
    _check_image_range(example_batch)
    image_shape = example_batch["image"].shape[1:]
    self._set_models(image_shape, self.info.num_classes)
    meta = _meta(self.config, self.info, image_shape, self.generator)
    state = create_state(self.config, self.generator, self.discriminator, image_shape,
                         self.total_steps(), mesh,
                         num_examples=pipeline.split_size(self.info, self.config.train_split),
                         abstract=abstract)
    return state, meta

  def _set_models(self, image_shape, num_classes: int):
    self.generator, self.discriminator = create_models(self.config, image_shape, num_classes)
    self.num_classes = getattr(self.generator, "num_classes", None)

  def on_start(self, run, state):
    self.sampler = _Sampler(self.generator, run.mesh, self.config.eval_batch_size)
    if not self.clusters:
      return state
    # The cluster ids replace the dataset's labels before any step sees a batch.
    self.clusterer = _Clusterer(self.config, self.builder, self.info, self.discriminator)
    if run.start_step:
      self.pool = _host_pool(state)
    else:
      self.pool, record = self.clusterer(state, 0, None)
      self.cluster_seconds += record["seconds"]
      run.writer.write(0, "cluster", record)
      state = _with_pool(state, self.pool, run.mesh)
    run.replace_batches(self.train_batches(run.start_step))
    return state

  def make_train_step(self):
    config = self.config
    return gan_steps.make_train_step(self.generator, self.discriminator, loss=config.loss,
                                 ema_decay=config.ema_decay, fake_labels=config.fake_labels)

  def make_evaluator(self, run) -> _Evaluator:
    return _Evaluator(self, run.workdir)

  def hooks(self, run) -> list[Hook]:
    every = int(self.config.self_condition.recluster_every_steps) if self.clusters else 0
    return [Hook("cluster", every, self._recluster, checkpoint=True)] if every > 0 else []

  def _recluster(self, run, state, step: int):
    """Re-clusters the training split (after the evaluation, which samples the pool it was
    trained on); later batches carry the new ids."""
    self.pool, record = self.clusterer(state, step, self.pool)
    self.cluster_seconds += record["seconds"]
    run.writer.write(step, "cluster", record)
    tqdm.tqdm.write(f"[cluster] step {step}: purity {record['purity']:.3f}, "
                    f"{record['kept_fraction']:.3f} kept their cluster "
                    f"({record['seconds']:.0f} s)")
    run.replace_batches(self.train_batches(step))
    return _with_pool(state, self.pool, run.mesh)

  def summary_line(self, ev: dict) -> str:
    return summary_line(ev)

  def curve_metrics(self, ev: dict) -> tuple[str, ...]:
    names = ("d_loss", "g_loss")
    if "classifier_score" in ev:
      names += ("classifier_score", BEST_METRIC)
    if "conditional_accuracy" in ev:
      names += ("conditional_accuracy",)
    return names

  def results_info(self, run) -> dict:
    info = self.info
    return {"dataset": {"name": info.name, "source": info.source,
                        "num_examples": dict(info.num_examples)},
            "cluster_seconds": self.cluster_seconds}

  def write_outputs(self, run, state, results: dict):
    config, ev = self.config, results["eval"]
    variables = _generator_variables(self.generator, state, config)
    title = f"final (step {results['steps']})"
    if "classifier_score" in ev:
      title += f": classifier score {ev['classifier_score']:.2f}"
    _plot_samples(self.sampler, variables, config, self.num_classes, self.class_names,
                  run.workdir / "plots" / "samples_final.png", title, self.pool)
    _plot_interpolation(self.sampler, variables, config, self.num_classes, self.class_names,
                        run.workdir / "plots" / "interpolation.png", self.pool)

  # -- Restoring and generating. -----------------------------------------------------------------

  def restore_target(self, meta: dict, mesh):
    config = self.config
    image_shape = meta["image_shape"]
    self._set_models(image_shape, len(meta["class_names"]))
    self_condition = meta.get("self_condition") or {}
    expected = {"model": f"{config.generator.name}/{config.discriminator.name}",
                "latent_dim": int(self.generator.latent_dim), "image_shape": image_shape,
                "num_classes": self.num_classes}
    state = create_state(config, self.generator, self.discriminator, image_shape,
                         max(int(config.num_train_steps), 1), mesh,
                         num_examples=int(self_condition.get("num_examples", 0)), abstract=True)
    return state, expected

  def restore_generator(self, workdir, checkpoint: str = "best"):
    """Restores a GAN workdir's generator for sampling.

    ``checkpoint='best'`` (lowest Frechet classifier distance) falls back to the latest step
    when no checkpoint was ranked (runs without quality metrics).

    Returns:
      ``(generator, variables, meta, step, mesh, pool)``: ``variables`` are the EMA params
      with re-measured BatchNorm statistics when the run kept an EMA (else the trained params
      and running averages); ``meta`` is the checkpoint's; ``pool`` is the int32 ``[N]``
      cluster ids of a self-conditioned run (labels are drawn from it), else ``None``.
    """
    restored = trainer.restore(self, workdir, checkpoint)
    variables = _generator_variables(self.generator, restored.state, self.config)
    return (self.generator, variables, restored.meta, restored.step, restored.mesh,
            _host_pool(restored.state))

  def serving(self, state, meta: dict):
    """The generator that samples (the EMA params with standing BatchNorm statistics when the
    run kept an EMA): latents ``z`` (and ``labels`` when conditional) in, ``images`` in
    [-1, 1] out (see ``export.generator_serving``)."""
    variables = _generator_variables(self.generator, state, self.config)
    conditional = getattr(self.generator, "num_classes", None) is not None
    return export_lib.generator_serving(
        self.generator, variables, name=self.config.generator.name,
        class_names=meta["class_names"] if conditional else None)

  export = export_lib.export_mode

  def format_result(self, mode: str, result) -> str:
    if mode == "export":
      return super().format_result(mode, result)
    if mode == "evaluate":
      return f"Wrote {result['file']} (checkpoint step {result['checkpoint_step']})"
    return (f"Wrote {len(result['samples'])} samples to {result['out']} (samples.json lists "
            f"them)")

  def evaluate(self, workdir, *, checkpoint: str = "best") -> dict:
    """Measures a finished run's samples again, with ``config.classifier_workdir``'s classifier
    (which may differ from the one the run was trained with: the classifier-only spread).

    The evaluation's fixed latents (and cluster draws) are the training evaluations', so the
    run's own classifier reproduces the figures it logged at that step (not at a step where
    the clusters were recomputed: the checkpoint holds the new ones). The fields that decide
    the samples (:data:`SAMPLE_FIELDS`: seed, sample counts, generator) must be the run's own
    (its ``config.json``): a run trained with ``--config.seed=1`` is evaluated with it, else
    a one-line ValueError names the values to pass. Writes ``eval_<classifier folder
    name>.json`` into ``workdir``.

    Returns:
      That file's content: ``checkpoint_step``, ``checkpoint`` and ``eval`` (the metrics as in
      ``results.json``), plus ``file`` (its name).
    """
    if not self.config.get("classifier_workdir"):
      raise ValueError("--mode=evaluate needs --config.classifier_workdir=<the workdir of a "
                       "finished classifier run>; found none")
    _check_sample_fields(workdir, self.config)
    generator, variables, meta, step, mesh, pool = self.restore_generator(workdir, checkpoint)
    self.prepare()
    config = self.config
    eval_z, eval_labels = _eval_inputs(config, self.num_classes, pool)
    images = _Sampler(generator, mesh, config.eval_batch_size)(variables, eval_z, eval_labels)
    ev = {"step": step, "generator": "ema" if meta.get("ema") else "trained"}
    ev.update(self.quality.evaluate(reporting.to_uint8(images),
                                    None if self.clusters else eval_labels, self.class_names),
              classifier_workdir=self.quality.workdir,
              classifier_checkpoint_step=self.quality.meta["checkpoint_step"])
    print(summary_line(ev))
    name = f"eval_{pathlib.Path(config.classifier_workdir).resolve().name}.json"
    out = {"checkpoint_step": step, "checkpoint": checkpoint, "eval": ev}
    if jax.process_index() == 0:
      (pathlib.Path(workdir) / name).write_text(json.dumps(out, indent=2))
    return dict(out, file=name)

  def generate(self, workdir, *, num: int, out=None, checkpoint: str = "best") -> dict:
    """Writes ``num`` generated PNG samples into ``out`` (default ``<workdir>/generated``),
    plus ``samples.json``.

    Files are ``sample_<i>.png`` (unconditional) or ``sample_<i>_class_<name>.png`` with the
    requested classes cycling over all classes (``i % num_classes``; a self-conditioned run's
    clusters ``cluster<k>`` are drawn from the empirical cluster distribution instead).
    ``samples.json`` lists ``{'file', 'class_id', 'class_name'}`` per sample (class fields only
    when conditional) and the checkpoint step. Latents come from ``config.seed``.

    Returns:
      ``samples.json``'s content: ``workdir``, ``checkpoint_step``, ``samples`` (the records)
      and ``out`` (the folder).
    """
    config = self.config
    if not isinstance(num, int) or num < 1:
      raise ValueError(f"--num must be a positive number of samples; found {num!r}")
    generator, variables, meta, step, mesh, pool = self.restore_generator(workdir, checkpoint)
    num_classes = getattr(generator, "num_classes", None)
    z = _latents(config.seed, _GENERATE_STREAM, (num, generator.latent_dim))
    labels = None if num_classes is None else np.arange(num, dtype=np.int32) % num_classes
    if pool is not None:
      labels = _pool_labels(pool, num, config.seed, _GENERATE_STREAM)
    size = mesh.devices.size
    batch = min(config.eval_batch_size, -(-num // size) * size)
    images = reporting.to_uint8(_Sampler(generator, mesh, batch)(variables, z, labels))
    out = pathlib.Path(out) if out else pathlib.Path(workdir) / "generated"
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
    summary = {"workdir": str(pathlib.Path(workdir).resolve()), "checkpoint_step": step,
               "samples": records}
    (out / "samples.json").write_text(json.dumps(summary, indent=2))
    return dict(summary, out=str(out.resolve()))
