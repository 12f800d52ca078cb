"""SIGKILL trials in small (benchmarks/sigkill_trials.py): the classification trainer, killed 3
times (at least one kill aimed at a checkpoint write), resumes every time and ends bit-identical
to an uninterrupted run; a second training process in a live workdir is refused in one line.

The uninterrupted run is the first writer of the two-writers case (it is only paused while the
second is refused), so the test costs one run fewer than the script.
"""

import json
import signal

import numpy as np
import pytest

from benchmarks import sigkill_trials as st


def test_check_leg_reads_resumes_fallbacks_and_restarts_from_scratch():
  ok = st.check_leg(["Resuming from step 8 of 60 (/w/checkpoints)",
                     "[train] step 9/60: loss 1.0"], newest=8)
  assert ok["status"] == "resumed" and ok["resumed_from"] == 8 and ok["first_step"] == 9
  fallback = st.check_leg(["checkpoint 12 is damaged (ValueError: truncated): using 8",
                           "Resuming from step 8 of 60 (/w/checkpoints)"], newest=12)
  assert fallback["status"] == "resumed" and fallback["damaged"] == [[12, "ValueError: truncated",
                                                                        8]]
  over = st.check_leg(["[train] step 1/60: loss 2.3"], newest=8)
  assert over["status"] == "failed" and "started over" in over["problem"]
  stale = st.check_leg(["Resuming from step 4 of 60 (/w/checkpoints)"], newest=8)
  assert stale["status"] == "failed" and "expected the newest intact step 8" in stale["problem"]
  assert st.check_leg([], newest=8)["status"] == "not observed"
  assert st.check_leg(["[train] step 1/60: loss 2.3"], newest=0)["status"] == "fresh"


def test_compare_runs_finds_one_changed_bit(tmp_path):
  """compare_runs on two copies of a tiny Orbax checkpoint (same arrays, timings apart), then
  on a third whose float has its lowest mantissa bit flipped."""
  import orbax.checkpoint as ocp
  w = np.arange(6, dtype=np.float32).reshape(2, 3) / np.float32(7)
  flipped_w = w.copy()
  flipped_w.view(np.uint32)[1, 2] ^= 1
  for name, weights in (("a", w), ("b", w.copy()), ("c", flipped_w)):
    run = tmp_path / name
    (run / "checkpoints" / "5").mkdir(parents=True)
    ocp.PyTreeCheckpointer().save(run / "checkpoints" / "5" / "state",
                                  {"params": {"w": weights}, "step": np.array(5, np.int32)})
    (run / "results.json").write_text(json.dumps({"steps": 5, "train_seconds": len(name) + 1,
                                                  "eval": {"accuracy": 0.5}}))
    (run / "metrics.jsonl").write_text('{"step": 5, "kind": "train", "loss": 1.0, '
                                       f'"images_per_s": {ord(name)}}}\n')
  same = st.compare_runs(tmp_path / "a", tmp_path / "b")
  assert same["identical"] and same["arrays_compared"] == 2 and same["metric_records_compared"] == 1
  diff = st.compare_runs(tmp_path / "a", tmp_path / "c")
  assert not diff["identical"] and diff["results_equal"] and diff["metrics_equal"]
  ulp = float(np.spacing(np.float32(5 / 7)))  # 2**-24: 5/7 lies in [0.5, 1)
  assert ulp == 2.0 ** -24
  assert diff["array_problems"] == [f"step 5 params/w: differs (float32[2, 3] vs float32[2, 3], "
                                    f"max abs difference {ulp!r})"]


@pytest.mark.slow
def test_three_kills_resume_to_the_uninterrupted_run_and_a_second_writer_is_refused(tmp_path):
  spec, steps, every = st.CLASSIFICATION, 40, 2
  env = st.child_env(tmp_path / "tfds")

  def command(workdir):
    return st.train_command(spec, workdir, steps=steps, checkpoint_every=every)

  reference = tmp_path / "reference"
  writers = st.two_writers(command(reference), env, reference, tmp_path / "logs")
  assert writers["second_rc"] == 1 and writers["first_rc"] == 0
  assert writers["second_other_stderr_lines"] == []
  assert writers["second_error"] == (
      f"error: WorkdirInUseError: workdir {reference} is in use by another training run (pid "
      f"{writers['first_pid']}); wait for it to finish or use another --workdir")
  assert writers["refused"] and writers["second_stdout_lines"] == 0
  results = json.loads((reference / "results.json").read_text())
  assert results["steps"] == steps and results["resumed_from_step"] == 0
  assert st.checkpoint_steps(reference / "checkpoints") == [steps - every, steps]

  trial = st.run_trial(command(tmp_path / "trial"), env, tmp_path / "trial", tmp_path / "logs",
                       kills=3, rng=np.random.default_rng(0), timing=writers["timing"],
                       checkpoint_every=every)
  assert trial["finished"] and trial["kills"] == 3 and trial["failures"] == []
  assert trial["kills_aimed_at_writes"] == 1
  legs = trial["legs"]
  assert all(leg["rc"] == -signal.SIGKILL for leg in legs[:-1]) and legs[-1]["rc"] == 0
  # Each restart resumed from the newest step the killed leg left on disk (or started fresh
  # while there was none), and its first step was the one after it.
  for before, leg in zip(legs, legs[1:]):
    newest = max(before["steps_on_disk_after"], default=0)
    assert leg["newest_on_disk"] == newest
    if leg["resumed_from"] is not None:
      assert leg["resumed_from"] == newest and leg["first_step"] in (None, newest + 1)
  assert legs[-1]["resumed_from"] == max(legs[-2]["steps_on_disk_after"], default=0) or \
      legs[-1]["status"] == "fresh"
  assert trial["leftover_tmp_dirs"] == []

  comparison = st.compare_runs(reference, tmp_path / "trial")
  assert comparison["identical"], comparison
  assert comparison["steps_compared"] == [steps - every, steps]
  assert comparison["arrays_compared"] == 2 * 28  # SimpleCNN's train state: 28 arrays a step
  assert comparison["metric_records_compared"] == 2 * steps + 1  # 2 train records a step, 1 eval
