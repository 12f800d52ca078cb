"""Reproducibility of a GAN recipe: one row per run and the mean and range over the runs.

  python -m benchmarks.gan_runs runs/dcgan_s0 runs/dcgan_s1 runs/dcgan_s2 \\
      --goal "classifier_score>=9.3" --out benchmarks/results/<machine>_<date>_gan-runs.json

Each argument is a finished GAN workdir (``results.json`` and ``metrics.jsonl`` of
``python -m train.main --config=train/configs/mnist_dcgan.py ...``) or the ``--out`` file of an
earlier ``gan_runs`` (its runs are added, so runs made on different days or machines, whose
workdirs are gone, still go into one table). The runs must share their config except for the
fields in :data:`FREE_FIELDS` (seed, classifier, progress bar): an error names any other field
that differs, so the spread is one recipe's and not a mix of recipes. ``--out`` keeps each
run's config; a run read from an older file without it is listed as not checked.

Printed: a Markdown table with one row per run (seed, classifier workdir, the quality metrics
at every evaluation, training and clustering seconds) and, for each metric of the final
evaluation, the mean, minimum and maximum over the runs. ``--goal NAME>=X`` (or ``<=``)
reports whether every run meets it (not only the mean); the exit status is 1 when one does
not. ``--out`` writes the same figures as JSON.

Re-evaluations found in a workdir (``eval_<classifier>.json`` of ``--mode=evaluate``: one
generator checkpoint scored by another classifier) are listed below the table, with the
classifier-only spread: for each run and checkpoint step scored by two or more classifiers,
the largest minus the smallest value of each metric.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import numpy as np

from jaxvision.training import trainer

# Config fields that may differ between runs of one recipe.
FREE_FIELDS = ("seed", "classifier_workdir", "classifier_checkpoint", "disable_progress_bar",
               "data_dir")
# Quality metrics reported per evaluation (those a run's evaluations hold).
METRICS = ("classifier_score", "frechet_classifier_distance", "conditional_accuracy")
# What a run of an earlier --out file must hold (its config may be absent: older files).
_RECORDED_KEYS = ("workdir", "seed", "classifier", "steps", "train_seconds", "evals", "final",
                  "reevals")
_GOAL = re.compile(r"^\s*([a-z_]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


def load_run(workdir) -> dict:
  """One finished run: ``workdir``, ``config`` (flat), ``seed``, ``classifier``, ``steps``,
  ``train_seconds``, ``cluster_seconds``, ``evals`` (``{step: {metric: value}}`` from
  ``metrics.jsonl``, the last record of a step when a resumed run rewrote it), ``final``
  (``results.json``'s evaluation) and ``reevals`` (one ``{'classifier', 'step', metric:
  value}`` per ``eval_*.json`` file, sorted by step and classifier)."""
  workdir = pathlib.Path(workdir)
  results_file = workdir / "results.json"
  if not results_file.is_file():
    raise FileNotFoundError(f"{workdir} is not a finished run: expected {results_file}")
  results = json.loads(results_file.read_text())
  config = trainer.flatten_config(results["config"])
  if config.get("task") != "gan":
    raise ValueError(f"{workdir} is a {config.get('task')!r} run; expected a GAN run "
                     f"(config.task 'gan')")
  evals = {}
  metrics_file = workdir / "metrics.jsonl"
  if metrics_file.is_file():
    for line in metrics_file.read_text().splitlines():
      record = json.loads(line)
      if record.get("kind") == "eval" and "classifier_score" in record:
        evals[record["step"]] = {k: record[k] for k in METRICS if k in record}
  final = results["eval"]
  if "classifier_score" not in final:
    raise ValueError(f"{workdir} was trained without config.classifier_workdir: no quality "
                     f"metrics to compare")
  reevals = []
  for path in sorted(workdir.glob("eval_*.json")):
    record = json.loads(path.read_text())
    if "checkpoint_step" not in record:  # a classifier's eval_<split>.json, not a GAN's
      continue
    ev = record["eval"]
    reevals.append({"classifier": ev.get("classifier_workdir", path.stem[len("eval_"):]),
                    "step": record["checkpoint_step"],
                    **{k: ev[k] for k in METRICS if k in ev}})
  return {"workdir": str(workdir), "config": config, "seed": config.get("seed"),
          "classifier": config.get("classifier_workdir"), "steps": results["steps"],
          "train_seconds": results["train_seconds"],
          "cluster_seconds": results.get("cluster_seconds", 0.0),
          "evals": dict(sorted(evals.items())),
          "final": {k: final[k] for k in METRICS if k in final},
          "reevals": sorted(reevals, key=lambda r: (r["step"], str(r["classifier"])))}


def load_recorded(path) -> list[dict]:
  """The runs of an earlier ``--out`` file, as :func:`load_run` gives them (``config`` is None
  where the file predates storing it)."""
  record = json.loads(pathlib.Path(path).read_text())
  if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
    raise ValueError(f"{path} is not a gan_runs --out file: expected a JSON object with 'runs'")
  runs = []
  for run in record["runs"]:
    missing = [k for k in _RECORDED_KEYS if k not in run]
    if missing:
      raise ValueError(f"{path}: a run lacks {', '.join(missing)}; expected the keys of "
                       f"a gan_runs --out file ({', '.join(_RECORDED_KEYS)})")
    run = {k: v for k, v in run.items() if k != "classifier_spread"}
    run["evals"] = {int(step): ev for step, ev in run["evals"].items()}
    run["config"] = run.get("config")
    runs.append(run)
  return runs


def load_runs(sources: list[str]) -> list[dict]:
  """Runs of each source: a workdir (one run) or an earlier ``--out`` JSON file (its runs)."""
  runs = []
  for source in sources:
    is_file = pathlib.Path(source).is_file() and source.endswith(".json")
    runs.extend(load_recorded(source) if is_file else [load_run(source)])
  return runs


def check_same_recipe(runs: list[dict]) -> list[str]:
  """Raises ValueError naming the config fields (other than :data:`FREE_FIELDS`) that differ.
  Returns the workdirs of runs without a recorded config, which could not be checked."""
  checked = [run for run in runs if run["config"] is not None]
  unchecked = [run["workdir"] for run in runs if run["config"] is None]
  if not checked:
    return unchecked
  first = checked[0]["config"]
  differ = sorted({key for run in checked[1:] for key in set(first) | set(run["config"])
                   if key.split(".")[0] not in FREE_FIELDS
                   and first.get(key) != run["config"].get(key)})
  if differ:
    values = "; ".join(f"{k}: " + ", ".join(repr(r["config"].get(k)) for r in checked)
                       for k in differ)
    raise ValueError(f"the runs are not one recipe: config fields differ ({values})")
  return unchecked


def spread(runs: list[dict]) -> dict:
  """``{metric: {'values', 'mean', 'min', 'max'}}`` of the runs' final evaluations."""
  out = {}
  for name in METRICS:
    values = [run["final"][name] for run in runs if name in run["final"]]
    if len(values) == len(runs):
      out[name] = {"values": values, "mean": float(np.mean(values)),
                   "min": float(np.min(values)), "max": float(np.max(values))}
  return out


def classifier_spread(run: dict) -> dict:
  """``{step: {metric: max - min}}`` over the classifiers that scored one checkpoint of ``run``
  (steps with two or more re-evaluations only)."""
  by_step = {}
  for r in run["reevals"]:
    by_step.setdefault(r["step"], []).append(r)
  return {step: {m: float(max(r[m] for r in rs) - min(r[m] for r in rs))
                 for m in METRICS if all(m in r for r in rs)}
          for step, rs in sorted(by_step.items()) if len(rs) > 1}


def parse_goal(text: str) -> tuple[str, str, float]:
  match = _GOAL.match(text)
  if not match or match.group(1) not in METRICS:
    raise ValueError(f"--goal must be NAME>=VALUE or NAME<=VALUE with NAME one of "
                     f"{', '.join(METRICS)}; found {text!r}")
  return match.group(1), match.group(2), float(match.group(3))


def goal_met(stats: dict, goal: tuple[str, str, float]) -> list[bool]:
  """Whether each run's final value meets ``goal`` (``(name, '>=' or '<=', value)``)."""
  name, op, value = goal
  if name not in stats:
    raise ValueError(f"--goal names {name!r}, which not every run's final evaluation holds")
  return [v >= value if op == ">=" else v <= value for v in stats[name]["values"]]


def markdown(runs: list[dict], stats: dict) -> str:
  """The per-run table (``score / FCD [/ cond. acc.]`` at each evaluated step) and the spread."""
  steps = sorted({s for run in runs for s in run["evals"]})
  short = {"classifier_score": "score", "frechet_classifier_distance": "FCD",
           "conditional_accuracy": "cond. acc."}
  shown = [m for m in METRICS if m in stats]
  head = ["run", "seed", "classifier", *(f"step {s}" for s in steps), "train s", "cluster s"]
  lines = [f"Cells: {' / '.join(short[m] for m in shown)}.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for run in runs:
    cells = []
    for s in steps:
      ev = run["evals"].get(s, {})
      cells.append(" / ".join(f"{ev[m]:.4g}" for m in shown if m in ev) or "")
    lines.append("| " + " | ".join([
        pathlib.Path(run["workdir"]).name, str(run["seed"]),
        pathlib.Path(run["classifier"] or "-").name, *cells,
        f"{run['train_seconds']:.0f}", f"{run['cluster_seconds']:.0f}"]) + " |")
  lines += ["", "| final | mean | min | max |", "|---|---|---|---|"]
  for name in shown:
    s = stats[name]
    lines.append(f"| {name} | {s['mean']:.4f} | {s['min']:.4f} | {s['max']:.4f} |")
  if any(run["reevals"] for run in runs):
    lines += ["", "Re-evaluations (one checkpoint, the classifier of each row):", "",
              "| run | step | classifier | " + " | ".join(shown) + " |",
              "|" + "---|" * (3 + len(shown))]
    for run in runs:
      for r in run["reevals"]:
        lines.append("| " + " | ".join([
            pathlib.Path(run["workdir"]).name, str(r["step"]),
            pathlib.Path(str(r["classifier"])).name,
            *(f"{r[m]:.4f}" if m in r else "" for m in shown)]) + " |")
    lines.append("")
    for run in runs:
      for step, widths in classifier_spread(run).items():
        lines.append(f"classifier-only spread of {pathlib.Path(run['workdir']).name} at "
                     f"step {step}: " + ", ".join(f"{m} {w:.4f}" for m, w in widths.items()))
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.gan_runs",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+",
                      help="finished GAN workdirs of one recipe, or earlier --out files")
  parser.add_argument("--goal", help="e.g. 'classifier_score>=9.3': must every run meet it")
  parser.add_argument("--out", help="write the figures as JSON here")
  args = parser.parse_args(argv)
  try:
    goal = parse_goal(args.goal) if args.goal else None
    runs = load_runs(args.workdirs)
    unchecked = check_same_recipe(runs)
    stats = spread(runs)
    met = goal_met(stats, goal) if goal else None
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(markdown(runs, stats))
  if unchecked:
    print(f"\nrecipe not checked for {', '.join(unchecked)}: recorded without its config")
  if goal:
    name, op, value = goal
    print(f"\ngoal {name} {op} {value:g}: met by {sum(met)} of {len(met)} runs"
          + ("" if all(met) else " (NOT by every run)"))
  if args.out:
    record = {"runs": [run | {"classifier_spread": classifier_spread(run)} for run in runs],
              "spread": stats, "goal": args.goal, "goal_met": met}
    pathlib.Path(args.out).write_text(json.dumps(record, indent=2))
  return 0 if met is None or all(met) else 1


if __name__ == "__main__":
  sys.exit(main())
