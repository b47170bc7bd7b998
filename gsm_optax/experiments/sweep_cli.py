"""The command line of the recipe sweep, ``gsm-optax sweep`` (:mod:`.sweep`).

Runs (or resumes) the sweep's jobs, one process pinned to each core given, or, with
``--summary``, prints the table of the finished runs (``--write FILE`` also puts it into FILE);
``--archive DEST`` copies the finished jobs' results. A job's own process runs this module with
``--job``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence

from gsm_optax.experiments.sweep import (
    GRID,
    METHOD_HELP,
    METHODS,
    SCHEDULES,
    STRUCTURED_BASELINES,
    STRUCTURED_GRID,
    STRUCTURED_ONLY,
    UNSTRUCTURED_ONLY,
    Job,
    archive,
    cell_name,
    collect,
    is_recipe,
    plan,
    run_job,
    run_sweep,
    summarize,
    tickets_table,
    write_table,
)

__all__ = ["DESCRIPTION", "main"]

DESCRIPTION = """\
The recipe sweep: GSM recipes against the paper's update and the baselines, over a grid of cells
(dataset, model, compression) and seeds. In every cell each method starts from the same dense
base model of its seed, so that the methods differ only in how they prune. Jobs run as separate
processes, one pinned to each core given; a job resumes where it stopped, and a finished job is
never run again.

  gsm-optax sweep --out runs/sweep --cores 0 1     run (or resume) the grid
  gsm-optax sweep --out runs/sweep --summary       print the table of finished runs

The default schedule (short) is the authors' (Ding et al. 2019, DingXiaoH/GSM-SGD) shortened 4x:
50 base epochs, 70 GSM epochs with the learning rate dropping at 40, 50 and 60, and the weight
decay raised 4x so that it removes as much as theirs. --schedule full runs their 200 + 280 epochs.
ResNet-20 and the ViT have one schedule of their own. --structured runs the structured cells
(listed last) instead: structured GSM at half the MACs against structured gradual pruning and
scratch (the export's narrow model from fresh weights), from the same base models.

How long, on a 2-core x86 CPU (docs/RESULTS.md): a LeNet-300-100 job ~3 min a method on one idle
core (3-11 min beside other work); a LeNet-5 job 30-45 min (~36 s an epoch); a ResNet-20 or ViT
job up to ~75 min (~5 and ~4 min an epoch). Each base model (one per dataset, model and seed) is
one more job of about the same length."""


def _epilog() -> str:
  width = max(map(len, METHODS))
  methods = "\n".join(textwrap.fill(f"  {name:<{width}}  {METHOD_HELP[name]}", 100,
                                    subsequent_indent=" " * (width + 4)) for name in METHODS)
  cells = "\n".join(f"  {i:>2}: {cell_name(cell)}" for i, cell in enumerate(GRID))
  structured = "\n".join(f"  {i:>2}: {cell_name(cell)}"
                         for i, cell in enumerate(STRUCTURED_GRID))
  return ("methods (--methods). Passive decay: an extra weight decay of the weights outside the Q"
          " that GSM keeps,\nas a multiple of the weight decay.\n"
          f"{methods}\n\ncells (--cells, by index or by name):\n{cells}\n\n"
          "structured cells (--structured --cells; compression counts MACs; methods: GSM"
          f" recipes, {', '.join(STRUCTURED_BASELINES)}):\n{structured}")


def _cell(text: str, grid: Sequence[tuple[str, str, float]] = GRID) -> int:
  """A cell of ``grid`` from the command line: its index or its name, as the help lists."""
  if text.isdigit() and int(text) < len(grid):
    return int(text)
  names = [" ".join(cell_name(cell).lower().split()) for cell in grid]
  name = " ".join(text.lower().split())
  if name in names:
    return names.index(name)
  raise argparse.ArgumentTypeError(
      f"no cell {text!r}: give an index 0-{len(grid) - 1} or a name such as"
      f" {cell_name(grid[-1])!r} (gsm-optax sweep --help lists them)")


def _nothing_to_summarize(args: argparse.Namespace) -> str:
  """What to say when ``--summary`` finds no seed that every listed method has finished."""
  found = collect(args.out, args.structured)
  run = (f"gsm-optax sweep --out {args.out}{' --structured' if args.structured else ''}"
         f" --methods {' '.join(args.methods)} --seeds {' '.join(map(str, args.seeds))}")
  if args.cells:
    run += " --cells " + " ".join(map(str, args.cells))
  if args.schedule != "short":
    run += f" --schedule {args.schedule}"
  if not found:
    return f"no finished runs in {args.out}. To make them:\n  {run}"
  have = sorted({method for runs in found.values() for method in runs})
  return (f"no cell in {args.out} has a seed that every one of --methods"
          f" {' '.join(args.methods)} has finished (finished: {', '.join(have)}). Summarize"
          f" those with --methods, or finish the others:\n  {run}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="gsm-optax sweep", description=DESCRIPTION,
                                   epilog=_epilog(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default=os.path.join("runs", "sweep"),
                      help="where the runs go (default runs/sweep)")
  parser.add_argument("--cores", type=int, nargs="+", default=[0, 1],
                      help="one job runs pinned to each of these cores at a time (default 0 1)")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                      help="default 0 1 (--summary takes every seed all --methods finished)")
  parser.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="METHOD",
                      default=["paper", "recommended", "gradual"],
                      help="among those listed below (default paper recommended gradual)")
  parser.add_argument("--cells", nargs="+", metavar="CELL",
                      help="indices or names of the cells listed below (default: all, in order)")
  parser.add_argument("--structured", action="store_true",
                      help="the structured cells listed below: structured GSM at a budget of"
                      " MACs against structured gradual pruning and scratch")
  parser.add_argument("--schedule", choices=SCHEDULES, default="short",
                      help="short: the authors' schedule shortened 4x (default); full: theirs")
  parser.add_argument("--summary", action="store_true",
                      help="print the table of the finished runs and exit")
  parser.add_argument("--default", metavar="METHOD",
                      help="with --summary, the GSM method whose prune cost and differences to"
                      " the baselines the table gives (default recommended; a candidate's name"
                      " shows it as it would be as the default); one of --methods")
  parser.add_argument("--write", metavar="FILE",
                      help="with --summary, also put the table into FILE (docs/RESULTS.md)")
  parser.add_argument("--archive", metavar="DEST",
                      help="copy the finished jobs' results.json files to DEST and exit")
  parser.add_argument("--job", help=argparse.SUPPRESS)  # the worker side
  args = parser.parse_args(argv)
  grid = STRUCTURED_GRID if args.structured else GRID
  try:
    args.cells = [_cell(text, grid) for text in args.cells or []]
  except argparse.ArgumentTypeError as e:
    parser.error(f"argument --cells: {e}")
  if args.structured:
    wrong, why = [m for m in args.methods if m in UNSTRUCTURED_ONLY], "no structured run"
  else:
    wrong = [m for m in args.methods if m in STRUCTURED_ONLY]
    why = "structured runs only (--structured)"
  if wrong:
    parser.error(f"argument --methods: {', '.join(wrong)}: {why}")
  if args.default is not None and (args.default not in args.methods
                                   or not is_recipe(args.default)):
    parser.error(f"argument --default: {args.default!r} must be a GSM method among --methods"
                 f" {' '.join(args.methods)}")
  if args.job:
    run_job(Job(**json.loads(args.job)), args.out)
    return 0
  if args.archive:
    print(f"copied {len(archive(args.out, args.archive))} results to {args.archive}")
    return 0
  cells = [grid[i] for i in args.cells] if args.cells else list(grid)
  if not args.summary:
    try:
      jobs = plan(cells, args.seeds, args.methods, args.schedule, args.structured)
    except ValueError as e:
      parser.error(f"argument --methods: {e}")
    run_sweep(jobs, args.out, args.cores)
  tickets = "tickets" in args.methods
  methods = [m for m in args.methods if m != "tickets"]
  table = summarize(args.out, methods, args.default or "recommended",
                    structured=args.structured, cells=cells) if methods else ""
  if tickets:
    found = tickets_table(args.out, cells)
    if len(found.splitlines()) > 2:
      table = f"{table}\n\n{found}" if methods else found
  if len(table.splitlines()) <= 2:  # the header alone
    print(_nothing_to_summarize(args))
    return 1
  print(table)
  if args.summary and args.write:
    write_table(args.write, table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
