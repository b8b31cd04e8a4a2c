# Two entry points a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-quick soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/python -m objlib_daemon.demo

test: $(VENV)/.installed-test
	$(BIN)/ruff check objlib_daemon tests bench
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check objlib_daemon tests bench

# Benchmarks (docs/benchmarks.md). `bench` takes ~20 min the first time (it
# builds and syncs a 100,000-file library, kept in /tmp/objlibd-bench) and
# rewrites the results block of docs/benchmarks.md; `bench-quick` runs every
# benchmark at small sizes in under a minute and checks only correctness.
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py --update-doc docs/benchmarks.md

bench-quick: $(VENV)/.installed
	$(BIN)/python bench/run.py --quick

# The hostile-conditions soak (docs/reliability.md): 200 kill -9, 100 unplugs
# (bind mounts: run as root), faults and edits, invariants checked after every
# quiet period; about 20 minutes. CI runs its short form (tests/test_hostile.py).
soak: $(VENV)/.installed-test
	$(BIN)/python tests/soak.py --kills 200 --unplugs 100 --disk-full

clean:
	rm -rf $(VENV) .pytest_cache
