"""Importing every jaxvision module changes no process-wide state: ``os.environ`` and every
``jax.config`` value are the same before and after (checked in a fresh interpreter)."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import importlib, json, os, pkgutil, sys
import jax


def config_values():
  # jax.config.values: every option by name (context-manager options included), read live.
  return {k: repr(v) for k, v in dict(jax.config.values).items()}


def snapshot():
  return {"environ": dict(os.environ), "config": config_values()}


# Third-party libraries that jaxvision's modules import and that change state themselves, each
# imported before the first snapshot (see THIRD_PARTY below):
THIRD_PARTY = json.loads(sys.argv[1])
for name in THIRD_PARTY:
  importlib.import_module(name)

before = snapshot()
import jaxvision
names = ["jaxvision"]
for info in pkgutil.walk_packages(jaxvision.__path__, "jaxvision."):
  importlib.import_module(info.name)
  names.append(info.name)
after = snapshot()

diff = {}
for part in before:
  keys = set(before[part]) | set(after[part])
  changed = {k: (before[part].get(k), after[part].get(k)) for k in sorted(keys)
             if before[part].get(k) != after[part].get(k)}
  if changed:
    diff[part] = changed
print(json.dumps({"modules": names, "diff": diff}))
"""

# None needed so far (TensorFlow, imported by the data modules, sets nothing checked here):
# a third-party library found to change os.environ or jax.config is named here, with a comment
# saying what it sets, after confirming it by importing that library alone.
THIRD_PARTY: list[str] = []


def _run(third_party) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAXVISION_")}
  env.update(JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(third_party)], env=env,
                       capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_module_changes_no_environment_or_jax_config():
  result = _run(THIRD_PARTY)
  assert "jaxvision.backends.cpu.runtime" in result["modules"]
  assert "jaxvision.training.jit" in result["modules"]
  assert len(result["modules"]) > 30, result["modules"]
  assert result["diff"] == {}, json.dumps(result["diff"], indent=1)
