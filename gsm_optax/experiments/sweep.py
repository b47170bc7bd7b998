"""The recipe sweep: GSM recipes against the paper's update and gradual magnitude pruning.

One grid of cells (dataset x model x compression) and seeds; in every cell each method starts
from the same dense base model of its seed (one base per dataset, model and seed, shared by all
compressions), so that the methods differ only in how they prune. Jobs run as separate
processes, each pinned to its own core, as many at a time as cores are given; every job
resumes (the runner checkpoints), and a finished job is never run again. ``summarize`` reads
the runs back into one table. The command line is :mod:`.sweep_cli`:

    gsm-optax sweep --out runs/sweep --cores 0 1            # run (or resume) the grid
    gsm-optax sweep --out runs/sweep --summary              # print the table

The schedule (``--schedule short``, the default) is the authors' (Ding et al. 2019;
DingXiaoH/GSM-SGD) shortened 4x (:func:`sweep_config`): 50 base epochs, 70 GSM epochs with the
learning-rate drops at 40, 50 and 60, and the weight decay raised 4x, so that the decay summed
over the steps before the first drop is the authors' over their 160 epochs (a weight left with
decay alone falls at least as far: ``gsm_optax.decay_shrink_factor``). ``--schedule full``
runs the authors' own schedule (200 base epochs, 280 GSM epochs) to check a short-schedule
finding where the paper's figures were measured:

    gsm-optax sweep --out runs/full --schedule full --cells 1 --seeds 0 1 2 --methods recommended

``--structured`` runs the cells of :data:`STRUCTURED_GRID` instead: structured GSM (whole
filters, channels, heads and MLP units; ``compression`` counts MACs) against structured gradual
pruning and the same narrow architecture trained from scratch (``scratch``, which waits for the
structured ``recommended`` run whose export's widths it trains), from the same base models as
the unstructured cells; ``dense_long``, the dense model on ``scratch``'s schedule, tells whether
``scratch`` owes its accuracy to its width or to its longer schedule:

    gsm-optax sweep --out runs/sweep --structured --methods recommended gradual scratch --seeds 0
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gsm_optax.experiments import runner
from gsm_optax.experiments.config import (
  DEEP_PHASES,
  RECIPES,
  ExperimentConfig,
  PhaseConfig,
  deep_config,
  with_recipe,
)
from gsm_optax.experiments.results import load_results, write_json

# (dataset, model, compression), in the order they run.
GRID: tuple[tuple[str, str, float], ...] = (
    ("fashion_mnist", "lenet300", 10.0),
    ("mnist", "lenet300", 60.0),
    ("fashion_mnist", "lenet300", 60.0),
    ("mnist", "lenet300", 10.0),
    ("fashion_mnist", "lenet300", 30.0),
    ("mnist", "lenet300", 30.0),
    ("mnist", "lenet5", 125.0),
    ("fashion_mnist", "lenet5", 20.0),
    ("mnist", "lenet5", 20.0),
    ("fashion_mnist", "lenet5", 125.0),
    # The paper's second LeNet-5 row (Ding et al. 2019, Table 1: 300x, 99.06).
    ("mnist", "lenet5", 300.0),
    # Deep networks, on their own schedules (DEEP_PHASES).
    ("fashion_mnist", "resnet20", 10.0),
    ("fashion_mnist", "resnet20", 20.0),
    ("fashion_mnist", "vit", 10.0),
    ("fashion_mnist", "vit", 20.0),
    # A cell the default was not chosen on: LeNet-300-100 between the 30x and 60x Fashion-MNIST
    # cells (at 30x the default is furthest behind gradual pruning of all the cells).
    ("fashion_mnist", "lenet300", 40.0),
)

# Structured cells (--structured; compression counts MACs): half the MACs of ResNet-20 and the
# ViT, on their own schedules (DEEP_PHASES), then the LeNets at the MACs of the published
# structured marks (L0's LeNet-300-100 266-88-33 keeps about a tenth, SSL's LeNet-5 goal >= 10x
# fewer), on the short schedule; all from the same base models as GRID's cells. Every set whose
# size 8 divides keeps a multiple of 8 (ExperimentConfig.multiple_of), so that the export's
# speed follows its MACs (benchmarks/width_speed.py).
STRUCTURED_MULTIPLE = 8
STRUCTURED_GRID: tuple[tuple[str, str, float], ...] = (
    ("fashion_mnist", "resnet20", 2.0),
    ("fashion_mnist", "vit", 2.0),
    ("mnist", "lenet300", 10.0),
    ("mnist", "lenet5", 11.0),
)

# A method is a GSM recipe (experiments.config.RECIPES, or settings of with_recipe), "gradual":
# gradual magnitude pruning with the GSM phase's optimizer and schedule, or "oneshot": one
# magnitude prune of the base model, then fine-tuning for as many epochs as the GSM phase.
METHODS: dict[str, Any] = {
    "paper": "paper",
    "fixed": "fixed",
    "recommended": "recommended",
    "gradual": "gradual",
    "oneshot": "oneshot",
    "tickets": "tickets",
    "scratch": "scratch",
    "dense_long": "dense_long",
    # Candidates measured while choosing the default (docs/RESULTS.md says which lost and why);
    "late": {"anneal_fraction": 100 / 160, "passive_weight_decay_factor": 10.0,
             "passive_from_anneal_end": True},
    "ema": {"anneal_fraction": 100 / 160, "passive_weight_decay_factor": 10.0,
            "passive_from_anneal_end": True, "importance_ema": 0.99},
    "ema999": {"anneal_fraction": 100 / 160, "passive_weight_decay_factor": 10.0,
               "passive_from_anneal_end": True, "importance_ema": 0.999},
    # The default for one session, replaced by 100x (RESULTS.md: "Passive decay 10x or 100x").
    "passive10": {"anneal_fraction": 1.0, "passive_weight_decay_factor": 10.0,
                  "importance": "magnitude"},
    "magnitude_short": {"anneal_fraction": 100 / 160, "passive_weight_decay_factor": 10.0,
                        "importance": "magnitude"},
    # Structured cells only: the allocations the recipe's ("uniform", the same fraction of every
    # group set) was chosen against (docs/RESULTS.md, "Structured GSM"): one global ranking of
    # the groups (the structured default before), and one of each set's scores over their own
    # RMS (the global ranking without the scale each layer's magnitudes carry).
    "global": dict(RECIPES["recommended"], allocation="global"),
    "normalized": dict(RECIPES["recommended"], allocation="normalized"),
}


# Each method in one line, for `gsm-optax sweep --help` (every key of METHODS has one).
METHOD_HELP: dict[str, str] = {
    "paper": "the authors' GSM update, unchanged (Ding et al. 2019)",
    "fixed": "the first recipe, fitted to LeNet-300-100 60x MNIST: keep ratio annealed over 100/160"
             " of the epochs before the first drop, 10x passive decay",
    "recommended": "the default recipe: keep ratio annealed up to the first drop, ranked by"
                   " magnitude, 100x passive decay; structured, every group set keeping the"
                   " same fraction of its groups",
    "gradual": "baseline: gradual magnitude pruning with GSM's optimizer and schedule",
    "oneshot": "baseline: one magnitude prune of the base model, then fine-tuning",
    "tickets": "lottery tickets (the paper's Table 4): the initial weights retrained under the"
               " final mask of each of TICKET_SOURCES' finished runs in the cell and under a"
               " magnitude prune of the base model",
    "scratch": "baseline, --structured only: the narrow architecture of the cell's recommended"
               " run's export, freshly initialised and trained for base + GSM epochs (Liu et al."
               " 2019)",
    "dense_long": "control, --structured only: the dense model from its initial weights on"
                  " scratch's schedule (base + GSM epochs), which tells whether scratch owes its"
                  " accuracy to its width or to the longer schedule",
    "late": "candidate: as fixed, the passive decay only once the anneal has ended",
    "ema": "candidate: as late, ranked by a moving average of the scores (rate 0.99)",
    "ema999": "candidate: as late, ranked by a moving average of the scores (rate 0.999)",
    "passive10": "candidate: as recommended with 10x passive decay (the default before it)",
    "magnitude_short": "candidate: as fixed, ranked by magnitude",
    "global": "candidate, --structured only: as recommended, one ranking of all groups by their"
              " scores as they are (allocation='global', the structured default before)",
    "normalized": "candidate, --structured only: as recommended, one global ranking of each group"
                  " set's scores over their own root mean square (allocation='normalized')",
}

SCHEDULES = ("short", "full")
BASELINES = ("gradual", "oneshot")  # methods that are not GSM recipes
# A "tickets" job retrains the initial weights under the final mask of these methods' runs of
# its cell and seed (which must have finished first), and under the magnitude mask of the base.
TICKET_SOURCES = ("recommended", "paper")
# A "scratch" job trains the widths of this method's structured export (of its cell and seed).
SCRATCH_SOURCE = "recommended"
# What a structured cell compares: GSM recipes, and these baselines.
STRUCTURED_BASELINES = ("gradual", "scratch")
# Methods of structured cells only, and of unstructured cells only.
STRUCTURED_ONLY = ("scratch", "dense_long", "global", "normalized")
UNSTRUCTURED_ONLY = ("oneshot", "tickets")


def is_recipe(method: str) -> bool:
  """Whether ``method`` (a key of :data:`METHODS`) trains with GSM under a recipe of its own,
  its results under ``"gsm"``: not a baseline, ``scratch``, ``dense_long`` or ``tickets``."""
  return method not in BASELINES + ("scratch", "dense_long", "tickets")

_NAMES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5", "resnet20": "ResNet-20",
          "vit": "ViT", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def cell_name(cell: tuple[str, str, float]) -> str:
  """A cell of :data:`GRID` in words: ``("mnist", "lenet5", 125.0)`` -> ``"LeNet-5 125x MNIST"``."""
  dataset, model, compression = cell
  return f"{_NAMES[model]} {compression:g}x {_NAMES[dataset]}"


def sweep_config(dataset: str, model: str, compression: float, seed: int,
                 method: str, schedule: str = "short",
                 structured: bool = False) -> ExperimentConfig:
  """One job's experiment: the schedule (the authors' shortened 4x, or theirs; a deep network's
  own), then the method. ``structured``: structured GSM with a budget of MACs
  (``compression`` 2: half the dense model's), its baselines structured gradual pruning and
  ``scratch``."""
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}; got schedule={schedule!r}.")
  if structured and method in UNSTRUCTURED_ONLY:
    raise ValueError(f"structured cells compare GSM recipes and {STRUCTURED_BASELINES}; got"
                     f" method={method!r}.")
  if method in STRUCTURED_ONLY and not structured:
    raise ValueError(f"method {method!r} is for structured cells only ({METHOD_HELP[method]}):"
                     " it needs structured=True.")
  methods: tuple[str, ...] = (
      (method,) if method in BASELINES else ("lottery",) if method == "tickets" else ("gsm",))
  if method == "scratch":
    methods = ("gsm", "scratch")  # the widths of the cell's GSM run (SCRATCH_SOURCE)
  elif method == "dense_long":
    methods = ("dense_long",)
  kind: dict[str, Any] = (dict(structured=True, budget="macs", multiple_of=STRUCTURED_MULTIPLE)
                          if structured else {})
  if model in DEEP_PHASES:
    if schedule == "full":
      raise ValueError(f"{model} has one schedule (experiments.DEEP_PHASES): the authors' 1,100"
                       " epochs do not fit one CPU core; got schedule='full'.")
    config = deep_config(model, compression, dataset, seed=seed, methods=methods, **kind)
  else:
    phases: dict[str, Any] = {}
    if schedule == "short":
      phases = dict(
          base=PhaseConfig(3e-2, 50, (10, 20, 30, 40), momentum=0.9, warmup_epochs=2),
          gsm=PhaseConfig(1e-2, 70, (40, 50, 60), momentum=0.99, nesterov=True,
                          weight_decay=2e-3, warmup_epochs=2))
    config = ExperimentConfig(
        model=model, compression=compression, dataset=dataset, seed=seed, **phases,
        methods=methods, checkpoint_every=10, last_k=5, **kind)
  if method == "scratch":
    config = with_recipe(config, METHODS[SCRATCH_SOURCE])
  elif is_recipe(method):
    config = with_recipe(config, METHODS[method])
  return config


def _cell_prefix(dataset: str, model: str, compression: float, structured: bool = False) -> str:
  return f"{dataset}_{model}_{compression:g}x_{'structured_' if structured else ''}seed"


def _cell_name(dataset: str, model: str, compression: float, seed: int,
               structured: bool = False) -> str:
  return f"{_cell_prefix(dataset, model, compression, structured)}{seed}"


def _base_dir(out: str, dataset: str, model: str, seed: int) -> str:
  return os.path.join(out, "bases", f"{dataset}_{model}_seed{seed}")


def job_dir(out: str, dataset: str, model: str, compression: float, seed: int,
            method: str, structured: bool = False) -> str:
  return os.path.join(out, _cell_name(dataset, model, compression, seed, structured), method)


@dataclasses.dataclass(frozen=True)
class Job:
  dataset: str
  model: str
  compression: float
  seed: int
  method: str  # a key of METHODS, or "base"
  schedule: str = "short"  # a key of SCHEDULES
  structured: bool = False  # a cell of STRUCTURED_GRID (the base models are shared)

  def directory(self, out: str) -> str:
    if self.method == "base":
      return _base_dir(out, self.dataset, self.model, self.seed)
    return job_dir(out, self.dataset, self.model, self.compression, self.seed, self.method,
                   self.structured)

  def done(self, out: str) -> bool:
    marker = "base/result.json" if self.method == "base" else "results.json"
    return os.path.exists(os.path.join(self.directory(out), marker))

  def needs(self) -> list[Job]:
    """The jobs that must have finished before this one starts."""
    if self.method == "base":
      return []
    base = Job(self.dataset, self.model, 1.0, self.seed, "base", self.schedule)
    if self.method == "scratch":
      return [base, dataclasses.replace(self, method=SCRATCH_SOURCE)]
    if self.method != "tickets":
      return [base]
    return [base] + [dataclasses.replace(self, method=m) for m in TICKET_SOURCES]

  def running_elsewhere(self, out: str) -> bool:
    """Whether a live process (of another sweep, say) is running this job now."""
    try:
      with open(os.path.join(self.directory(out), "running.pid")) as f:
        pid = int(f.read())
      os.kill(pid, 0)
    except (OSError, ValueError):
      return False
    return pid != os.getpid()


def plan(cells: Sequence[tuple[str, str, float]], seeds: Sequence[int],
         methods: Sequence[str], schedule: str = "short", structured: bool = False) -> list[Job]:
  """Every base model first, then the methods cell by cell (seeds inside a cell).

  ``structured``: the cells are structured ones (:data:`STRUCTURED_GRID`); their base models
  are the same jobs as the unstructured cells'. Every job's experiment is built here
  (:func:`sweep_config`), so that a method a cell cannot run (``scratch`` on a LeNet, say)
  raises its ``ValueError`` before any job starts.
  """
  bases = {(d, m, s) for d, m, _ in cells for s in seeds}
  jobs = [Job(d, m, 1.0, s, "base", schedule) for d, m, s in sorted(bases, key=str)]
  for d, m, c in cells:
    for s in seeds:
      jobs += [Job(d, m, c, s, method, schedule, structured) for method in methods]
  for j in jobs[len(bases):]:
    sweep_config(j.dataset, j.model, j.compression, j.seed, j.method, j.schedule, j.structured)
  return jobs


def run_job(job: Job, out: str) -> None:
  """Runs one job in this process (the worker side of :func:`run_sweep`), its ``running.pid``
  in its directory while it runs (:meth:`Job.running_elsewhere`), removed when it ends however
  it ends, so that a later process given the same pid is never taken for it."""
  directory = job.directory(out)
  os.makedirs(directory, exist_ok=True)
  pid_file = os.path.join(directory, "running.pid")
  with open(pid_file, "w") as f:
    f.write(str(os.getpid()))
  try:
    _run_job(job, out, directory)
  finally:
    os.remove(pid_file)


def _run_job(job: Job, out: str, directory: str) -> None:
  if job.method == "tickets":
    _link_base(job, out, directory)
    run_tickets(job, out)
    return
  if job.method == "scratch":
    run_scratch(job, out)
    return
  if job.method == "base":
    # Only the base phase, which every method's config shares (the paper's is one of them).
    config = sweep_config(job.dataset, job.model, job.compression, job.seed, "paper",
                          job.schedule)
    r = runner.Runner(config, directory, quiet=True)
    r.phase("base", r.init_variables(),
            runner.momentum_sgd(config.base, r.steps_per_epoch, r.eligible), config.base.epochs)
    return
  _link_base(job, out, directory)
  config = sweep_config(job.dataset, job.model, job.compression, job.seed, job.method,
                        job.schedule, job.structured)
  runner.run(config, directory, quiet=True)


def _link_base(job: Job, out: str, directory: str) -> None:
  """Lets the job's runner find its seed's base model as its own ``base`` phase."""
  link = os.path.join(directory, "base")
  if not os.path.exists(link):
    target = os.path.join(_base_dir(out, job.dataset, job.model, job.seed), "base")
    os.symlink(os.path.relpath(target, directory), link)


def run_tickets(job: Job, out: str) -> dict[str, Any]:
  """Lottery tickets (Ding et al. 2019, Table 4; Frankle & Carbin 2019) of one cell and seed.

  Each ticket is the model's initial weights under a mask of Q weights, retrained with the base
  phase's schedule, the pruned weights held at zero (``gsm_optax.hold_mask``): the masks are the
  final prune of each of :data:`TICKET_SOURCES`' GSM runs and a global magnitude prune of the
  base model. Every ticket is a resumable phase; ``results.json`` holds ``{"lottery": {source:
  result}}`` beside the base's result.
  """
  directory = job.directory(out)
  config = sweep_config(job.dataset, job.model, job.compression, job.seed, "tickets",
                        job.schedule)
  r = runner.Runner(config, directory, quiet=True)
  init = r.init_variables()
  spe, keep = r.steps_per_epoch, config.keep_ratio
  tx = runner.momentum_sgd(config.base, spe, r.eligible)
  base_vars, base = r.phase("base", init, tx, config.base.epochs)
  masks = {"magnitude": r.prune_mask(base_vars["params"], keep)}
  for source in TICKET_SOURCES:
    source_dir = job_dir(out, job.dataset, job.model, job.compression, job.seed, source)
    masks[source] = r.prune_mask(runner.load_phase_params(source_dir, "gsm", config), keep)
  results: dict[str, Any] = {"config": config.to_dict(), "base": base, "lottery": {},
                             "sources": {s: "gsm" for s in TICKET_SOURCES}}
  for source, mask in masks.items():
    results["lottery"][source] = r.lottery_ticket(source, init, mask)
  write_json(os.path.join(directory, "results.json"), results)  # whole, or not done
  return results


def run_scratch(job: Job, out: str) -> dict[str, Any]:
  """The same narrow architecture trained from scratch (Liu et al. 2019) of one structured cell
  and seed: the widths of the export of its :data:`SCRATCH_SOURCE` run (which must have
  finished), freshly initialised and trained for the base and GSM phases' epochs
  (``runner.Runner.scratch``). ``results.json`` holds ``{"scratch": result}``, the source's
  export and the base's result, read from the source's ``results.json``.
  """
  directory = job.directory(out)
  config = sweep_config(job.dataset, job.model, job.compression, job.seed, "scratch",
                        job.schedule, job.structured)
  source = load_results(os.path.join(dataclasses.replace(job, method=SCRATCH_SOURCE)
                                     .directory(out), "results.json"))
  r = runner.Runner(config, directory, quiet=True)
  results: dict[str, Any] = {"config": config.to_dict(), "base": source["base"],
                             "source": SCRATCH_SOURCE, "export": source["gsm"]["export"],
                             "scratch": r.scratch(source["gsm"]["export"])}
  write_json(os.path.join(directory, "results.json"), results)
  return results


def next_job(pending: list[Job], out: str) -> Job | None:
  """Takes from ``pending`` the first job whose needs have finished, or returns None.

  First drops the jobs that have finished or that a live process runs since ``pending`` was
  made: another sweep on the same ``--out`` may have started one meanwhile, and two processes
  training one job would write over each other's checkpoints.
  """
  pending[:] = [j for j in pending if not j.done(out) and not j.running_elsewhere(out)]
  for job in pending:
    if all(n.done(out) for n in job.needs()):
      pending.remove(job)
      return job
  return None


def run_sweep(jobs: Sequence[Job], out: str, cores: Sequence[int]) -> None:
  """Runs the jobs that have not finished, one process per core, bases before their users."""
  pending = list(jobs)  # next_job drops the finished ones and those another process runs
  running: dict[int, tuple[subprocess.Popen, Job, Any]] = {}
  env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false"
             " intra_op_parallelism_threads=1")
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  while pending or running:
    for core, (proc, job, log) in list(running.items()):
      if proc.poll() is not None:
        del running[core]
        log.close()
        status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
        print(f"{time.strftime('%H:%M:%S')} core {core}: {_label(job)} {status}", flush=True)
    for core in cores:
      if core in running:
        continue
      start = next_job(pending, out)
      if start is None:
        break
      log = open(os.path.join(out, "logs", _label(start).replace(" ", "_") + ".log"), "a")
      cmd = ["taskset", "-c", str(core), sys.executable, "-m", "gsm_optax.experiments.sweep_cli",
             "--out", out, "--job", json.dumps(dataclasses.asdict(start))]
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
      running[core] = (proc, start, log)
      print(f"{time.strftime('%H:%M:%S')} core {core}: {_label(start)} started", flush=True)
    if pending and not running:  # nothing can start now, and nothing running will change that
      for job in pending:
        missing = ", ".join(_label(n) for n in job.needs() if not n.done(out))
        print(f"{_label(job)} not started: it needs {missing}, which this sweep did not finish"
              " (add its method to --methods, or rerun once it has finished)", flush=True)
      return
    time.sleep(2)


def _label(job: Job) -> str:
  if job.method == "base":
    return f"{job.dataset} {job.model} seed{job.seed} base"
  cell = _cell_name(job.dataset, job.model, job.compression, job.seed, job.structured)
  return f"{cell} {job.method}"


# ----------------------------------------------------------------------------- summary


def collect(out: str, structured: bool = False
            ) -> dict[tuple[str, str, float], dict[str, dict[int, dict[str, float]]]]:
  """``{cell: {method: {seed: {"before", "after", "base", "base_run"}}}}`` from the finished
  jobs (of :data:`STRUCTURED_GRID` with ``structured``); ``base_run`` is the base model's
  history (every epoch's loss and seconds), which tells two base models of one seed apart
  where the summary fields beside it (``last_k``...) vary with the runner's version."""
  table: dict = {}
  names = os.listdir(out) if os.path.isdir(out) else []
  for d, m, c in STRUCTURED_GRID if structured else GRID:
    prefix = _cell_prefix(d, m, c, structured)
    for name in names:
      if not name.startswith(prefix):
        continue
      seed = int(name[len(prefix):])
      for method in METHODS:
        path = os.path.join(out, name, method, "results.json")
        if method == "tickets" or not os.path.exists(path):
          continue
        r = load_results(path)
        if not is_recipe(method):
          after = before = r[method]["final_test_accuracy"]
        else:
          before, after = r["gsm"]["accuracy_before_prune"], r["gsm"]["accuracy_after_prune"]
        row = {"before": 100 * before, "after": 100 * after,
               "base": 100 * r["base"]["final_test_accuracy"],
               "base_run": json.dumps(r["base"]["history"], sort_keys=True)}
        table.setdefault((d, m, c), {}).setdefault(method, {})[seed] = row
  return table


def _mean_sd(values: list[float]) -> str:
  v = np.asarray(values)
  if len(v) == 1:
    return f"{v[0]:.2f}"
  return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def summarize(out: str, methods: Sequence[str], default: str = "recommended",
              structured: bool = False,
              cells: Sequence[tuple[str, str, float]] | None = None) -> str:
  """A markdown table: after-prune accuracy (mean ± sd over seeds), prune cost, goal checks.

  Each cell is summarised over the seeds that every listed method has finished from one base
  model, so that the differences are taken between runs from the same base models; a seed whose
  runs started from different base models of that seed (one retrained after the other was lost)
  is left out, and a line under the table says so. ``structured``: the cells of
  :data:`STRUCTURED_GRID`, compared with gradual pruning and ``scratch``. ``cells``: only
  these cells (default: every cell with finished runs), in the grid's order. Every other
  baseline listed in ``methods`` (``oneshot``, ``dense_long``) gets a gap column of its own
  after those.
  """
  others: tuple[str, ...] = STRUCTURED_BASELINES if structured else ("paper", "gradual")
  others += tuple(m for m in methods
                  if not is_recipe(m) and m not in others and m not in (default, "tickets"))
  head = ("| cell | seeds | dense | " + " | ".join(methods)
          + f" | {default}: prune cost | " + " | ".join(f"{default} - {o}" for o in others)
          + " |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  notes = []
  for (d, m, c), runs in collect(out, structured).items():
    if cells is not None and (d, m, c) not in cells:
      continue
    name = cell_name((d, m, c)) + (" structured (MACs)" if structured else "")
    seeds = sorted(set.intersection(*(set(runs.get(k, {})) for k in methods)))
    mixed = [s for s in seeds if len({runs[k][s]["base_run"] for k in methods}) > 1]
    notes += [f"{name}, seed {s}: left out, its runs of {', '.join(methods)} did not all start"
              " from the same base model" for s in mixed]
    seeds = [s for s in seeds if s not in mixed]
    if not seeds:
      continue
    row = {k: [runs[k][s] for s in seeds] for k in methods}
    after = {k: np.asarray([r["after"] for r in rows]) for k, rows in row.items()}
    gaps = [f"{np.mean(after[default] - after[other]):+.2f}"
            if default in after and other in after else "-" for other in others]
    cost = (f"{np.mean([r['before'] - r['after'] for r in row[default]]):.2f}"
            if default in row else "-")
    dense = _mean_sd([r["base"] for r in row[methods[0]]])
    lines.append(f"| {name} | {len(seeds)} | {dense} | "
                 + " | ".join(_mean_sd(list(after[k])) for k in methods)
                 + f" | {cost} | " + " | ".join(gaps) + " |")
  return "\n".join(lines + ([""] + notes if notes else []))


def tickets_table(out: str, cells: Sequence[tuple[str, str, float]] | None = None) -> str:
  """A markdown table of the finished ``tickets`` jobs: each ticket's test accuracy (the last
  epoch's, %) by the run whose mask it took, one row per cell (of ``cells``, default all) and
  seed."""
  sources = ("magnitude",) + TICKET_SOURCES
  head = "| cell | seed | dense | " + " | ".join(f"ticket from {s}" for s in sources) + " |"
  lines = [head, "|" + "---|" * (len(sources) + 3)]
  names = os.listdir(out) if os.path.isdir(out) else []
  for d, m, c in GRID if cells is None else [cell for cell in GRID if cell in cells]:
    prefix = _cell_prefix(d, m, c)
    for name in sorted(n for n in names if n.startswith(prefix)):
      path = os.path.join(out, name, "tickets", "results.json")
      if not os.path.exists(path):
        continue
      with open(path) as f:
        r = json.load(f)
      accuracies = [f"{100 * r['lottery'][s]['final_test_accuracy']:.2f}" for s in sources]
      lines.append(f"| {cell_name((d, m, c))} | {name[len(prefix):]} |"
                   f" {100 * r['base']['final_test_accuracy']:.2f} | " + " | ".join(accuracies)
                   + " |")
  return "\n".join(lines)


def archive(out: str, dest: str) -> list[str]:
  """Copies every finished job's ``results.json`` (histories included) from ``out`` to the same
  place under ``dest``, where ``--summary --out DEST`` reads them back; returns the copies.

  The copies are written in today's key names (:func:`.results.load_results`), whatever
  checkout wrote the originals.
  """
  copied = []
  for cell in sorted(os.listdir(out)):
    for method in METHODS:
      src = os.path.join(out, cell, method, "results.json")
      if os.path.exists(src):
        target = os.path.join(dest, cell, method, "results.json")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        write_json(target, load_results(src))
        copied.append(target)
  return copied


BEGIN = "<!-- sweep table: generated by `gsm-optax sweep --summary --write FILE` -->"
END = "<!-- end of the sweep table -->"


def write_table(path: str, table: str) -> None:
  """Replaces the text between :data:`BEGIN` and :data:`END` in ``path`` with ``table``."""
  with open(path) as f:
    text = f.read()
  if BEGIN not in text or END not in text:
    raise ValueError(f"{path} has no sweep table to replace: add the lines {BEGIN!r} and"
                     f" {END!r} where it goes.")
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  with open(path, "w") as f:
    f.write(f"{head}{BEGIN}\n{table}\n{END}{tail}")
