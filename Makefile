# Two commands for a fresh machine with Python 3.11: `make demo` and `make test`.
# Both call `make setup`, which builds .venv once (and again when the requirements change).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
REQS ?= requirements_cpu.txt
STAMP := $(VENV)/.installed-$(notdir $(REQS))

.PHONY: setup test test-slow test-all lint format demo clean

setup: $(STAMP)

# recbole 1.2.1 pins ray<=2.6.3, colorlog==4.7.2 and colorama==0.4.4 in its metadata; the
# ray pin cannot coexist with a current Ray, so recbole goes in with --no-deps and its real
# runtime needs are listed in the requirements file (README: "Why recbole is installed
# with --no-deps"). `pip check` then reports only that ray pin.
$(STAMP): $(REQS) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r $(REQS)
	$(BIN)/pip install --quiet --no-deps recbole==1.2.1
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check || echo "pip check: the recbole ray pin above is the one deliberate exception (README)"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The default run: lint, then every test not marked slow (a few minutes on 2 cores).
# pytest exits 5 when it collects no test: make treats that as a failure, as it should.
test: lint
	$(BIN)/python -m pytest -q -m "not slow"

# Slow tests (real data, Ray clusters, the MLflow UI in Chromium, larger ETL runs);
# CI runs them after `make test`.
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-all: lint
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) .pytest_cache demo_out
