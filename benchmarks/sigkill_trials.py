"""SIGKILL trials: a training run killed again and again ends where an uninterrupted run ends.

Usage::

    python -m benchmarks.sigkill_trials --trainer=classification --kills=20 --seed=0 \\
        --out=sigkill_classification.json
    python -m benchmarks.sigkill_trials --trainer=gan --kills=20 --seed=0 --out=sigkill_gan.json

For the chosen trainer, ``python -m train.main`` runs a tiny config (``classification``: the
``digits_cnn`` demo, SimpleCNN on the embedded 8x8 digits; ``gan``: the default, self-conditioned
``mnist_dcgan`` config at its test size on digits, with quality metrics from a small digits
classifier trained first) that checkpoints every ``--checkpoint_every`` steps and keeps the
default 2 latest steps plus the best, so saves and Orbax's deletions of old steps are frequent:

1. **Reference**: the command runs uninterrupted to the end in a fresh workdir (its timings set
   the kill times below).
2. **Trial**: the same command in another fresh workdir (the same prepared data), killed with
   ``os.kill(pid, SIGKILL)`` ``--kills`` times and restarted after each kill until it finishes.
   Half of the kills (rounded down) are aimed at checkpoint writes: the checkpoint folder is
   polled every 2 ms for a new Orbax temporary folder (``<step>.orbax-checkpoint-tmp...``, made
   when a save starts and renamed when it is complete); after a seeded random number of saves
   has been let through, the process is killed a random 0-80% of the reference's median
   temporary-folder lifetime after one appears. A kill counts as *during a write* only when
   that process's temporary folder is still there after it died (kills at random times can
   land during writes too, and are counted then). The other kills fall at random times: a
   quarter of them during start-up (imports, compilation, restoring), uniform up to the median
   start-up time of the trial's earlier legs (the reference's for the first) and at the latest
   at the leg's first "[train] step" line, the rest uniform after that line. Every draw comes
   from ``numpy.random.default_rng(--seed)``; where a kill lands also depends on the machine's
   speed. Kill times are scaled so each leg covers about its share of the remaining steps.
3. **Checks**:

   * every restart resumed from the newest checkpoint on disk (its "Resuming from step N" line
     and its first "[train] step N+1" line; a leg killed before printing either is "not
     observed"), or from the step named by a "checkpoint N is damaged (...): using M" fallback
     (allowed, counted); a restart that starts over, exits with an error or hangs is a failure;
   * the final checkpoint's arrays (every step both workdirs keep) equal the reference's
     (``numpy.array_equal``, same tree, shapes and dtypes), ``results.json`` equals it apart
     from timings and ``resumed_from_step``, and so does the last ``metrics.jsonl`` record of
     every (kind, step) apart from timings and throughput;
4. **Two writers**: a run is started in a fresh workdir and stopped (``SIGSTOP``) once it trains,
   so it holds the workdir lock; a second identical command in the same workdir must exit
   non-zero with the one-line "workdir ... is in use by another training run (pid N)" error
   naming the first's pid as its last stderr line, and no traceback; the first is continued
   (``SIGCONT``), must finish, and its checkpoint and results must equal the reference's.

Writes ``--out`` (JSON: the counts, every leg, the comparison, the two-writers case, the
environment) and prints one line; exit status 0 when every check passed. Run folders and leg
logs are under ``--root`` (default: a fresh temporary folder, deleted when every check passed
unless ``--keep``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
TMP_MARK = ".orbax-checkpoint-tmp"
POLL_SECONDS = 0.002
LEG_TIMEOUT = 900.0  # a leg running longer than this is killed and reported as hung

_RESUMED = re.compile(r"Resuming from step (\d+) of (\d+)")
_STEP = re.compile(r"^\[train\] step (\d+)/(\d+)")
_DAMAGED = re.compile(r"checkpoint (\d+) is damaged \((.*)\): using (\d+)")
_IN_USE = re.compile(r"is in use by another training run \(pid (\d+)\)")


# ------------------------------------------------------------------------------ the commands

@dataclasses.dataclass(frozen=True)
class TrainerSpec:
  """A trainer's tiny run: the config file and its ``--config.`` overrides."""
  name: str
  config: str
  overrides: tuple[str, ...]
  default_steps: int
  needs_classifier: bool = False


CLASSIFICATION = TrainerSpec(
    "classification", "train/configs/digits_cnn.py",
    ("--config.eval_every_steps=100", "--config.log_every_steps=1"), default_steps=300)

GAN = TrainerSpec(
    "gan", "train/configs/mnist_dcgan.py",
    ("--config.dataset=digits", "--config.generator.latent_dim=16",
     "--config.generator.base_features=8", "--config.generator.embed_dim=4",
     "--config.discriminator.base_features=8", "--config.batch_size=16",
     "--config.eval_every_steps=100", "--config.log_every_steps=1",
     "--config.num_eval_samples=200", "--config.num_real_samples=400",
     "--config.eval_batch_size=40", "--config.standing_stats_samples=64",
     "--config.grid_rows=2", "--config.grid_columns=5", "--config.interpolation_rows=3",
     "--config.interpolation_steps=4", "--config.self_condition.num_clusters=4",
     "--config.self_condition.recluster_every_steps=60",
     "--config.self_condition.feature_batch_size=100"), default_steps=200,
    needs_classifier=True)

TRAINERS = {t.name: t for t in (CLASSIFICATION, GAN)}

# The digits classifier whose outputs score the GAN's samples (trained once, uninterrupted).
_CLASSIFIER = ("--config=train/configs/digits_cnn.py", "--config.num_train_steps=150",
               "--config.eval_every_steps=150", "--config.batch_size=32",
               "--config.optimizer.warmup_steps=2")


def train_command(spec: TrainerSpec, workdir, *, steps: int | None = None,
                  checkpoint_every: int = 4, classifier_workdir=None) -> list[str]:
  """The ``python -m train.main`` command line of ``spec``'s tiny run into ``workdir``."""
  steps = steps or spec.default_steps
  cmd = [sys.executable, "-m", "train.main", f"--config={spec.config}", f"--workdir={workdir}",
         *spec.overrides, f"--config.num_train_steps={steps}",
         f"--config.checkpoint_every_steps={checkpoint_every}", "--config.num_devices=1",
         "--config.disable_progress_bar=True"]
  if spec.needs_classifier:
    if classifier_workdir is None:
      raise ValueError(f"the {spec.name} trainer needs classifier_workdir (a finished digits "
                       f"classifier run); found None")
    cmd.append(f"--config.classifier_workdir={classifier_workdir}")
  return cmd


def child_env(tfds_dir) -> dict[str, str]:
  """The environment of every training process: unbuffered output, one prepared-data folder."""
  return dict(os.environ, PYTHONUNBUFFERED="1", JAXVISION_TFDS_DIR=str(tfds_dir))


# --------------------------------------------------------------------------- one process, a leg

class Leg:
  """One training process; its stdout and stderr lines (merged), timestamped in seconds since
  the start, are kept and copied to ``log_path``."""

  def __init__(self, cmd: Sequence[str], env: dict, log_path):
    self.t0 = time.monotonic()
    self.lines: list[tuple[float, str]] = []
    self.first_step_at: float | None = None
    self.last_step_at: float | None = None
    self.sent_kill = False
    self._log = open(log_path, "w")  # noqa: SIM115 (closed in finish)
    self._log.write("$ " + " ".join(cmd) + "\n")
    self.proc = subprocess.Popen(list(cmd), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1)
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      now = time.monotonic() - self.t0
      line = line.rstrip("\n")
      self.lines.append((now, line))
      self._log.write(f"{now:9.3f} {line}\n")
      if _STEP.match(line):
        self.first_step_at = now if self.first_step_at is None else self.first_step_at
        self.last_step_at = now

  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def kill(self) -> None:
    """``SIGKILL`` to the process (nothing if it has already exited)."""
    try:
      os.kill(self.proc.pid, signal.SIGKILL)
      self.sent_kill = True
    except ProcessLookupError:
      pass

  def finish(self) -> int:
    rc = self.proc.wait()
    self._reader.join()
    self._log.close()
    return rc

  def text(self) -> list[str]:
    return [line for _, line in self.lines]


def checkpoint_steps(ckpt_dir) -> list[int]:
  """The finished Orbax steps in ``ckpt_dir`` (folders named by an integer), ascending."""
  try:
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
  except FileNotFoundError:
    return []


def tmp_dirs(ckpt_dir) -> set[str]:
  """Orbax's temporary step folders in ``ckpt_dir`` (saves in progress, or left by a kill)."""
  try:
    return {n for n in os.listdir(ckpt_dir) if TMP_MARK in n}
  except FileNotFoundError:
    return set()


@dataclasses.dataclass
class KillPlan:
  """Where one leg is killed.

  ``phase``: ``'startup'`` (``delay`` seconds after the process starts, or at its first
  "[train] step" line if that comes first), ``'training'``
  (``delay`` seconds after its first "[train] step" line) or ``'write'`` (``delay`` seconds
  after the ``skip_saves + 1``-th new temporary checkpoint folder appears).
  """
  aim: str  # 'write' or 'random'
  phase: str
  delay: float
  skip_saves: int = 0


def drive(leg: Leg, ckpt_dir, plan: KillPlan | None = None, *,
          timeout: float = LEG_TIMEOUT) -> dict:
  """Watches ``leg`` (polling ``ckpt_dir`` every 2 ms) until it exits or ``plan`` kills it.

  Returns ``{'rc', 'killed', 'killed_at', 'hung', 'saves_seen', 'tmp_lifetimes',
  'target_tmp', 'tmp_left'}``: ``tmp_lifetimes`` are the seconds each of this leg's
  temporary folders existed (those seen appear and vanish), ``tmp_left`` this leg's
  temporary folders still there after it exited.
  """
  stale = tmp_dirs(ckpt_dir)  # left by an earlier leg: not this leg's saves
  live: dict[str, float] = {}
  lifetimes, saves, target, killed_at, hung = [], 0, None, None, False
  while leg.proc.poll() is None:
    now = leg.elapsed()
    current = tmp_dirs(ckpt_dir)
    stale &= current  # a stale folder cleaned up, then made again, is this leg's save
    current -= stale
    for name in current - live.keys():
      live[name] = now
      saves += 1
      if plan is not None and plan.phase == "write" and target is None \
          and saves > plan.skip_saves:
        target = (name, now)
    for name in list(live):
      if name not in current:
        lifetimes.append((name, now - live.pop(name)))
    if plan is not None and killed_at is None:
      due = ((plan.phase == "startup" and (now >= plan.delay or leg.first_step_at is not None))
             or (plan.phase == "training" and leg.first_step_at is not None
                 and now >= leg.first_step_at + plan.delay)
             or (plan.phase == "write" and target is not None and now >= target[1] + plan.delay))
      if due:
        leg.kill()
        killed_at = now
        break
    if now > timeout:
      leg.kill()
      hung = True
      break
    time.sleep(POLL_SECONDS)
  rc = leg.finish()
  left = sorted(tmp_dirs(ckpt_dir) - stale)
  return {"rc": rc, "killed": leg.sent_kill and rc == -signal.SIGKILL and not hung,
          "killed_at": killed_at, "hung": hung, "saves_seen": saves,
          "tmp_lifetimes": [t for _, t in lifetimes], "target_tmp": target and target[0],
          "tmp_left": left}


def leg_timing(leg: Leg, driven: dict, *, paused: float = 0.0) -> dict:
  """Start-up seconds (to the first "[train] step" line), seconds per step after it (less
  ``paused`` seconds) and the median lifetime of a temporary checkpoint folder."""
  steps = [int(m.group(1)) for m in map(_STEP.match, leg.text()) if m]
  if leg.first_step_at is None or len(steps) < 2:
    raise RuntimeError(f"the run printed {len(steps)} '[train] step' lines; expected the "
                       f"per-step lines of log_every_steps=1 (rc {driven['rc']})")
  per_step = (leg.last_step_at - leg.first_step_at - paused) / (steps[-1] - steps[0])
  lifetimes = driven["tmp_lifetimes"]
  return {"seconds": leg.elapsed(), "startup_seconds": leg.first_step_at,
          "seconds_per_step": max(per_step, 1e-4), "steps": steps[-1], "saves": len(lifetimes),
          "tmp_lifetime_median": statistics.median(lifetimes) if lifetimes else 0.02}


def run_reference(cmd, env, workdir, log_path) -> dict:
  """Runs ``cmd`` uninterrupted; returns its timing (:func:`leg_timing`)."""
  leg = Leg(cmd, env, log_path)
  driven = drive(leg, pathlib.Path(workdir) / "checkpoints")
  if driven["rc"] != 0:
    raise RuntimeError(f"the reference run failed (rc {driven['rc']}); see {log_path}:\n"
                       + "\n".join(leg.text()[-15:]))
  return leg_timing(leg, driven)


# ------------------------------------------------------------------------------- the trial

def plan_kill(aim: str, rng: np.random.Generator, timing: dict, *, remaining_steps: int,
              legs_left: int, checkpoint_every: int) -> KillPlan:
  """A kill for one leg, scaled so the leg covers about ``remaining_steps / legs_left`` steps
  (the draws are 80% of the share on average, so the run rarely ends before the last kill)."""
  share = max(remaining_steps, 1) / max(legs_left, 1)
  if aim == "write":
    saves = share / checkpoint_every
    skip = int(rng.integers(0, max(1, int(round(1.6 * saves)))))
    return KillPlan("write", "write", float(rng.uniform(0, 0.8 * timing["tmp_lifetime_median"])),
                    skip)
  if rng.random() < 0.25:
    return KillPlan("random", "startup", float(rng.uniform(0, timing["startup_seconds"])))
  return KillPlan("random", "training",
                  float(rng.uniform(0, 1.6 * share * timing["seconds_per_step"])))


def check_leg(lines: list[str], newest: int) -> dict:
  """What a restarted leg's output says about resuming, given the newest checkpoint step on
  disk when it started (0: none).

  Returns ``{'resumed_from', 'first_step', 'damaged': [[step, reason, used]], 'status',
  'problem'}``; ``status`` is ``'fresh'`` (no checkpoint yet, started at 0), ``'resumed'``,
  ``'not observed'`` (killed before saying) or ``'failed'`` (``problem`` says why).
  """
  resumed = first = None
  damaged = []
  for line in lines:
    if resumed is None and (m := _RESUMED.search(line)):
      resumed = int(m.group(1))
    if (m := _DAMAGED.search(line)):
      damaged.append([int(m.group(1)), m.group(2), int(m.group(3))])
    if first is None and (m := _STEP.match(line)):
      first = int(m.group(1))
  out = {"resumed_from": resumed, "first_step": first, "damaged": damaged, "problem": None}
  expected = damaged[-1][2] if damaged else newest
  if damaged and any(bad > newest for bad, _, _ in damaged):
    out["problem"] = f"damaged steps {damaged} are newer than the newest on disk ({newest})"
  elif newest == 0:
    if resumed is not None:
      out["problem"] = f"resumed from {resumed} with no checkpoint on disk"
    elif first not in (None, 1):
      out["problem"] = f"started at step {first} with no checkpoint on disk"
  elif resumed is None and first is not None:
    out["problem"] = f"started over (first step {first}) although step {newest} was on disk"
  elif resumed is not None and resumed != expected:
    out["problem"] = f"resumed from {resumed}, expected the newest intact step {expected}"
  elif first is not None and first != resumed + 1:
    out["problem"] = f"resumed from {resumed} but its first step was {first}"
  if out["problem"]:
    out["status"] = "failed"
  elif newest == 0:
    out["status"] = "fresh"
  else:
    out["status"] = "resumed" if resumed is not None else "not observed"
  return out


def run_trial(cmd, env, workdir, logs_dir, *, kills: int, rng: np.random.Generator,
              timing: dict, checkpoint_every: int, max_failures: int = 3) -> dict:
  """Runs ``cmd`` in ``workdir``, killed ``kills`` times (half aimed at checkpoint writes) and
  restarted after each kill until it finishes; returns the legs and the counts."""
  workdir, logs_dir = pathlib.Path(workdir), pathlib.Path(logs_dir)
  logs_dir.mkdir(parents=True, exist_ok=True)
  ckpt_dir = workdir / "checkpoints"
  aims = ["write"] * (kills // 2) + ["random"] * (kills - kills // 2)
  rng.shuffle(aims)
  total = timing["steps"]
  legs, failures, finished = [], 0, False
  startups = []  # seconds from the start of each leg to its first step (no data preparation)
  t0 = time.monotonic()
  while True:
    on_disk = checkpoint_steps(ckpt_dir)
    newest = on_disk[-1] if on_disk else 0
    plan = None
    if aims:
      seen = dict(timing, startup_seconds=statistics.median(startups)) if startups else timing
      plan = plan_kill(aims[0], rng, seen, remaining_steps=total - newest,
                       legs_left=len(aims) + 1, checkpoint_every=checkpoint_every)
    log_path = logs_dir / f"leg_{len(legs):02d}.log"
    leg = Leg(cmd, env, log_path)
    driven = drive(leg, ckpt_dir, plan)
    lines = leg.text()
    if leg.first_step_at is not None:
      startups.append(leg.first_step_at)
    record = {"leg": len(legs), "newest_on_disk": newest, "plan": plan and
              dataclasses.asdict(plan), "rc": driven["rc"], "killed": driven["killed"],
              "killed_at": driven["killed_at"], "first_step_at": leg.first_step_at,
              "seconds": round(leg.elapsed(), 3),
              "saves_seen": driven["saves_seen"],
              "last_step_printed": max([int(m.group(1)) for m in map(_STEP.match, lines) if m],
                                       default=None),
              "tmp_left": driven["tmp_left"],
              "during_write": bool(driven["killed"] and driven["tmp_left"]),
              "steps_on_disk_after": checkpoint_steps(ckpt_dir), "log": str(log_path),
              **check_leg(lines, newest)}
    if driven["hung"]:
      record["status"], record["problem"] = "failed", f"hung for {LEG_TIMEOUT:.0f} s"
    elif not driven["killed"] and driven["rc"] != 0:
      record["status"] = "failed"
      record["problem"] = (f"exited with status {driven['rc']}: "
                           + " | ".join(lines[-3:]))
    legs.append(record)
    if record["status"] == "failed":
      failures += 1
      if failures >= max_failures:
        break
    if driven["killed"]:
      aims.pop(0)
    elif driven["rc"] == 0:
      finished = True
      break
  kills_done = [r for r in legs if r["killed"]]
  restarts = legs[1:]
  return {
      "legs": legs,
      "finished": finished,
      "kills": len(kills_done),
      "kills_aimed_at_writes": sum(r["plan"]["aim"] == "write" for r in kills_done),
      "kills_during_writes": sum(r["during_write"] for r in kills_done),
      "kills_during_writes_aimed": sum(r["during_write"] for r in kills_done
                                       if r["plan"]["aim"] == "write"),
      "random_kills_by_phase": {p: sum(r["plan"]["phase"] == p for r in kills_done)
                                for p in ("startup", "training")},
      "restarts": len(restarts),
      "resumed_steps": [r["resumed_from"] for r in restarts if r["status"] == "resumed"],
      "restarts_by_status": {s: sum(r["status"] == s for r in restarts)
                             for s in ("resumed", "fresh", "not observed", "failed")},
      "fallbacks": sum(len(r["damaged"]) for r in legs),
      "damaged": [d for r in legs for d in r["damaged"]],
      "failures": [{"leg": r["leg"], "problem": r["problem"]} for r in legs
                   if r["status"] == "failed"],
      "leftover_tmp_dirs": sorted(tmp_dirs(ckpt_dir)),
      "seconds": round(time.monotonic() - t0, 1),
  }


# ------------------------------------------------------------------------------- comparisons

_VOLATILE_RESULTS = ("resumed_from_step",)


def _volatile(key: str) -> bool:
  """Timings and throughput: fields that differ between identical runs."""
  return key == "seconds" or key.endswith(("_seconds", "_per_s"))


def load_state(step_dir) -> dict[str, np.ndarray]:
  """The ``state`` item of an Orbax step folder as ``{'a/b/c': array}`` (host NumPy)."""
  import warnings

  import jax
  import orbax.checkpoint as ocp
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Sharding info not provided when restoring": one device
    tree = ocp.PyTreeCheckpointer().restore(pathlib.Path(step_dir) / "state")
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _metric_records(path) -> tuple[dict, int]:
  """The last record of every (kind, step) of a metrics.jsonl, less volatile fields, and the
  number of lines that are not JSON (a write cut short by a kill)."""
  records, broken = {}, 0
  for line in pathlib.Path(path).read_text().splitlines():
    if not line.strip():
      continue
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      broken += 1
      continue
    kind, step = r.pop("kind"), r.pop("step")
    fields = {k: v for k, v in r.items() if not _volatile(k)}
    key = (kind, step, tuple(sorted(fields)))  # a step's records with different fields
    records[key] = fields
  return records, broken


def _diff(a, b, where="") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(a.keys() | b.keys(), key=str):
      if k not in a or k not in b:
        out.append(f"{where}{k}: only in the {'reference' if k in a else 'trial'}")
      else:
        out += _diff(a[k], b[k], f"{where}{k}.")
    return out
  return [] if a == b else [f"{where.rstrip('.')}: reference {a!r}, trial {b!r}"]


def compare_runs(reference, trial) -> dict:
  """Bit-for-bit comparison of two finished workdirs: the arrays of every checkpoint step both
  keep (the last step included), results.json (less timings and ``resumed_from_step``) and
  the last metrics.jsonl record of every (kind, step) (less timings and throughput)."""
  reference, trial = pathlib.Path(reference), pathlib.Path(trial)
  ref_steps = checkpoint_steps(reference / "checkpoints")
  trial_steps = checkpoint_steps(trial / "checkpoints")
  common = sorted(set(ref_steps) & set(trial_steps))
  problems = []
  if not ref_steps or not trial_steps or ref_steps[-1] != trial_steps[-1]:
    problems.append(f"last steps differ: reference {ref_steps}, trial {trial_steps}")
  arrays = 0
  for step in common:
    a, b = load_state(reference / "checkpoints" / str(step)), \
        load_state(trial / "checkpoints" / str(step))
    if a.keys() != b.keys():
      problems.append(f"step {step}: the state trees differ ({sorted(a.keys() ^ b.keys())[:4]})")
      continue
    for name in a:
      arrays += 1
      if a[name].dtype != b[name].dtype or not np.array_equal(a[name], b[name]):
        diff = (np.max(np.abs(a[name].astype(np.float64) - b[name].astype(np.float64)))
                if a[name].shape == b[name].shape and a[name].dtype.kind in "fiu" else None)
        problems.append(f"step {step} {name}: differs ({a[name].dtype}{list(a[name].shape)} vs "
                        f"{b[name].dtype}{list(b[name].shape)}, max abs difference {diff})")
  results = [json.loads((d / "results.json").read_text()) for d in (reference, trial)]
  for r in results:
    for k in [k for k in r if _volatile(k) or k in _VOLATILE_RESULTS]:
      del r[k]
  results_diff = _diff(*results)
  (ref_metrics, _), (trial_metrics, broken) = (_metric_records(d / "metrics.jsonl")
                                               for d in (reference, trial))
  metrics_diff = _diff({str(k): v for k, v in ref_metrics.items()},
                       {str(k): v for k, v in trial_metrics.items()})
  return {
      "identical": not problems and not results_diff and not metrics_diff,
      "steps_compared": common, "steps_reference": ref_steps, "steps_trial": trial_steps,
      "arrays_compared": arrays, "array_problems": problems[:20],
      "results_equal": not results_diff, "results_diff": results_diff[:20],
      "metric_records_compared": len(ref_metrics), "metrics_equal": not metrics_diff,
      "metrics_diff": metrics_diff[:20], "broken_metric_lines_in_trial": broken,
  }


# ------------------------------------------------------------------------------- two writers

def two_writers(cmd, env, workdir, logs_dir, *, reference=None, timeout: float = 600) -> dict:
  """The first run of ``cmd`` (into ``workdir``) is stopped once it trains; a second, started
  then, must be refused: a non-zero exit whose last stderr line is the one-line "error:
  WorkdirInUseError: workdir ... is in use by another training run (pid N) ..." naming the
  first's pid, with no traceback (what it printed before, e.g. warnings of its data
  preparation, is returned apart); the first, continued, must finish (and, given a
  ``reference`` workdir, equal it).

  Returns ``{'refused', 'second_rc', 'second_error', 'second_other_stderr_lines', 'first_rc',
  'first_pid', 'comparison', 'ok', 'timing'}`` (``timing`` of the first run, its pause
  excluded).
  """
  logs_dir = pathlib.Path(logs_dir)
  logs_dir.mkdir(parents=True, exist_ok=True)
  first = Leg(cmd, env, logs_dir / "first_writer.log")
  deadline = time.monotonic() + timeout
  while first.first_step_at is None and first.proc.poll() is None \
      and time.monotonic() < deadline:
    time.sleep(0.01)
  if first.first_step_at is None:
    first.kill()
    rc = first.finish()
    raise RuntimeError(f"the first writer never trained (rc {rc}); see "
                       f"{logs_dir / 'first_writer.log'}")
  os.kill(first.proc.pid, signal.SIGSTOP)  # holds the lock (and everything else) meanwhile
  paused_at = time.monotonic()
  try:
    second = subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout)
  finally:
    os.kill(first.proc.pid, signal.SIGCONT)
  paused = time.monotonic() - paused_at
  (logs_dir / "second_writer.log").write_text(second.stdout + "\n--- stderr\n" + second.stderr)
  driven = drive(first, pathlib.Path(workdir) / "checkpoints", timeout=timeout)
  stderr_lines = [line for line in second.stderr.splitlines() if line.strip()]
  last = stderr_lines[-1] if stderr_lines else ""
  m = _IN_USE.search(last)
  refused = (second.returncode != 0 and m is not None and int(m.group(1)) == first.proc.pid
             and last.startswith("error: ") and "Traceback" not in second.stderr)
  out = {"first_pid": first.proc.pid, "first_rc": driven["rc"], "paused_seconds": round(paused, 2),
         "second_rc": second.returncode, "second_error": last,
         "second_other_stderr_lines": stderr_lines[:-1],
         "second_stdout_lines": len(second.stdout.splitlines()), "refused": refused}
  if driven["rc"] == 0:
    out["timing"] = leg_timing(first, driven, paused=paused)
  if reference is not None and driven["rc"] == 0:
    out["comparison"] = compare_runs(reference, workdir)
  out["ok"] = bool(refused and driven["rc"] == 0
                   and (reference is None or out["comparison"]["identical"]))
  return out


# ------------------------------------------------------------------------------------ main

def _environment() -> dict:
  from benchmarks import timing as timing_lib
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "platform": platform.platform(), "cpu": timing_lib.cpu_model_name(),
          "cpu_count": os.cpu_count(),
          "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
          "versions": timing_lib.versions(extra=("tensorflow", "orbax-checkpoint"))}


def train_classifier(root, env, logs_dir) -> pathlib.Path:
  """A small digits classifier (150 steps) whose workdir the GAN's quality metrics read."""
  workdir = pathlib.Path(root) / "classifier"
  cmd = [sys.executable, "-m", "train.main", *_CLASSIFIER, f"--workdir={workdir}",
         "--config.num_devices=1", "--config.disable_progress_bar=True"]
  run_reference(cmd, env, workdir, pathlib.Path(logs_dir) / "classifier.log")
  return workdir


def run_all(spec: TrainerSpec, root, *, kills: int, seed: int, steps: int | None = None,
            checkpoint_every: int = 4, with_two_writers: bool = True,
            classifier_workdir=None) -> dict:
  """The reference, the trial (and the two-writers case) of ``spec`` under ``root``; the
  summary that ``--out`` receives."""
  t0 = time.monotonic()
  root = pathlib.Path(root)
  logs = root / "logs"
  logs.mkdir(parents=True, exist_ok=True)
  env = child_env(root / "tfds")
  if spec.needs_classifier and classifier_workdir is None:
    classifier_workdir = train_classifier(root, env, logs)

  def command(workdir):
    return train_command(spec, workdir, steps=steps, checkpoint_every=checkpoint_every,
                         classifier_workdir=classifier_workdir)

  timing = run_reference(command(root / "reference"), env, root / "reference",
                         logs / "reference.log")
  trial = run_trial(command(root / "trial"), env, root / "trial", logs / "trial", kills=kills,
                    rng=np.random.default_rng(seed), timing=timing,
                    checkpoint_every=checkpoint_every)
  comparison = (compare_runs(root / "reference", root / "trial") if trial["finished"]
                else {"identical": False, "problem": "the trial did not finish"})
  summary = {
      "trainer": spec.name, "seed": seed, "kills_requested": kills,
      "command": " ".join(command("<workdir>")),
      "kill_method": "os.kill(pid, SIGKILL); writes found by polling checkpoints/ every 2 ms "
                     f"for a new '*{TMP_MARK}*' folder",
      "reference": timing,
      **{k: v for k, v in trial.items() if k != "legs"},
      "identical": comparison["identical"],
      "comparison": comparison,
  }
  if with_two_writers:
    summary["two_writers"] = two_writers(command(root / "two_writers"), env,
                                         root / "two_writers", logs / "two_writers",
                                         reference=root / "reference")
  summary["ok"] = bool(trial["finished"] and trial["kills"] >= kills and not trial["failures"]
                       and comparison["identical"]
                       and (not with_two_writers or summary["two_writers"]["ok"]))
  summary["wall_seconds"] = round(time.monotonic() - t0, 1)
  summary["legs"] = trial["legs"]
  return summary


def summary_line(s: dict) -> str:
  tw = s.get("two_writers")
  return (f"sigkill_trials {s['trainer']}: {s['kills']} kills ({s['kills_aimed_at_writes']} "
          f"aimed at checkpoint writes, {s['kills_during_writes']} during writes), "
          f"{s['restarts_by_status']['resumed']} of {s['restarts']} restarts seen resuming, "
          f"{s['fallbacks']} damaged-checkpoint fallbacks, {len(s['failures'])} failures, "
          f"identical={s['identical']}"
          + (f", second writer refused={tw['refused']}, first finished identical="
             f"{tw.get('comparison', {}).get('identical')}" if tw else "")
          + f", {s['wall_seconds']:.0f} s: {'OK' if s['ok'] else 'FAILED'}")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.sigkill_trials",
                              description=__doc__.split("\n")[0])
  p.add_argument("--trainer", choices=sorted(TRAINERS), required=True)
  p.add_argument("--kills", type=int, default=20, help="kills of the trial (>= 1)")
  p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
  p.add_argument("--out", type=pathlib.Path, default=None,
                 help="JSON summary (default: <root>/summary.json)")
  p.add_argument("--steps", type=int, default=None,
                 help="train steps (default: 300 classification, 200 gan)")
  p.add_argument("--checkpoint_every", type=int, default=4, help="steps between checkpoints")
  p.add_argument("--root", type=pathlib.Path, default=None,
                 help="folder for the runs and logs (default: a fresh temporary folder)")
  p.add_argument("--keep", action="store_true", help="keep --root even when every check passed")
  p.add_argument("--no_two_writers", action="store_true", help="skip the two-writers case")
  args = p.parse_args(argv)
  if args.kills < 1:
    p.error(f"--kills must be >= 1; found {args.kills}")
  if args.checkpoint_every < 1:
    p.error(f"--checkpoint_every must be >= 1; found {args.checkpoint_every}")
  if args.steps is not None and args.steps < 2 * args.checkpoint_every:
    p.error(f"--steps must be >= 2 * --checkpoint_every ({2 * args.checkpoint_every}); found "
            f"{args.steps}")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  load_at_start = [round(x, 2) for x in os.getloadavg()]
  root = args.root or pathlib.Path(tempfile.mkdtemp(prefix=f"sigkill-{args.trainer}-"))
  if args.root is not None and any(root.iterdir() if root.exists() else ()):
    raise SystemExit(f"error: --root {root} is not empty; expected a new or empty folder")
  summary = run_all(TRAINERS[args.trainer], root, kills=args.kills, seed=args.seed,
                    steps=args.steps, checkpoint_every=args.checkpoint_every,
                    with_two_writers=not args.no_two_writers)
  summary["script_command"] = "python -m benchmarks.sigkill_trials " + " ".join(
      sys.argv[1:] if argv is None else argv)
  summary["environment"] = {**_environment(), "load_average_at_start": load_at_start}
  out = args.out or root / "summary.json"
  delete = (summary["ok"] and not args.keep and args.root is None
            and root.resolve() not in out.resolve().parents)
  summary["root"] = str(root) + (" (deleted: every check passed)" if delete else "")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
  if delete:
    shutil.rmtree(root, ignore_errors=True)
  print(summary_line(summary) + f" -> {out}")
  return 0 if summary["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
