"""Import layout of the package, read from the source with ``ast`` (nothing is imported).

* nothing in ``jaxvision/`` imports ``train`` or ``benchmarks``;
* ``jaxvision.backends`` is imported only by ``models/layers.py``, ``training/jit.py`` and
  modules inside ``jaxvision/backends/``;
* ``jaxvision.ops`` and ``jaxvision.backends`` import nothing of jaxvision outside themselves;
* there is no import cycle among jaxvision's modules.

``from a.b import c`` is an edge to ``a.b.c`` when that is a module of the package, else to
``a.b``. A package's own ``__init__`` running first is not counted as an edge (Python handles
a submodule importing its siblings while the package initialises).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxvision"
BACKEND_DOORS = {"jaxvision.models.layers", "jaxvision.training.jit"}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
  """Absolute names of the modules (ours resolved to modules) that ``name`` imports."""
  path = MODULES[name]
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        found.add(full if full in MODULES else base)
  return found


def _ours(target: str) -> str | None:
  """The jaxvision module ``target`` names (its longest existing prefix), or None."""
  while target and target not in MODULES:
    target = target.rpartition(".")[0]
  return target or None


GRAPH = {name: {m for m in map(_ours, _imports(name)) if m and m != name} for name in MODULES}


def _inside(name: str, package: str) -> bool:
  return name == package or name.startswith(package + ".")


def test_the_package_is_found():
  assert {"jaxvision.models.layers", "jaxvision.training.jit", "jaxvision.backends.cpu.conv",
          "jaxvision.ops.nms"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_imports_of_train_or_benchmarks(name):
  bad = {m for m in _imports(name) if m.split(".")[0] in ("train", "benchmarks")}
  assert not bad, f"{name} imports {sorted(bad)}"


def test_backends_are_imported_only_through_the_doors():
  users = {name for name, deps in GRAPH.items()
           if any(_inside(d, "jaxvision.backends") for d in deps)
           and not _inside(name, "jaxvision.backends")}
  assert users == BACKEND_DOORS


@pytest.mark.parametrize("package", ["jaxvision.ops", "jaxvision.backends"])
def test_low_layers_import_nothing_of_ours_above_them(package):
  bad = {name: sorted(d for d in deps if not _inside(d, package))
         for name, deps in GRAPH.items() if _inside(name, package)}
  assert not {k: v for k, v in bad.items() if v}, bad


def _cycles(graph) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
  assert _cycles(GRAPH) == []


# Imports flow one way (GUIDE.md): layer -> packages of ours it must not import.
FORBIDDEN = {
    "jaxvision.models": ("jaxvision.data", "jaxvision.training", "jaxvision.tasks",
                         "jaxvision.inference"),
    "jaxvision.losses": ("jaxvision.models", "jaxvision.data", "jaxvision.training",
                         "jaxvision.tasks"),
    "jaxvision.metrics": ("jaxvision.models", "jaxvision.training", "jaxvision.tasks"),
    "jaxvision.data": ("jaxvision.models", "jaxvision.training", "jaxvision.tasks"),
    "jaxvision.training": ("jaxvision.tasks", "jaxvision.models", "jaxvision.inference"),
    "jaxvision.tasks": ("jaxvision.inference",),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_flow_one_way(layer):
  bad = {name: sorted(d for d in deps if any(_inside(d, f) for f in FORBIDDEN[layer]))
         for name, deps in GRAPH.items() if _inside(name, layer)}
  assert not {k: v for k, v in bad.items() if v}, bad
