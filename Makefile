# One target per habit. Every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WEB    := clients/web

.PHONY: help install proto run test test-py lint bench clean

help:
	@echo "make run    set up and start the whole system (agent service + edge + web UI)"
	@echo "make test   set up and run every test suite"
	@echo "make proto  regenerate gen/python from proto/"
	@echo "make lint   ruff + mypy --strict"
	@echo "make bench  the benchmarks in bench/"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

proto: $(STAMP)
	$(BIN)/python proto/generate.py

run: $(STAMP)
	$(BIN)/agent-relay run

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy agent_service ws_edge

bench: $(STAMP)
	$(BIN)/python bench/service_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
