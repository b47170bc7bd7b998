"""The Colab notebook runs top to bottom on a CPU in its fast setting."""

import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs gsm-optax[dev]")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs gsm-optax[dev]")

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "gsm_mnist.ipynb")


def test_notebook_runs_in_its_fast_setting(tmp_path, monkeypatch):
  monkeypatch.setenv("GSM_OPTAX_FAST", "1")
  # The kernel must be this interpreter, with gsm_optax importable.
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
  monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = {}
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      text = "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                     for o in cell.outputs)
      outputs[i] = text
  everything = "\n".join(outputs.values())
  # The user's own nnx loop: GSM's selection and the prune readiness every epoch, then the prune.
  assert "gradients to 4,436 weights" in everything  # selection_stats at the end of the anneal
  assert "if pruned now" in everything  # prune_readiness with an accuracy eval_fn
  assert "nnx loop: before the prune" in everything
  assert "nnx loop: after the prune" in everything
  after = float(everything.split("nnx loop: after the prune")[1].split()[0])
  assert after > 0.5, after  # chance is 0.1; the short run is a demonstration
  assert "GSM, after the prune:" in everything
  assert "eligible total" in everything  # the sparsity report was printed
  assert "4,436" in everything  # Q = floor(266,200 / 60) weights kept
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert len(images) == 2
  assert (tmp_path / "runs" / "notebook_lenet300_60x_fast" / "results.json").exists()
