"""Where jaxvision keeps what it builds or converts on first use (compiled FFI handlers,
converted pretrained weights).

The root is ``$JAXVISION_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/jaxvision``, else
``~/.cache/jaxvision``. Standard library only, so every layer may import it.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

ENV_VAR = "JAXVISION_CACHE_DIR"


def cache_dir(*parts: str) -> pathlib.Path:
  """The cache root joined with ``parts`` (e.g. ``cache_dir('pretrained')``); not created."""
  root = os.environ.get(ENV_VAR)
  if not root:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    root = os.path.join(base, "jaxvision")
  return pathlib.Path(root).expanduser().joinpath(*parts)


def write_atomically(path: str | os.PathLike, write) -> pathlib.Path:
  """Calls ``write(file)`` on a temporary file next to ``path``, then renames it to ``path``.

  Readers (other processes included) see the old file or the complete new one, never a part.
  The folder is created when missing. Returns ``path``.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  return path
