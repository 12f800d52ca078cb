"""DCGAN on MNIST: DCGAN generator (BatchNorm) and a spectrally normalised DCGAN
discriminator, hinge loss, EMA generator; by default self-conditioned on unsupervised clusters.

Two variants (``--config=train/configs/mnist_dcgan.py:<variant>``):

* ``self_conditioned`` (the default): the DCGAN pair with a 50-way cluster embedding in the
  generator and a projection in the critic, trained on 50 k-means clusters of the critic's own
  features of the training images, re-clustered every 2000 steps (a self-conditioned GAN, Liu
  et al. 2020; ``train/gan.py``). The dataset's labels are never used: the model is
  unconditional to its users, who get samples whose cluster is drawn from the training set's
  cluster sizes. Trained for 12000 steps (the other GAN configs: 8000); its classifier score,
  measured over three seeds and four classifiers, is in docs/RESULTS.md ("GANs"), where the
  plain recipe reaches 7.62 at step 8000 and 8.13 at 24000: without clusters about a third of
  its samples fall between digit classes.
* ``plain``: the unconditional DCGAN pair (the benchmark's model, ``benchmarks/gan.py``).

The original DCGAN recipe (BatchNorm discriminator, ``loss='non_saturating'``) is one override
away from ``plain`` (``--config.discriminator.normalization=batch
--config.loss=non_saturating``); on this budget it reached a classifier score of only 6.4 after
3000 steps (many malformed digits, 9s and 7s over-represented), where the spectrally normalised
critic with the hinge loss trains faster and keeps the classes balanced.

Sized for a small CPU (base_features 48, batch 64, 8000 steps, 12000 self-conditioned; each
clustering of the 60000 training images costs about as much as 250 steps; timings in
docs/RESULTS.md). Quality is measured with an MNIST classifier trained by
``train/configs/mnist_cnn.py``::

  python -m train.main --config=train/configs/mnist_cnn.py --workdir=/tmp/runs/mnist_cnn
  python -m train.main --config=train/configs/mnist_dcgan.py --workdir=/tmp/runs/mnist_dcgan \\
      --config.classifier_workdir=/tmp/runs/mnist_cnn

Other GAN configs import :func:`gan_config` and override a few fields (see ``mnist_cgan``).
"""

import ml_collections
from ml_collections import config_dict


def _adam(learning_rate: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "adam", "learning_rate": learning_rate, "b1": 0.5, "b2": 0.999,
      "schedule": "constant", "weight_decay": 0.0, "grad_clip_norm": 0.0,
  })


def gan_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "gan"
  # Data: images mapped to the generator's tanh range [-1, 1].
  c.dataset = "mnist"
  c.data_dir = config_dict.placeholder(str)
  c.train_split = "train"
  c.pp_train = "value_range(-1, 1)"

  c.generator = ml_collections.ConfigDict({"name": "Generator", "latent_dim": 100,
                                           "base_features": 48})
  # stride1_convs: a 3x3 convolution before each strided one (SN-GAN's deeper critic). At
  # 2000/3000 steps it scored 6.17/6.81 where the shallow critic scored 5.59/6.29.
  c.discriminator = ml_collections.ConfigDict({"name": "Discriminator", "base_features": 48,
                                               "normalization": "spectral",
                                               "stride1_convs": True})
  c.dtype = "float32"
  c.loss = "hinge"  # or 'non_saturating'
  c.fake_labels = "random"  # conditional models: labels of generated images ('random'|'batch')
  # Self-conditioning (Liu et al. 2020; train/gan.py): num_clusters > 0 trains the conditional
  # pair (ConditionalGenerator, ProjectionDiscriminator) on k-means clusters of the
  # discriminator's features of the training images, re-clustered every
  # recluster_every_steps; the dataset's labels are never used. 0 disables it.
  c.self_condition = ml_collections.ConfigDict({
      "num_clusters": 0, "recluster_every_steps": 2000, "pca_dims": 128,
      "feature_batch_size": 500})
  c.g_optimizer = _adam(2e-4)
  c.d_optimizer = _adam(2e-4)
  # EMA of the generator params for evaluation and samples (0 disables it).
  c.ema_decay = 0.999
  # Latents whose batch statistics become the EMA generator's BatchNorm statistics.
  c.standing_stats_samples = 2048

  c.seed = 0
  c.batch_size = 64
  c.num_train_steps = 8000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = -1  # extra saves between evaluations when > 0
  # Checkpoints: the latest `keep_checkpoints` plus the best by lowest Frechet distance.
  c.keep_checkpoints = 2
  c.num_devices = config_dict.placeholder(int)  # default: all devices
  c.disable_progress_bar = config_dict.placeholder(bool)  # default: only on a terminal

  # Sample quality: the workdir of a completed mnist_cnn run (unset: metrics skipped).
  c.classifier_workdir = config_dict.placeholder(str)
  c.classifier_checkpoint = "best"
  c.num_eval_samples = 10000
  c.num_real_samples = 10000  # per real reference set (test, and train for the distance)
  c.eval_batch_size = 500

  # Plots.
  c.grid_rows = 10  # unconditional grids; conditional grids have one row per class
  c.grid_columns = 10
  c.interpolation_rows = 10
  c.interpolation_steps = 12
  return c


VARIANTS = ("self_conditioned", "plain")


def get_config(variant: str = "self_conditioned") -> ml_collections.ConfigDict:
  """``'self_conditioned'`` (default) or ``'plain'`` (``--config=...mnist_dcgan.py:plain``)."""
  c = gan_config()
  if variant == "plain":
    return c
  if variant != "self_conditioned":
    raise ValueError(f"unknown mnist_dcgan variant {variant!r}; expected one of {VARIANTS}")
  # DCGAN generator and critic with a cluster embedding and a projection (the conditional
  # pair), conditioned on 50 k-means clusters of the critic's features: no labels are used.
  c.generator.name = "ConditionalGenerator"
  c.generator.embed_dim = 50
  c.discriminator.name = "ProjectionDiscriminator"
  c.self_condition.num_clusters = 50
  # 12000 steps (issue 21): at 8000 the score of two runs of this recipe was 9.18 and 9.50 and
  # the Frechet distance still falling; a cosine decay of both rates over 10000 steps was
  # worse (9.14 and FCD 16.6 at step 8000, below the constant rate from step 3000 on).
  c.num_train_steps = 12000
  return c
