"""Entry point: ``python -m train.main --config=train/configs/<name>.py --workdir=DIR``.

Flags only: the task named by ``config.task`` (``jaxvision.tasks``) is looked up and run by
the trainer (``--mode=train``, the default; resumes from the workdir) or asked for one of its
other modes: ``evaluate`` and ``predict`` for classifiers, ``generate`` for GANs, ``export``
(StableHLO, SavedModel, TFLite, ONNX; ``jaxvision.export``) for all three. For those,
``--config`` may be left out: the workdir's ``config.json`` is used. Override config fields
with ``--config.<key>=<value>``.

Pretrained ImageNet classifiers need no workdir or config:
``python -m train.main --mode=predict --pretrained=EfficientNetLite0 --images=a.jpg,b.png
--top_k=5`` prints JSON with the top-k ImageNet labels of each image
(``jaxvision.inference.predict_pretrained``).
"""

import inspect
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots, results.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "generate", "export"],
                  "What to do.")
flags.DEFINE_string("split", None, "Split for --mode=evaluate (default: config.eval_split).")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Checkpoint for the other modes.")
flags.DEFINE_list("images", [], "Image files for --mode=predict.")
flags.DEFINE_integer("top_k", 3, "Labels per image for --mode=predict.")
flags.DEFINE_integer("num", 64, "Samples to write for --mode=generate (GAN configs).")
flags.DEFINE_string("out", None, "Folder for --mode=generate (default: <workdir>/generated).")
flags.DEFINE_list("formats", ["stablehlo", "saved_model", "tflite", "onnx"],
                  "Formats for --mode=export: stablehlo, saved_model, tflite, onnx, tflite_int8.")
flags.DEFINE_string("export_dir", None, "Folder for --mode=export (default: <workdir>/export).")
flags.DEFINE_string("pretrained", None, "With --mode=predict: classify --images with this "
                    "model's pretrained ImageNet weights (e.g. EfficientNetLite0); no workdir.")
flags.register_multi_flags_validator(
    ["workdir", "pretrained"], lambda v: v["workdir"] is not None or v["pretrained"] is not None,
    "--workdir is required (unless --pretrained is given with --mode=predict)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:  # Orbax and TFDS log every save at INFO; -v 0 restores it.
    logging.set_verbosity(logging.WARNING)
  from jaxvision.backends import cpu
  cpu.configure_runtime()  # before JAX's first computation (see jaxvision.backends.cpu)
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # tf.data only; keep the accelerators for JAX.
  from jaxvision import inference, tasks
  from jaxvision.training import trainer
  try:
    if FLAGS.pretrained is not None:
      if FLAGS.mode != "predict" or FLAGS.config is not None or FLAGS.workdir is not None:
        raise app.UsageError("--pretrained goes with --mode=predict and --images only "
                             "(no --config or --workdir)")
      print(json.dumps(inference.predict_pretrained(FLAGS.pretrained, FLAGS.images,
                                                    top_k=FLAGS.top_k), indent=2))
      return
    config = FLAGS.config
    if config is None:
      if FLAGS.mode == "train":
        raise app.UsageError("--config is required to train")
      config = trainer.load_config(FLAGS.workdir)
    task = tasks.create_task(config)
    if FLAGS.mode not in task.modes:
      raise app.UsageError(f"--mode={FLAGS.mode} is not available for config.task "
                           f"{task.name!r}; expected one of {task.modes}")
    if FLAGS.mode == "train":
      results = trainer.train(task, FLAGS.workdir)
      print(f"Done: {results['steps']} steps in {results['train_seconds']:.1f} s "
            f"(+{results['compile_seconds']:.1f} s compile, {results['eval_seconds']:.1f} s "
            f"evaluation; the last evaluation is above).\nResults in "
            f"{os.path.abspath(FLAGS.workdir)}: results.json, metrics.jsonl, tensorboard/, "
            f"plots/, checkpoints/")
      return
    mode = getattr(task, FLAGS.mode)
    params = inspect.signature(mode).parameters
    kwargs = {name: FLAGS[name].value for name in params if name != "workdir"}
    print(task.format_result(FLAGS.mode, mode(FLAGS.workdir, **kwargs)))
  except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError,
          trainer.WorkdirInUseError, ImportError) as e:
    # Bad input: say what was expected and what was found, without a deep traceback.
    raise SystemExit(f"error: {type(e).__name__}: {e}") from None


if __name__ == "__main__":
  app.run(main)
