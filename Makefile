# Everything runs inside .venv, created here, so a fresh machine gets what we test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: prune an MLP on scikit-learn's digits to 10x and report.
demo: venv
	$(BIN)/gsm-optax digits

# The whole suite, then the linter.
test: venv
	$(BIN)/python -m pytest -n 2 tests
	$(BIN)/ruff check gsm_optax tests benchmarks

lint: venv
	$(BIN)/ruff check gsm_optax tests benchmarks

bench: venv
	$(BIN)/python -m benchmarks.step_time

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
