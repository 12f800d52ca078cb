"""Compiled-step benchmarks: JAX train/eval/predict steps against Keras/TensorFlow peers.

Usage::

    python -m benchmarks.run --out results.json
    python -m benchmarks.run --models simple_cnn,resnet18_cifar --batch 128 --steps 10 \\
        --repeats 5 --peers keras_fit,keras_xla --out results.json

For every model and step kind, the JAX step (the library's default training path, see
``benchmarks.jax_steps``) and each peer (``benchmarks.keras_peers``) are set up (compiled and
warmed up), then timed in interleaved rounds: each round runs ``--steps`` steps of every
framework in turn (rotating which goes first), so a machine whose load changes affects all of
them alike. Per framework the record holds the median and spread of the per-step times over
the rounds, images/s, compile seconds, XLA's FLOPs per step, achieved FLOP/s, utilisation
against the best large matmul measured on the same device in the same run (measured at the
start and again after each model; the best is kept), and memory. Each
JAX record is compared with the fastest peer, as a ratio of median throughputs and as the
median of the per-round ratios.

Writes ``--out`` (JSON: ``environment``, ``matmul_peak``, ``records``) and prints a table. Runs
kept in the repository go to ``benchmarks/results/<machine>_<YYYY-MM-DD>_<what>.json`` (the
naming scheme is at the top of ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import jax_steps, timing  # noqa: E402
from benchmarks.specs import SPECS, get_spec  # noqa: E402
from jaxvision.backends import cpu  # noqa: E402
from jaxvision.training import sharding  # noqa: E402

DEFAULT_MODELS = ("simple_cnn", "lenet5", "resnet18_cifar", "resnet50")
DEFAULT_PEERS = ("keras_fit", "keras_xla")


def _csv(value: str) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
  p.add_argument("--models", type=_csv, default=list(DEFAULT_MODELS),
                 help=f"comma-separated, from {sorted(SPECS)}")
  p.add_argument("--steps-kinds", "--kinds", dest="kinds", type=_csv, default=["train", "eval"],
                 help=f"comma-separated step kinds from {jax_steps.STEP_KINDS}")
  p.add_argument("--batch", type=int, default=None, help="batch size (default: per model)")
  p.add_argument("--steps", type=int, default=None,
                 help="steps per timed round (default: per model)")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed rounds (default: per model)")
  p.add_argument("--peers", type=_csv, default=list(DEFAULT_PEERS),
                 help="comma-separated from keras_fit,keras_xla, or 'none'")
  p.add_argument("--num-devices", type=int, default=None,
                 help="devices in the JAX mesh (default: all, as the trainer)")
  p.add_argument("--peak-n", type=int, default=None,
                 help="matmul size for the peak FLOP/s (default 2048 on CPU, 8192 otherwise)")
  p.add_argument("--cpu-async-dispatch", action="store_true",
                 help="restore JAX's asynchronous CPU dispatch, which "
                      "backends.cpu.configure_runtime() turns off: for before/after runs")
  p.add_argument("--out", required=True, help="JSON file to write")
  args = p.parse_args(argv)
  for name in args.models:
    get_spec(name)
  bad = [k for k in args.kinds if k not in jax_steps.STEP_KINDS]
  if bad or not args.kinds:
    p.error(f"--steps-kinds must be from {jax_steps.STEP_KINDS}; found {args.kinds}")
  args.peers = [] if args.peers in ([], ["none"]) else args.peers
  bad = [x for x in args.peers if x not in DEFAULT_PEERS]
  if bad:
    p.error(f"--peers must be from {DEFAULT_PEERS} or 'none'; found {bad}")
  for name in ("batch", "steps", "repeats"):
    v = getattr(args, name)
    if v is not None and v < 1:
      p.error(f"--{name} must be >= 1; found {v}")
  return args


def _records_for(spec, kind, runners, infos, times, batch, steps, peak, env) -> list[dict]:
  records = []
  for runner, info in zip(runners, infos):
    stats = timing.summarize(times[runner])
    step_s = stats["step_ms_median"] / 1e3
    flops = info.get("flops_per_step")
    achieved = flops / step_s if flops else None
    records.append({
        "model": spec.name,
        "step": kind,
        "framework": runner.framework,
        "batch": batch,
        "input_shape": list(spec.input_shape),
        "optimizer": spec.optimizer["name"],
        "images_per_s": batch / step_s,
        **stats,
        "steps_per_round": steps,
        "rounds": len(times[runner]),
        "compile_s": info.get("compile_s"),
        "flops_per_step": flops,
        "achieved_flops_per_s": achieved,
        "utilization": achieved / peak["flops_per_s"] if achieved else None,
        "peak_flops_per_s": peak["flops_per_s"],
        "device": env["device"] if runner.framework == "jax" else
                  f"cpu: {env['cpu'] or 'unknown'} ({env['cpu_count']} cores)",
        "device_memory": runner.memory(),
        "compiled_memory_bytes": info.get("compiled_memory_bytes"),
        "notes": info.get("notes"),
        "versions": env["versions"],
    })
  peers = [r for r in records if r["framework"] != "jax"]
  if peers:
    best = max(peers, key=lambda r: r["images_per_s"])
    best_runner = runners[records.index(best)]
    for rec, runner in zip(records, runners):
      if rec["framework"] != "jax":
        continue
      rec["fastest_peer"] = best["framework"]
      rec["vs_fastest_peer"] = rec["images_per_s"] / best["images_per_s"]
      # Rounds are interleaved, so round i of both ran under similar load.
      rec["vs_fastest_peer_paired_median"] = statistics.median(
          p / j for p, j in zip(times[best_runner], times[runner]))
  return records


def bench_model(spec, args, peak, env, mesh) -> list[dict]:
  """Sets up and times every step kind of one model with JAX and the peers."""
  batch = args.batch or spec.batch
  steps = args.steps or spec.steps
  repeats = args.repeats or spec.repeats
  host_batch = jax_steps.random_batch(spec, batch)
  state = jax_steps.initial_state(spec, mesh)
  records = []
  for kind in args.kinds:
    # Each kind gets its own copy: the train step donates (consumes) the state it is given.
    runners = [jax_steps.JaxStepRunner(spec, kind, batch, mesh, host_batch,
                                       state=jax.tree_util.tree_map(jnp.copy, state))]
    if args.peers:
      from benchmarks import keras_peers
      runners += [keras_peers.make_runner(p, spec, kind, batch, host_batch) for p in args.peers]
    infos = [r.setup() for r in runners]
    times = {r: [] for r in runners}
    for i in range(repeats):
      order = runners[i % len(runners):] + runners[:i % len(runners)]
      for r in order:
        times[r].append(r.run(steps) / steps)
    new = _records_for(spec, kind, runners, infos, times, batch, steps, peak, env)
    for rec in new:
      print(format_row(rec), flush=True)
    records += new
    del runners, infos, times
    gc.collect()
  if args.peers:
    import keras
    keras.backend.clear_session()
  return records


def _fmt(v, spec):
  return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


HEADER = (f"{'model':15s} {'step':7s} {'framework':10s} {'batch':>5s} {'img/s':>9s} "
          f"{'ms/step':>9s} {'[q1 - q3]':>17s} {'compile s':>9s} {'GFLOP/st':>9s} "
          f"{'GFLOP/s':>8s} {'util':>6s} {'vs best peer':>16s}")


def format_row(r: dict) -> str:
  ratio = "-"
  if r.get("vs_fastest_peer") is not None:
    ratio = f"{r['vs_fastest_peer']:.2f}x {r['fastest_peer'].replace('keras_', 'k')}"
  gflop = r["flops_per_step"] / 1e9 if r["flops_per_step"] else None
  gflops = r["achieved_flops_per_s"] / 1e9 if r["achieved_flops_per_s"] else None
  util = f"{100 * r['utilization']:.1f}%" if r["utilization"] else "-"
  spread = f"[{r['step_ms_q1']:.1f} - {r['step_ms_q3']:.1f}]"
  return (f"{r['model']:15s} {r['step']:7s} {r['framework']:10s} {r['batch']:5d} "
          f"{r['images_per_s']:9.1f} {r['step_ms_median']:9.2f} {spread:>17s} "
          f"{_fmt(r['compile_s'], '9.2f')} {_fmt(gflop, '9.3f')} {_fmt(gflops, '8.1f')} "
          f"{util:>6s} {ratio:>16s}")


def main(argv=None) -> dict:
  args = parse_args(argv)
  cpu.configure_runtime()  # Before anything creates JAX's backends.
  if args.cpu_async_dispatch:
    jax.config.update("jax_cpu_enable_async_dispatch", True)
  env = timing.environment()
  mesh = sharding.make_mesh(args.num_devices)
  peak = timing.matmul_peak(mesh.devices.flat[0], n=args.peak_n)
  print(f"device: {env['device']}; {mesh.devices.size} device(s) in the mesh; "
        f"matmul peak {peak['flops_per_s'] / 1e9:.1f} GFLOP/s (n={peak['n']}, {peak['dtype']})")
  print(f"versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items() if v)}")
  print(HEADER)
  records = []
  for name in args.models:
    records += bench_model(get_spec(name), args, peak, env, mesh)
    # The machine may be busier at any one moment: the reference is the best matmul seen.
    again = timing.matmul_peak(mesh.devices.flat[0], n=args.peak_n)
    if again["flops_per_s"] > peak["flops_per_s"]:
      peak = again
  for rec in records:
    rec["peak_flops_per_s"] = peak["flops_per_s"]
    if rec["achieved_flops_per_s"]:
      rec["utilization"] = rec["achieved_flops_per_s"] / peak["flops_per_s"]
  if len(args.models) > 1 or len(records) > 3:
    print(f"\nSummary (utilisation against the best matmul of the run, "
          f"{peak['flops_per_s'] / 1e9:.1f} GFLOP/s):")
    print(HEADER)
    for rec in records:
      print(format_row(rec))
  out = {"command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
         "environment": env, "matmul_peak": peak, "records": records}
  path = pathlib.Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print(f"wrote {len(records)} records to {path}")
  return out


if __name__ == "__main__":
  main()
