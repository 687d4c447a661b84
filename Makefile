# PHS Sync — the two commands of the README, and a few more.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The suite waits on subprocesses, sockets and fsyncs as much as it computes:
# two pytest workers (pytest-xdist) cut its time on a 2-core machine (README).
TEST_WORKERS ?= 2

.PHONY: demo test lint bench install clean

## demo: install into .venv, then run a gateway, an edge node and simulated tablets on SQLite (progress, summary, status page URL)
demo: $(STAMP)
	$(BIN)/python -m edgenode.demo

## test: lint, type-check and run the whole test suite (TEST_WORKERS processes at once)
test: $(STAMP) lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

## bench: gateway ingest vs raw SQLite (prints both and their ratio)
bench: $(STAMP)
	$(BIN)/python bench/gateway_ingest.py

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "PHS Sync needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
