# Everything runs inside .venv, created here, so a fresh machine gets what we test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck docs bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: the paper's LeNet-300-100 60x experiment on MNIST in its fast setting, with the
# recommended GSM recipe
# (base model, GSM, final prune, lottery tickets, baselines; JSON and plots in runs/).
demo: venv
	$(BIN)/gsm-optax mnist --model lenet300 --compression 60 --fast --recipe recommended

# The whole suite (with its 15 slowest tests: it must stay under ~15 min), then the linter and
# the type checker.
test: venv
	$(BIN)/python -m pytest -n 2 --durations=15 tests
	$(BIN)/ruff check gsm_optax tests benchmarks docs notebooks
	$(BIN)/mypy

lint: venv
	$(BIN)/ruff check gsm_optax tests benchmarks docs notebooks

# mypy on gsm_optax; its settings (and the strictness) are in pyproject.toml.
typecheck: venv
	$(BIN)/mypy

# The reference site (guides and the API from the docstrings), offline, warnings as errors.
docs: venv
	$(BIN)/sphinx-build -W -q -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

bench: venv
	$(BIN)/python -m benchmarks.step_time

clean:
	rm -rf $(VENV) build dist docs/_build docs/api *.egg-info .pytest_cache .ruff_cache .mypy_cache
