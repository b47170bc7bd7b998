"""Prints docs/RESULTS.md's structured GSM tables from docs/results/structured_*.json.

  python docs/results/summarize_structured.py
"""

from __future__ import annotations

import glob
import os

from gsm_optax.experiments.results import load_results

HERE = os.path.dirname(os.path.abspath(__file__))


def _rows():
  for path in sorted(glob.glob(os.path.join(HERE, "structured_*.json"))):
    results = load_results(path)
    config = results["config"]
    for method in ("gsm", "gradual"):
      if method not in results:
        continue
      r = results[method]
      export = r.get("export", {})
      yield os.path.basename(path)[len("structured_"):-len(".json")], method, config, r, export


def main() -> None:
  print("| run | method | budget | allocation | score | EMA | kept widths | MACs fewer | params"
        " | acc. before prune | acc. exported | speed-up b1 | speed-up b256 |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name, method, config, r, export in _rows():
    budget = f"1/{config['compression']:g} {config['budget']}"
    if config.get("per_mac"):
      budget += " per MAC"
    score = ("-" if method == "gradual" else
             {"group_taylor": "\\|Σ g·w\\|", "taylor": "Σ \\|g·w\\|", "group_rms": "RMS(w)",
              "magnitude": "Σ \\|w\\|"}[
                 config.get("group_importance", "group_taylor")])
    ema = "-" if method == "gradual" else f"{config['importance_ema']:g}"
    # Structured gradual pruning always allocates uniformly; GSM's default is global.
    allocation = "uniform" if method == "gradual" else config.get("allocation", "global")
    before = r.get("accuracy_before_prune", r.get("final_test_accuracy"))
    if "error" in export or not export:
      print(f"| {name} | {method} | {budget} | {allocation} | {score} | {ema} | not exported | | |"
            f" {100 * before:.2f} | {export.get('error', '')} | | |")
      continue
    widths = "-".join(str(v) for v in export["kept_widths"].values())
    t = export["timing"]
    print(f"| {name} | {method} | {budget} | {allocation} | {score} | {ema} | {widths} |"
          f" {export['mac_reduction']:.1f}x | {export['params_exported']:,} | {100 * before:.2f} |"
          f" {100 * export['accuracy_exported']:.2f} | {t['1']['speedup']:.2f}x |"
          f" {t['256']['speedup']:.2f}x |")


if __name__ == "__main__":
  main()
