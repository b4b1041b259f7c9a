# digitflow: every target bootstraps what it needs, so on a fresh clone `make run` / `make test` just work.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= 2  # pytest-xdist processes for make test; 0 runs the suite in this process

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: help setup run lint test test-fast docs ui serve stop team team-stop team-user bench bench-run bench-inference cpp lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install the project with pinned versions (idempotent)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

run: setup ## run the pipeline (pass options with ARGS="--epochs 3 ...")
	$(BIN)/digitflow run $(ARGS)

lint: setup ## ruff (lint + format check), mypy (strict on src/digitflow, basic elsewhere), mkdocs build --strict
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy || status=1; \
	$(BIN)/mkdocs build --strict --quiet || status=1; \
	exit $$status

test: setup ## the whole test suite, real-data runs included (skipped without ../shared/data), on TEST_WORKERS processes
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(if $(filter-out 0,$(TEST_WORKERS)),--dist loadscope --no-loadscope-reorder) $(PYTEST_ARGS)

test-fast: setup ## unit, task and flow tests on tiny data only
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

docs: setup ## build the docs site into site/ (mkdocs build --strict)
	$(BIN)/mkdocs build --strict

ui: setup ## MLflow UI on the store runs log to (MLFLOW_TRACKING_URI, else mlflow/mlflow.db), http://127.0.0.1:5000
	PATH=$(CURDIR)/$(BIN):$$PATH mlflow/ui.sh

serve: setup ## Prefect server :4200, MLflow server :5000, work pool, deployments, worker (scripts/serve.py)
	$(BIN)/python scripts/serve.py start

stop: ## end the processes make serve started (by pid file)
	@if test -x $(BIN)/python; then $(BIN)/python scripts/serve.py stop; else echo "serve: nothing was running"; fi

team: setup ## the team setup: PostgreSQL, S3 (moto), MLflow and Prefect with auth, 2 workers (scripts/team.py)
	$(BIN)/python scripts/team.py start

team-stop: ## end every process make team started (PostgreSQL's data stays in .team/)
	@if test -x $(BIN)/python; then $(BIN)/python scripts/team.py stop; else echo "team: nothing was running"; fi

team-user: setup ## a MLflow user of the team setup and their credentials file (NAME=alice)
	$(BIN)/python scripts/team.py user "$(NAME)"

bench: setup ## seed-notes loop vs. this engine, images per second (ARGS="--data-dir DIR")
	$(BIN)/python scripts/bench.py $(ARGS)

bench-run: setup ## where a whole run's time goes, 8k and 60k protocols, cold and warm (ARGS="--data-dir DIR")
	$(BIN)/python scripts/bench_run.py $(ARGS)

cpp: setup ## build the C++ consumer against the venv's libtorch: build/cpp/digitflow-classify (docs/cpp.md)
	$(BIN)/python scripts/build_cpp.py $(ARGS)

bench-inference: setup ## latency and throughput of eager, TorchScript, torch.export, AOTInductor; Python and C++
	$(BIN)/python scripts/bench_inference.py $(ARGS)

lock: setup ## regenerate constraints.txt from the current environment
	@{ sed -n '1,/^# .make lock/p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

clean: ## remove caches and outputs (keeps .venv, data/ and the MLflow store)
	rm -rf .cache outputs site .pytest_cache .mypy_cache .ruff_cache
