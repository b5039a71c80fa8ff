# One target per habit. Every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
WEB    := clients/web
TOOLS  := tools
BUF    := $(TOOLS)/node_modules/.bin/buf
# the browser the end-to-end tests drive (Debian's package; never `playwright install`)
CHROMIUM := /usr/bin/chromium

.PHONY: help install proto run cluster test test-py lint lint-proto breaking bench clean web test-web tools chromium soak

help:
	@echo "make run    set up and start the whole system (agent service + edge + web UI)"
	@echo "make cluster  2 agent replicas + 2 edges on local Redis and PostgreSQL (started if needed)"
	@echo "make test   set up and run every test suite"
	@echo "make web    build the web UI (npm ci + vite) when its sources changed"
	@echo "make proto  regenerate gen/python, clients/web/src/gen and the code tables from proto/"
	@echo "make lint   ruff + mypy --strict + buf lint"
	@echo "make breaking  buf breaking: proto/ against main (or the commit before)"
	@echo "make bench  agent-relay beside its peers, and the durable log's cost (BENCH_ARGS=--full: full sizes)"
	@echo "make soak   the long versions of the fuzzing, conformance and abuse tests (-m soak)"

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

# buf (npm @bufbuild/buf, pinned in tools/package-lock.json)
TOOLS_DEPS := $(TOOLS)/node_modules/.ci-stamp

$(TOOLS_DEPS): $(TOOLS)/package.json $(TOOLS)/package-lock.json
	cd $(TOOLS) && npm ci --no-audit --no-fund
	touch $@

tools: $(TOOLS_DEPS)

# Chromium for the browser tests: installed where this user can (root with apt),
# otherwise make stops here with the command to run, before anything else.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make: $(CHROMIUM) is missing; installing Debian's chromium package"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq chromium; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "make: the browser tests need Chromium at $(CHROMIUM). Install it, then run make again:" >&2; \
		echo "    sudo apt-get update && sudo apt-get install -y chromium" >&2; \
		exit 1; \
	else \
		echo "make: the browser tests need Chromium at $(CHROMIUM), and this machine has no apt-get." >&2; \
		echo "    Install Chromium with this system's package manager so that $(CHROMIUM) exists" >&2; \
		echo "    (Debian/Ubuntu: sudo apt-get install -y chromium), then run make again." >&2; \
		exit 1; \
	fi
	@test -x $(CHROMIUM) || { echo "make: $(CHROMIUM) is still missing after the install" >&2; exit 1; }

chromium: $(CHROMIUM)

test-web: $(WEB_DEPS)
	cd $(WEB) && npx vitest run

proto: $(STAMP) $(TOOLS_DEPS) $(WEB_DEPS)
	$(BIN)/python proto/generate.py
	$(BIN)/python proto/generate_codes.py
	$(BUF) generate --template proto/buf.gen.web.yaml

run: $(STAMP) $(WEB_BUILD)
	$(BIN)/agent-relay run

# CLUSTER_ARGS: flags of `agent-relay cluster --help` (ports, Redis and PostgreSQL URLs)
CLUSTER_ARGS ?=
cluster: $(STAMP) $(WEB_BUILD)
	$(BIN)/agent-relay cluster $(CLUSTER_ARGS)

# Chromium first: a machine without it stops at once, not after the installs.
test: $(CHROMIUM) $(STAMP) $(WEB_BUILD) test-web lint-proto breaking
	$(BIN)/python -m pytest -q -p no:cacheprovider

# buf lint (STANDARD + COMMENTS, exceptions in proto/buf.yaml)
lint-proto: $(TOOLS_DEPS)
	$(BUF) lint proto

breaking: $(STAMP) $(TOOLS_DEPS)
	BUF=$(BUF) $(BIN)/python proto/breaking.py

lint: $(STAMP) $(WEB_DEPS) lint-proto
	$(BUF) format --diff --exit-code proto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy agent_service ws_edge relay_shared clients/python/agent_relay_client
	cd $(WEB) && npm run typecheck

# The tests marked `soak`, long: more fuzz examples, every Autobahn case, 10,000 idle
# sockets, 2,000 slowloris connections, a 300 s chaos run of 30 users. `make test` runs
# the same tests bounded.
SOAK_ENV := AGENT_RELAY_SOAK=1 AGENT_RELAY_FUZZ_EXAMPLES=3000 AGENT_RELAY_IDLE_SOCKETS=10000 \
            AGENT_RELAY_SLOW_CONNECTIONS=2000 AGENT_RELAY_CHAOS_SECONDS=300 AGENT_RELAY_CHAOS_USERS=30

soak: $(STAMP)
	$(SOAK_ENV) $(BIN)/python -m pytest -q -s -p no:cacheprovider -m soak -o timeout=7200

# agent-relay beside raw aiohttp, raw grpc.aio and python-socketio, one table, under
# 10 minutes (docs/performance.md). BENCH_ARGS=--full for the issue's full sizes. The
# older per-part benches stay runnable one by one: bench/service_bench.py, edge_bench.py,
# telemetry_bench.py --e2e, client_bench.py, auth_bench.py.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python bench/peers_bench.py $(BENCH_ARGS)
	$(BIN)/python bench/service_bench.py --paced "" --runs 20 --sessions 200

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(TOOLS)/node_modules
