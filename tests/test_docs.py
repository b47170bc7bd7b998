"""Every example in the docs runs: the docstrings' (as doctests), the README's and the guides'.

A Markdown python block that uses names the reader supplies is marked
``<!-- fragment: REASON -->`` and skipped, with its reason; every other block runs, the blocks of
one file in order in one namespace, as a reader would paste them.
"""

import contextlib
import doctest
import importlib
import io
import pathlib
import pkgutil

import pytest

import gsm_optax
from docs.codeblocks import python_blocks

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = sorted(m.name for m in pkgutil.walk_packages(gsm_optax.__path__, "gsm_optax."))
MARKDOWN = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("**/*.md")
                                 if "_build" not in p.parts)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert failed == 0, out.getvalue()


def test_every_public_name_has_a_docstring_with_a_summary():
  """The API pages are generated from these (docs/conf.py); an empty one is a hole there."""
  missing = [n for n in gsm_optax.__all__ if not (getattr(gsm_optax, n).__doc__ or "").strip()]
  assert missing == []


# Public names whose docstring may go without an example of its own, each with the reason.
# Empty: every function shows a call, and every result type the call it comes from.
WITHOUT_EXAMPLE: dict[str, str] = {}


def test_every_public_name_has_an_example_that_the_suite_runs():
  """Each name of ``gsm_optax.__all__`` has doctest examples in its own docstring, defined in a
  module that test_docstring_examples_run tests (doctest runs an object where it is defined)."""
  parser = doctest.DocTestParser()
  missing, untested = [], []
  for name in gsm_optax.__all__:
    obj = getattr(gsm_optax, name)
    if name in WITHOUT_EXAMPLE:
      assert WITHOUT_EXAMPLE[name].strip(), f"{name}: an exception must say why"
      continue
    if not parser.get_examples(obj.__doc__ or ""):
      missing.append(name)
    elif obj.__module__ not in MODULES:
      untested.append(f"{name} ({obj.__module__})")
  assert missing == [], f"public names without a docstring example: {missing}"
  assert untested == [], f"examples that test_docstring_examples_run never runs: {untested}"


@pytest.mark.parametrize("path", MARKDOWN)
def test_markdown_python_blocks_run_or_say_why_not(path, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # files the examples write stay out of the tree
  scope: dict = {"__name__": "__main__"}
  for block in python_blocks(ROOT / path):
    if block.fragment is not None:
      assert block.fragment.strip(), f"{path}:{block.line}: a fragment must say why"
      continue
    exec(compile(block.code, f"{path}:{block.line}", "exec"), scope)
  if path == "README.md":
    _check_the_first_example_keeps_its_promise(capsys.readouterr().out)


def _check_the_first_example_keeps_its_promise(out):
  """As written (seed 0), the recipe's final prune costs at most 0.05 points of accuracy."""
  words = out.split()
  before, after = float(words[words.index("before") - 1]), float(words[words.index("after") - 1])
  assert before > 0.9, out
  assert after >= before - 0.0005, out
  assert "a free prune" in out  # the shrink check of the README's settings (0.9, 5e-3)
