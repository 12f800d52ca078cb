"""Entry point: ``python -m train.main --config=train/configs/<name>.py --workdir=DIR``.

Modes: ``train`` (default; resumes from the workdir), ``evaluate`` (best or latest checkpoint
on a split) and ``predict`` (``--images=a.png,b.jpg``: top-k labels as JSON) for classifiers;
``train`` and ``generate`` (``--num=N --out=DIR``: N PNG samples) for GANs
(``config.task == 'gan'``). Override config fields with ``--config.<key>=<value>``.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots, results.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "generate"], "What to do.")
flags.DEFINE_string("split", None, "Split for --mode=evaluate (default: config.eval_split).")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Checkpoint for evaluate/predict.")
flags.DEFINE_list("images", [], "Image files for --mode=predict.")
flags.DEFINE_integer("top_k", 3, "Labels per image for --mode=predict.")
flags.DEFINE_integer("num", 64, "Samples to write for --mode=generate (GAN configs).")
flags.DEFINE_string("out", None, "Folder for --mode=generate (default: <workdir>/generated).")
flags.mark_flags_as_required(["config", "workdir"])

TASK_MODES = {
    "classification": ("train", "evaluate", "predict"),
    "gan": ("train", "generate"),
    "sequence_prediction": ("train",),  # training ends with the test evaluation
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:  # Orbax and TFDS log every save at INFO; -v 0 restores it.
    logging.set_verbosity(logging.WARNING)
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # tf.data only; keep the accelerators for JAX.
  config = FLAGS.config
  task = config.get("task", "classification")
  if task not in TASK_MODES:
    raise app.UsageError(f"unknown config.task {task!r}; expected one of {sorted(TASK_MODES)}")
  if FLAGS.mode not in TASK_MODES[task]:
    raise app.UsageError(f"--mode={FLAGS.mode} is not available for config.task {task!r}; "
                         f"expected one of {TASK_MODES[task]}")
  try:
    if task == "gan":
      _run_gan(config)
    elif task == "sequence_prediction":
      _run_sequence_prediction(config)
    else:
      _run(config)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    # Bad input: say what was expected and what was found, without a deep traceback.
    raise SystemExit(f"error: {type(e).__name__}: {e}") from None


def _run(config):
  from train import classification
  if FLAGS.mode == "train":
    results = classification.train_and_evaluate(config, FLAGS.workdir)
    ev = results["eval"]
    print(f"Done: {results['steps']} steps in {results['train_seconds']:.1f} s "
          f"(+{results['compile_seconds']:.1f} s compile); {ev['split']} accuracy "
          f"{ev['accuracy']:.4f}.\nResults in {os.path.abspath(FLAGS.workdir)}: results.json, "
          f"metrics.jsonl, tensorboard/, plots/, checkpoints/")
  elif FLAGS.mode == "evaluate":
    classification.evaluate(config, FLAGS.workdir, split=FLAGS.split, checkpoint=FLAGS.checkpoint)
  else:
    out = classification.predict(config, FLAGS.workdir, FLAGS.images, top_k=FLAGS.top_k,
                                 checkpoint=FLAGS.checkpoint)
    print(json.dumps(out, indent=2))


def _run_sequence_prediction(config):
  from train import sequence_prediction
  results = sequence_prediction.train_and_evaluate(config, FLAGS.workdir)
  ev = results["eval"]
  print(f"Done: {results['steps']} steps in {results['train_seconds']:.1f} s "
        f"(+{results['compile_seconds']:.1f} s compile); {ev['split']} MSE {ev['mse']:.5f} "
        f"(copy-last-frame {ev['baseline_mse']:.5f}).\nResults in "
        f"{os.path.abspath(FLAGS.workdir)}: results.json, metrics.jsonl, tensorboard/, plots/, "
        f"checkpoints/")


def _run_gan(config):
  from train import gan
  if FLAGS.mode == "train":
    results = gan.train_and_evaluate(config, FLAGS.workdir)
    print(f"Done: {results['steps']} steps in {results['train_seconds']:.1f} s "
          f"(+{results['compile_seconds']:.1f} s compile, {results['eval_seconds']:.1f} s "
          f"evaluation).\n{gan.summary_line(results['eval'])}\nResults in "
          f"{os.path.abspath(FLAGS.workdir)}: results.json, metrics.jsonl, tensorboard/, "
          f"plots/, checkpoints/")
  else:
    out = FLAGS.out or os.path.join(FLAGS.workdir, "generated")
    records = gan.generate(config, FLAGS.workdir, num=FLAGS.num, out=out,
                           checkpoint=FLAGS.checkpoint)
    print(f"Wrote {len(records)} samples to {os.path.abspath(out)} (samples.json lists them)")


if __name__ == "__main__":
  app.run(main)
