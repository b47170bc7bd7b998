"""Sphinx configuration of the reference site: `make docs` (sphinx-build -W, offline)."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gsm_optax  # noqa: E402

project = "gsm-optax"
author = "the gsm-optax authors"
release = gsm_optax.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "results/**", "codeblocks.py"]
myst_heading_anchors = 4
myst_enable_extensions = ["dollarmath"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # a NamedTuple's Attributes section, not a second copy of each field
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
html_theme = "alabaster"

# The API pages are generated: one per module of the package, listing the names that
# `gsm_optax` exports from it (its __all__), so that nothing is kept by hand.
API = ROOT / "docs" / "api"

def _api_pages() -> list[str]:
  by_module: dict[str, list[str]] = {}
  for name in gsm_optax.__all__:
    by_module.setdefault(getattr(gsm_optax, name).__module__, []).append(name)
  API.mkdir(exist_ok=True)
  pages = []
  for module in sorted(by_module):
    lines = [module, "=" * len(module), "", f".. automodule:: {module}", "",
             ".. currentmodule:: gsm_optax", ""]
    for name in by_module[module]:
      obj = getattr(gsm_optax, name)
      if inspect.isclass(obj):
        members = "" if issubclass(obj, tuple) else "\n   :members:"
        lines += [f".. autoclass:: gsm_optax.{name}{members}", ""]
      else:
        lines += [f".. autofunction:: gsm_optax.{name}", ""]
    page = module.removeprefix("gsm_optax.")
    text = "\n".join(lines)
    path = API / f"{page}.rst"
    if not path.exists() or path.read_text() != text:
      path.write_text(text)
    pages.append(page)
  for module in by_module:
    importlib.import_module(module)
  return pages

API_PAGES = _api_pages()
(API / "index.rst").write_text(
    "API reference\n=============\n\nEverything below is exported by ``gsm_optax``, one page per"
    " module.\n\n.. toctree::\n   :maxdepth: 1\n\n" + "".join(f"   {p}\n" for p in API_PAGES))
