"""What the applications' command lines share: one-line usage errors and JSON output."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


class OneLineParser(argparse.ArgumentParser):
  """Usage errors in one line (``error: <prog>: ...``, exit status 2)."""

  def error(self, message):
    self.exit(2, f"error: {self.prog}: {message}\n")


def emit(obj, out: str | None) -> None:
  """``obj`` as indented JSON into the file ``out`` (folders created; says so on stderr), or
  on stdout when ``out`` is None."""
  text = json.dumps(obj, indent=1)
  if out:
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out).write_text(text + "\n")
    print(f"wrote {out}", file=sys.stderr)
  else:
    print(text)
