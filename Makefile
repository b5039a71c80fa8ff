# One target per habit. Every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WEB    := clients/web

.PHONY: help install proto run test test-py lint bench clean web test-web

help:
	@echo "make run    set up and start the whole system (agent service + edge + web UI)"
	@echo "make test   set up and run every test suite"
	@echo "make web    build the web UI (npm ci + vite) when its sources changed"
	@echo "make proto  regenerate gen/python from proto/"
	@echo "make lint   ruff + mypy --strict"
	@echo "make bench  agent-relay beside its peers, one table (BENCH_ARGS=--full: full sizes)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

# The web UI (clients/web): `npm ci` when the lock file changes, a Vite build
# when its sources change. The edge serves $(WEB)/dist at `/`.
WEB_SRC   := $(shell find $(WEB)/src -type f 2>/dev/null) $(wildcard $(WEB)/index.html $(WEB)/vite.config.ts $(WEB)/tsconfig*.json)
WEB_DEPS  := $(WEB)/node_modules/.ci-stamp
WEB_BUILD := $(WEB)/.build-stamp

$(WEB_DEPS): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund
	touch $@

$(WEB_BUILD): $(WEB_DEPS) $(WEB_SRC)
	cd $(WEB) && npm run build
	touch $@

web: $(WEB_BUILD)

test-web: $(WEB_DEPS)
	cd $(WEB) && npx vitest run

proto: $(STAMP)
	$(BIN)/python proto/generate.py

run: $(STAMP) $(WEB_BUILD)
	$(BIN)/agent-relay run

test: $(STAMP) $(WEB_BUILD) test-web
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP) $(WEB_DEPS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy agent_service ws_edge clients/python/agent_relay_client
	cd $(WEB) && npm run typecheck

# agent-relay beside raw aiohttp, raw grpc.aio and python-socketio, one table, under
# 10 minutes (docs/performance.md). BENCH_ARGS=--full for the issue's full sizes. The
# older per-part benches stay runnable one by one: bench/service_bench.py, edge_bench.py,
# telemetry_bench.py --e2e, client_bench.py, auth_bench.py.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python bench/peers_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
