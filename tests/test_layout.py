"""The package's shape: a light core, the reproduction apart, no private imports across modules."""

import ast
import pathlib
import subprocess
import sys

import gsm_optax

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gsm_optax"


def test_import_gsm_optax_stays_light():
  """No experiments, flax, matplotlib, orbax, tqdm, nor jax.experimental.sparse (a third of the
  import time) until they are used."""
  code = ("import sys, gsm_optax; print(' '.join(m for m in sys.modules if m.startswith("
          "('gsm_optax.experiments', 'flax', 'matplotlib', 'orbax', 'tqdm',"
          " 'jax.experimental.sparse'))))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=ROOT)
  assert out.stdout.split() == []


def test_every_exported_name_exists_and_nothing_from_the_experiments_is_exported():
  for name in gsm_optax.__all__:
    obj = getattr(gsm_optax, name)
    assert not getattr(obj, "__module__", "").startswith("gsm_optax.experiments"), name
  assert sorted(gsm_optax.__all__, key=str.lower) == gsm_optax.__all__


def _imports(path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gsm_optax"):
      yield node.module, [a.name for a in node.names]


def test_no_module_imports_a_private_name_of_another():
  """Shared private helpers live in one private module, gsm_optax._utils, imported whole."""
  offenders = []
  for path in PACKAGE.rglob("*.py"):
    for module, names in _imports(path):
      offenders += [f"{path.relative_to(ROOT)}: from {module} import {n}"
                    for n in names if n.startswith("_")
                    and (module, n) != ("gsm_optax", "_utils")]
  assert offenders == []


def _module_level_imports(path):
  """The modules imported by the statements that run at import time (not inside a function)."""
  def walk(nodes):
    for node in nodes:
      if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module:
        yield from [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        yield from walk(ast.iter_child_nodes(node))
  return list(walk(ast.parse(path.read_text()).body))


def test_the_core_does_not_import_the_experiments():
  """Every module outside gsm_optax/experiments (gsm_optax/structure/ included): no import of
  the experiments anywhere, and flax.linen or matplotlib only inside the function that needs
  them (``import flax.linen``, ``from flax import linen`` and ``from flax.linen import ...``)."""
  core = [p for p in PACKAGE.rglob("*.py") if "experiments" not in p.relative_to(PACKAGE).parts]
  assert PACKAGE / "structure" / "graph.py" in core
  offenders = []
  for path in core:
    for module, _ in _imports(path):
      if module.startswith("gsm_optax.experiments"):
        offenders.append(f"{path.relative_to(ROOT)}: {module}")
    for module in _module_level_imports(path):
      if module.startswith(("flax.linen", "matplotlib")):
        offenders.append(f"{path.relative_to(ROOT)}: {module} at import time")
  assert offenders == []


def test_nothing_points_to_documents_outside_the_repository():
  tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT)
  files = [ROOT / f for f in tracked.stdout.split()] if tracked.returncode == 0 else []
  if not files:  # not a git checkout: look at the source files
    files = [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md", ".ipynb", ".sh")]
  needles = ("GUIDE", "../shared")
  this = pathlib.Path(__file__).resolve()
  hits = [str(f.relative_to(ROOT)) for f in files
          if f.is_file() and f.resolve() != this and f.suffix in (".py", ".md", ".ipynb", ".sh")
          and any(n in f.read_text(errors="ignore") for n in needles)]
  assert hits == []
