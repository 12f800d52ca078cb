"""Entry point: ``python -m train.main --config=train/configs/<name>.py --workdir=DIR``.

Flags only: the task named by ``config.task`` (``jaxvision.tasks``) is looked up and run by
the trainer (``--mode=train``, the default; resumes from the workdir) or asked for one of its
other modes: ``evaluate`` for classifiers, multi-label taggers, detectors and GANs,
``predict`` for the first three, ``generate`` for GANs, ``export`` (StableHLO, SavedModel,
TFLite, ONNX; ``jaxvision.export``) for classifiers, GANs, sequence models and detectors
(``--list`` shows each task's). For those,
``--config`` may be left out: the workdir's ``config.json`` is used. Override config fields
with ``--config.<key>=<value>``.

Pretrained ImageNet classifiers need no workdir or config:
``python -m train.main --mode=predict --pretrained=EfficientNetLite0 --images=a.jpg,b.png
--top_k=5`` prints JSON with the top-k ImageNet labels of each image
(``jaxvision.inference.predict_pretrained``).

``--images`` takes comma-separated files, the flag repeated, or both; a comma inside a file
name is written ``\\,`` (``--images='my\\,photo.jpg,b.png'``). ``--list`` prints the configs,
tasks, datasets and models (``--help`` ends with the same list). Bad flags, config files,
``--config.<key>`` names and settings end in one line saying what was expected and found.
"""

import ast
import difflib
import inspect
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow (tf.data only here) prints "oneDNN custom operations are on" twice at import,
# whatever TF_CPP_MIN_LOG_LEVEL says. Its oneDNN kernels leave our preprocessing bit-identical
# (every pp op of the configs, the detection pipeline and JPEG decoding were compared with the
# switch on and off), so they are turned off unless the caller chose.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402


class _FileListFlag(flags.MultiFlag):
  """A list of files: comma-separated, or the flag repeated (the lists are joined); a comma
  inside a file name is written ``\\,``."""

  def _parse(self, arguments):
    return [name.replace("\0", ",") for value in super()._parse(arguments)
            for name in value]


class _EscapedListParser(flags.ListParser):

  def parse(self, argument):
    if isinstance(argument, list):
      return argument
    return super().parse(argument.replace("\\,", "\0"))


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots, results.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "generate", "export"],
                  "What to do.")
flags.DEFINE_string("split", None, "Split for --mode=evaluate (default: config.eval_split).")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Checkpoint for the other modes.")
flags.DEFINE_flag(_FileListFlag(
    _EscapedListParser(), flags.ArgumentSerializer(), "images", [],
    "Image files for --mode=predict: comma-separated, or the flag repeated; a comma inside a "
    "file name is written \\, (--images='my\\,photo.jpg,b.png')."))
flags.DEFINE_integer("top_k", 3, "Labels per image for --mode=predict.", lower_bound=1)
flags.DEFINE_integer("num", 64, "Samples to write for --mode=generate (GAN configs).",
                     lower_bound=1)
flags.DEFINE_string("out", None, "Folder for --mode=generate (default: <workdir>/generated).")
flags.DEFINE_list("formats", ["stablehlo", "saved_model", "tflite", "onnx"],
                  "Formats for --mode=export: stablehlo, saved_model, tflite, onnx, tflite_int8.")
flags.DEFINE_string("export_dir", None, "Folder for --mode=export (default: <workdir>/export).")
flags.DEFINE_string("pretrained", None, "With --mode=predict: classify --images with this "
                    "model's pretrained ImageNet weights (e.g. EfficientNetLite0); no workdir.")
flags.DEFINE_bool("list", False, "Print the configs, tasks, datasets and models, then exit.")
flags.register_multi_flags_validator(
    ["workdir", "pretrained", "list"],
    lambda v: v["workdir"] is not None or v["pretrained"] is not None or v["list"],
    "--workdir is required (unless --pretrained is given with --mode=predict, or --list)")


CONFIGS_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def _configs() -> dict[str, str]:
  """``{name: the first paragraph of its docstring (shortened to 90 characters)}`` of the
  configs in train/configs/ (read, not imported)."""
  out = {}
  for path in sorted(CONFIGS_DIR.glob("*.py")):
    if path.stem not in ("__init__", "common"):
      doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0]
                     .split())
      out[path.stem] = doc if len(doc) <= 90 else doc[:87].rstrip() + "..."
  return out


def catalog() -> str:
  """What exists: the configs, tasks, datasets and models (``--list``, end of ``--help``)."""
  from jaxvision import data, models, tasks
  from jaxvision.models import detection
  from jaxvision.tasks import sequence_prediction
  from jaxvision.tasks.gan import task as gan_task
  width = max(map(len, _configs()))
  lines = [f"Configs (--config=train/configs/<name>.py; {CONFIGS_DIR}):"]
  lines += [f"  {name:<{width}}  {doc}" for name, doc in _configs().items()]
  lines += [f"Tasks (config.task): {', '.join(tasks.registered_tasks())}",
            "Modes (--mode): " + "; ".join(
                f"{name}: {', '.join(tasks.get_task(name).modes)}"
                for name in tasks.registered_tasks()),
            f"Datasets (config.dataset): {', '.join(data.registered_datasets())}; detection: "
            f"a Pascal VOC or COCO folder; multilabel: mosaic:<dataset>, cifar10_mosaic",
            "Models (config.model.name):",
            f"  classification: {', '.join(sorted(models.MODELS))}",
            f"  detection: {', '.join(sorted(detection.DETECTORS))}",
            f"  gan (config.generator / config.discriminator): "
            f"{', '.join(sorted(gan_task.GENERATORS))} / "
            f"{', '.join(sorted(gan_task.DISCRIMINATORS))}",
            f"  sequence_prediction: {', '.join(sorted(sequence_prediction.FORECASTERS))}"]
  return "\n".join(lines)


def _argv_value(argv, name: str) -> str | None:
  """The value of ``--name=V`` or ``--name V`` in ``argv`` (the last one), else None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _config_error(argv, error: BaseException) -> str:
  """One line for a config file that does not load or a ``--config.<key>`` it does not have."""
  import ml_collections
  path = _argv_value(argv, "config")
  known = f"configs: {', '.join(_configs())}"
  if path is None:
    return f"--config.<key> given without --config=<file> ({known})"
  file = path.split(":", 1)[0]
  if not os.path.isfile(file):
    return f"--config={path}: no such file ({known})"
  try:
    config = FLAGS["config"].parser.parse(path)
    config.get("task")  # a file that failed to load raises here
  except Exception as e:  # pylint: disable=broad-except
    return f"--config={path} does not load: {_last_line(e)}"
  if not isinstance(config, ml_collections.ConfigDict):
    return f"--config={path}: get_config() returned {type(config).__name__}, not a ConfigDict"

  def keys(node, prefix=""):  # the leaf fields, dotted
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from keys(value, f"{prefix}{key}.")
      else:
        yield prefix + key

  for arg in argv:
    if not arg.startswith(("--config.", "--noconfig.")):
      continue
    field = arg.split("=", 1)[0].split("config.", 1)[1]
    parts, node, found = field.split("."), config, []
    for part in parts:
      if not (isinstance(node, ml_collections.ConfigDict) and part in node):
        break
      node = node[part]
      found.append(part)
    if len(found) == len(parts):
      continue
    where = ".".join(["config", *found])
    if not isinstance(node, ml_collections.ConfigDict):
      hint = f"{where} is one value ({type(node).__name__}), not a group of fields"
    else:
      if found:  # a typo below an existing group: the closest of its fields
        close = difflib.get_close_matches(parts[len(found)], list(node.keys()), n=1)
        close = [".".join(found + close + parts[len(found) + 1:])] if close else []
      else:
        close = difflib.get_close_matches(field, [*config.keys(), *keys(config)], n=1)
      hint = (f"did you mean --config.{close[0]}?" if close else
              f"the fields of {where}: {', '.join(node.keys())}")
    return (f"--config.{field}: {file} has no field {field!r} (only existing fields can be "
            f"set); {hint}")
  return f"--config={path}: {_last_line(error)}"


def _last_line(error: BaseException) -> str:
  """``Type: message`` of ``error`` on one line (of a message holding a traceback, as
  ml_collections makes for an error inside ``get_config``, its last line)."""
  text = str(error).strip()
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if "Traceback (most recent call last)" in text:
    return lines[-1]
  line = f"{type(error).__name__}: {lines[0] if lines else ''}"
  if isinstance(error, ModuleNotFoundError):
    line += " (run from the repository root: the configs import train.configs)"
  return line


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for ``app.run``, except that a bad flag, a config file that does not
  load or a ``--config.<key>`` the config lacks (the closest key is named) ends in one line on
  stderr (exit status 2), and ``--help`` ends with :func:`catalog`."""
  argv = ["--help" if a == "-h" else a for a in argv]
  if any(a in ("--help", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
    try:
      listing = catalog()
    except Exception as e:  # pylint: disable=broad-except
      listing = f"(the list of configs, tasks, datasets and models failed: {_last_line(e)})"
    main_module = sys.modules["__main__"]
    main_module.__doc__ = (main_module.__doc__ or "") + "\n" + listing.replace("%", "%%")
  overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith(("--config.", "--noconfig."))]
  if overrides and not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    sys.stderr.write(f"error: {overrides[0]} changes a field of --config, which is not given "
                     f"(a workdir's config.json is used as it is); pass the run's "
                     f"--config=<file> as well\n")
    sys.exit(2)
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.get("task")  # ml_collections defers a missing file's error to first use
    return rest
  except flags.Error as e:
    lines = str(e).strip().splitlines()
    message = lines[0] if len(lines) == 1 else _config_error(argv, e)
  except Exception as e:  # pylint: disable=broad-except
    message = _config_error(argv, e)
  sys.stderr.write(f"error: {message}\n")
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments {argv[1:]} (flags are --name=value)")
  if FLAGS.list:
    print(catalog())
    return
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
  except app.UsageError as e:  # absl would print the whole usage text before it
    raise SystemExit(f"error: {e}") from None
  except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
          FloatingPointError, trainer.WorkdirInUseError, ImportError) as e:
    # Bad input: say what was expected and what was found, without a deep traceback.
    raise SystemExit(f"error: {type(e).__name__}: {e}") from None


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
