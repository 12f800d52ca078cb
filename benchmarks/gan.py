"""DCGAN train step: jaxvision's compiled GAN step vs the same GAN in Keras/TensorFlow.

Usage::

  python -m benchmarks.gan [--batch 64] [--steps 10] [--repeats 7] [--out FILE.json]

Ours: the plain ``mnist_dcgan`` config's (``mnist_dcgan.py:plain``, without the cluster
conditioning of the default) generator and spectrally normalised discriminator (hinge
loss, Adam 2e-4 with beta1 0.5 for both networks), updated by the trainer's own step
(``tasks.gan.steps.make_train_step`` compiled with ``training.jit.jit_train_step(...,
onednn=False)`` on a one-device mesh):
one generator forward pass, the discriminator update on the real and the fake batch, and the
generator update through the updated discriminator. The generator EMA is off on both sides
(``--ema`` turns ours on).

Peers, in the same process on the same random real batch: Keras models with the same layers
and parameter counts (``Dense``/``Conv2DTranspose``/``BatchNormalization`` generator;
``SpectralNormalization``-wrapped ``Conv2D``/``Dense`` critic; the same optimizers), running
the same update order in one function (the generator's forward pass is recorded once and
pulled back through the updated discriminator, as ours):

* ``keras_fit``: a ``keras.Model`` whose ``train_step`` does the update, driven by
  ``model.fit`` (the Keras DCGAN tutorial's structure; Keras's own ``jit_compile`` choice,
  recorded). Per-step time from batch-end callbacks (``keras_peers.BatchTimer``), so fit's
  per-call set-up is excluded.
* ``keras_xla``: the same update in a ``tf.function(jit_compile=True)``.

Keras's ``SpectralNormalization`` writes the normalised kernel into the wrapped layer and does
not differentiate through the singular-value estimate; ours does (Flax ``nn.SpectralNorm``).
The arithmetic is the same up to that small term.

Timing as ``benchmarks.run``: compile (the first call, minus one steady step for the peers) is
reported apart; after a warm-up, ``--repeats`` rounds of ``--steps`` consecutive steps, the
frameworks interleaved round by round, each round ending in ``block_until_ready`` (JAX) or a
host read of the losses (TF). Records: one per framework with ``model``, ``step``,
``framework``, ``batch``, ``images_per_s`` (real images per second), ``step_ms_median`` (and
quartiles), ``compile_s``, ``flops_per_step`` (XLA's cost analysis of our step; the same
figure is given to the peers), ``device``, ``vs_fastest_peer`` on ours, ``params`` and
``versions``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the peers use tf.function

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import keras_peers, timing  # noqa: E402
from jaxvision.models.gan import LEAKY_RELU_SLOPE  # noqa: E402
from jaxvision.backends import cpu  # noqa: E402
from jaxvision.tasks.gan import steps as gan_lib, task as gan_task  # noqa: E402
from jaxvision.training import jit, sharding, trainer  # noqa: E402
from train.configs import mnist_dcgan  # noqa: E402

IMAGE_SHAPE = (28, 28, 1)
WARMUP = 2
PEERS = ("keras_fit", "keras_xla")


def settings() -> ml_collections.ConfigDict:
  """The plain ``mnist_dcgan`` config (models, loss, optimizers) the benchmark reproduces."""
  return mnist_dcgan.get_config("plain")


def random_images(batch: int, seed: int = 0) -> np.ndarray:
  """A real batch stand-in: float32 ``[B, 28, 28, 1]`` uniform in ``[-1, 1]``."""
  return np.random.default_rng(seed).uniform(-1, 1, (batch, *IMAGE_SHAPE)).astype(np.float32)


def _num_params(tree) -> int:
  """Number of parameters (trainable values; BatchNorm and spectral-norm state excluded)."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


class JaxGANRunner:
  """Our GAN step, compiled ahead of time as ``train/gan.py`` does."""
  framework = "jax"

  def __init__(self, cfg, images: np.ndarray, *, ema: bool):
    self.cfg, self.images, self.ema = cfg, images, ema

  def setup(self) -> dict:
    cfg = ml_collections.ConfigDict(self.cfg.to_dict())
    if not self.ema:
      cfg.ema_decay = 0.0
    mesh = sharding.make_mesh(1)
    # The trainer's own builders: models, optimizers and replicated state from the config.
    generator, discriminator = gan_task.create_models(cfg, IMAGE_SHAPE, num_classes=10)
    self.state = gan_task.create_state(cfg, generator, discriminator, IMAGE_SHAPE, 10_000,
                                          mesh)
    self.params = (_num_params(self.state.g_params), _num_params(self.state.d_params))
    def make_step():
      return jit.jit_train_step(
          gan_lib.make_train_step(generator, discriminator, loss=cfg.loss,
                                ema_decay=cfg.ema_decay, fake_labels=cfg.fake_labels), mesh,
          onednn=False)

    host_batch = {"image": self.images, "label": np.zeros(len(self.images), np.int32)}
    self.batch = sharding.shard_batch(host_batch, mesh)
    self.compiled, compile_s = trainer.compile_step(make_step(), self.state, host_batch, mesh)
    self.device = timing.describe_device(mesh.devices.flat[0])
    for _ in range(WARMUP):
      self.run(1)
    flops = timing.xla_cost_flops(self.compiled,
                                  lambda: make_step().lower(self.state, self.batch))
    return {"compile_s": compile_s, "flops_per_step": flops}

  def run(self, k: int) -> float:
    def go():
      metrics = None
      for _ in range(k):
        self.state, metrics = self.compiled(self.state, self.batch)
      jax.block_until_ready((self.state, metrics))
    seconds, _ = timing.time_call(go)
    return seconds


def keras_models(cfg):
  """``(generator, discriminator)``: Keras twins of the config's DCGAN at 28x28x1."""
  import keras  # pylint: disable=g-import-not-at-top
  layers = keras.layers
  g_cfg, d_cfg = cfg.generator, cfg.discriminator
  if d_cfg.normalization != "spectral" or not d_cfg.stride1_convs:
    raise ValueError("the Keras peer mirrors the spectrally normalised critic with "
                     "stride1_convs=True (the mnist_dcgan config)")
  f_g, f_d = g_cfg.base_features, d_cfg.base_features
  bn = dict(momentum=0.9, epsilon=1e-5)
  generator = keras.Sequential([
      keras.Input((g_cfg.latent_dim,)),
      layers.Dense(7 * 7 * 2 * f_g, use_bias=False), layers.Reshape((7, 7, 2 * f_g)),
      layers.BatchNormalization(**bn), layers.ReLU(),
      layers.Conv2DTranspose(f_g, 4, strides=2, padding="same", use_bias=False),
      layers.BatchNormalization(**bn), layers.ReLU(),
      layers.Conv2DTranspose(IMAGE_SHAPE[-1], 4, strides=2, padding="same",
                             activation="tanh"),
  ], name="generator")
  sn = lambda layer: layers.SpectralNormalization(layer, power_iterations=1)
  lrelu = lambda: layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE)
  discriminator = keras.Sequential([
      keras.Input(IMAGE_SHAPE),
      sn(layers.Conv2D(f_d, 3, padding="same")), lrelu(),
      sn(layers.Conv2D(f_d, 4, strides=2, padding="same")), lrelu(),
      sn(layers.Conv2D(f_d, 3, padding="same")), lrelu(),
      sn(layers.Conv2D(2 * f_d, 4, strides=2, padding="same")), lrelu(),
      layers.Flatten(), sn(layers.Dense(1)),
  ], name="discriminator")
  return generator, discriminator


def _keras_adam(opt_cfg):
  import keras  # pylint: disable=g-import-not-at-top
  return keras.optimizers.Adam(opt_cfg.learning_rate, beta_1=opt_cfg.b1, beta_2=opt_cfg.b2)


def make_keras_update(generator, discriminator, g_opt, d_opt, latent_dim: int):
  """``update(real) -> (d_loss, g_loss)``: one hinge-loss D-then-G step (TensorFlow)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def update(real):
    z = tf.random.normal((tf.shape(real)[0], latent_dim))
    with tf.GradientTape() as g_tape:
      fake = generator(z, training=True)
      with tf.GradientTape() as d_tape:
        real_logits = discriminator(real, training=True)
        fake_logits = discriminator(tf.stop_gradient(fake), training=True)
        d_loss = (tf.reduce_mean(tf.nn.relu(1.0 - real_logits))
                  + tf.reduce_mean(tf.nn.relu(1.0 + fake_logits)))
      d_vars = discriminator.trainable_variables
      d_opt.apply(d_tape.gradient(d_loss, d_vars), d_vars)
      g_loss = -tf.reduce_mean(discriminator(fake, training=True))
    g_vars = generator.trainable_variables
    g_opt.apply(g_tape.gradient(g_loss, g_vars), g_vars)
    return d_loss, g_loss

  return update


class KerasGANRunner:
  """The Keras twin through ``model.fit`` (``keras_fit``) or an XLA ``tf.function``."""

  def __init__(self, framework: str, cfg, images: np.ndarray):
    if framework not in PEERS:
      raise ValueError(f"unknown peer {framework!r}; expected one of {PEERS}")
    self.framework, self.cfg, self.images = framework, cfg, images

  def setup(self) -> dict:
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    cfg = self.cfg
    generator, discriminator = keras_models(cfg)
    # Trainable parameters only (Keras also counts BatchNorm moving statistics and the
    # spectral-norm vectors, which ours keeps in 'batch_stats').
    self.params = tuple(int(sum(np.prod(v.shape) for v in m.trainable_variables))
                        for m in (generator, discriminator))
    g_opt, d_opt = _keras_adam(cfg.g_optimizer), _keras_adam(cfg.d_optimizer)
    g_opt.build(generator.trainable_variables)
    d_opt.build(discriminator.trainable_variables)
    update = make_keras_update(generator, discriminator, g_opt, d_opt,
                               cfg.generator.latent_dim)
    self.device = "tf:gpu" if tf.config.list_physical_devices("GPU") else "tf:cpu"
    self.notes = None
    if self.framework == "keras_xla":
      step = tf.function(update, jit_compile=True)
      real = tf.constant(self.images)

      def run_steps(n):
        for _ in range(n):
          d_loss, _ = step(real)
        d_loss.numpy()
      self._run = run_steps
    else:
      self._run = self._fit_runner(keras, update, generator, discriminator)
    first_s, _ = timing.time_call(lambda: self._run(1))
    for _ in range(WARMUP):
      self._run(1)
    steady, _ = timing.time_call(lambda: self._run(1))
    return {"compile_s": max(first_s - steady, 0.0), "flops_per_step": None}

  def _fit_runner(self, keras, update, generator, discriminator):
    class GAN(keras.Model):

      def __init__(self):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator

      def train_step(self, data):
        d_loss, g_loss = update(data)
        return {"d_loss": d_loss, "g_loss": g_loss}

    model = GAN()
    model.compile()
    self.notes = f"keras jit_compile={model.jit_compile}"

    timer, batch = keras_peers.BatchTimer(keras), len(self.images)
    data = {}

    def run_steps(n):
      if n not in data:
        data[n] = np.concatenate([self.images] * n)
      model.fit(data[n], batch_size=batch, epochs=1, shuffle=False, verbose=0,
                callbacks=[timer.callback])
      return timer.seconds_per_step() * n

    return run_steps

  def run(self, k: int) -> float:
    seconds, span = timing.time_call(lambda: self._run(k))
    return span if self.framework == "keras_fit" else seconds


def run_benchmark(batch: int = 64, steps: int = 10, repeats: int = 7, *,
                  peers=PEERS, ema: bool = False) -> list[dict]:
  """Times ours and the ``peers``, interleaved round by round; returns the records."""
  if batch < 1 or steps < 1 or repeats < 1:
    raise ValueError(f"batch, steps and repeats must be >= 1; got {batch}, {steps}, {repeats}")
  cfg = settings()
  images = random_images(batch)
  runners = [JaxGANRunner(cfg, images, ema=ema)]
  runners += [KerasGANRunner(p, cfg, images) for p in peers]
  infos = [r.setup() for r in runners]
  times = {r: [] for r in runners}
  for i in range(repeats):
    for r in runners[i % len(runners):] + runners[:i % len(runners)]:
      times[r].append(r.run(steps) / steps)
  env_versions = timing.versions()
  flops = infos[0]["flops_per_step"]
  records = []
  for runner, info in zip(runners, infos):
    stats = timing.summarize(times[runner])
    step_s = stats["step_ms_median"] / 1e3
    records.append({
        "model": "dcgan_mnist", "step": "train", "framework": runner.framework,
        "batch": batch, "images_per_s": batch / step_s, **stats,
        "steps_per_round": steps, "rounds": repeats, "compile_s": info["compile_s"],
        "flops_per_step": flops, "achieved_flops_per_s": flops / step_s if flops else None,
        "device": runner.device, "params_generator": runner.params[0],
        "params_discriminator": runner.params[1], "ema": ema if runner.framework == "jax"
        else False, "notes": getattr(runner, "notes", None), "versions": env_versions})
  if len(records) > 1:
    best = max(records[1:], key=lambda r: r["images_per_s"])
    best_runner = runners[records.index(best)]
    records[0]["fastest_peer"] = best["framework"]
    records[0]["vs_fastest_peer"] = records[0]["images_per_s"] / best["images_per_s"]
    records[0]["vs_fastest_peer_paired_median"] = statistics.median(
        p / j for p, j in zip(times[best_runner], times[runners[0]]))
  return records


def print_table(records: list[dict]) -> None:
  header = (f"{'framework':<10} {'device':<12} {'img/s':>8} {'ms/step':>8} {'[q1 - q3]':>15} "
            f"{'compile s':>9} {'G params':>9} {'D params':>9}")
  print(header)
  for r in records:
    spread = f"[{r['step_ms_q1']:.1f} - {r['step_ms_q3']:.1f}]"
    print(f"{r['framework']:<10} {r['device'][:12]:<12} {r['images_per_s']:>8.1f} "
          f"{r['step_ms_median']:>8.1f} {spread:>15} {r['compile_s']:>9.2f} "
          f"{r['params_generator']:>9} {r['params_discriminator']:>9}")
  if "vs_fastest_peer" in records[0]:
    r = records[0]
    print(f"ours / {r['fastest_peer']}: {r['vs_fastest_peer']:.2f}x images/s "
          f"(paired median {r['vs_fastest_peer_paired_median']:.2f}x)")


def main(argv=None) -> list[dict]:
  cpu.configure_runtime()  # Before anything creates JAX's backends.
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
  parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
  parser.add_argument("--peers", default=",".join(PEERS),
                      help=f"comma-separated peers from {PEERS}, or '' for none")
  parser.add_argument("--ema", action="store_true", help="keep our generator EMA on")
  parser.add_argument("--out", default=None, help="write the records as JSON to this file")
  args = parser.parse_args(argv)
  peers = [p for p in args.peers.split(",") if p]
  unknown = sorted(set(peers) - set(PEERS))
  if unknown:
    parser.error(f"unknown peers {unknown}; expected some of {PEERS}")
  records = run_benchmark(args.batch, args.steps, args.repeats, peers=peers, ema=args.ema)
  flops = records[0]["flops_per_step"]
  print(f"DCGAN (mnist_dcgan config) train step, batch {args.batch}, {args.repeats} rounds x "
        f"{args.steps} steps" + (f", {flops / 1e9:.2f} GFLOP/step (XLA)" if flops else ""))
  print_table(records)
  if args.out:
    out = {"command": "python -m benchmarks.gan " + " ".join(
        sys.argv[1:] if argv is None else argv), "environment": timing.environment(),
        "records": records}
    with open(args.out, "w") as f:
      json.dump(out, f, indent=2)
    print(f"wrote {args.out}")
  return records


if __name__ == "__main__":
  main()
