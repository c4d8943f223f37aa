# Atelier's front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
UV          := $(VENV)/bin/uv
ATELIER     := $(VENV)/bin/atelier
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.cfg constraints/main.txt
	@$(PYTHON_BOOT) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Atelier needs Python 3.11"' \
	  || { echo "error: python3 must be Python 3.11 (set PYTHON_BOOT=/path/to/python3.11)"; exit 1; }
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV) \
	  || { echo "error: cannot create a venv; on Debian: apt-get install python3-venv"; exit 1; }
	@test -x $(UV) || $(PY) -m pip install -q "uv==$$(grep -E '^uv==' constraints/main.txt | cut -d= -f3)"
	@# pip too: a new venv is seeded with the interpreter's bundled pip, older than the pinned one.
	$(UV) pip install --python $(PY) -q -c constraints/main.txt -e '.[platform,dev]' pip
	@# The Spark provider pulls pyspark-client, which shares files with pyspark: make pyspark's own files win.
	$(UV) pip install --python $(PY) -q --reinstall --no-deps "pyspark==$$(grep -E '^pyspark==' constraints/main.txt | cut -d= -f3)"
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## Create/refresh the platform venv (.venv) from constraints/main.txt

.PHONY: bootstrap
bootstrap: $(STAMP) ## Install everything missing: venv, serving venv (Debian python3 + Triton), Cassandra jars
	$(ATELIER) bootstrap

.PHONY: demo
demo: bootstrap ## Run the main job on embedded defaults (USECASE=<name>: another use case than the first)
	$(ATELIER) demo $(if $(USECASE),--usecase '$(USECASE)')

.PHONY: browser
browser: $(STAMP) ## Install the headless browser the console's UI tests drive (Debian's chromium)
	$(ATELIER) bootstrap --browser

.PHONY: test
test: bootstrap browser ## Run the whole test suite (starts real Cassandra, MLflow, Triton, Airflow, Spark, chromium)
	ATELIER_PROFILE=test $(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: $(STAMP) ## Fast tests only (no services)
	ATELIER_PROFILE=test $(VENV)/bin/pytest -m "not integration" $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff (with Airflow AIR rules)
	$(VENV)/bin/ruff check dags plugins pipelines serving tests benchmarks

.PHONY: up
up: bootstrap ## Start all local services (Cassandra, MLflow, Triton, Airflow)
	$(ATELIER) services up

.PHONY: down
down: $(STAMP) ## Stop the local services Atelier started
	$(ATELIER) services down

.PHONY: status
status: $(STAMP) ## Show the local services' state
	$(ATELIER) services status

.PHONY: lock
lock: ## Re-resolve and rewrite constraints/main.txt (after changing setup.cfg ranges)
	rm -rf /tmp/atelier-lock && $(PYTHON_BOOT) -m venv /tmp/atelier-lock && /tmp/atelier-lock/bin/pip install -q uv
	/tmp/atelier-lock/bin/uv pip install --python /tmp/atelier-lock/bin/python -q -U -e '.[platform,dev]' uv pip
	{ echo "# Exact versions tested together for the platform venv (.venv). Regenerate: make lock"; \
	  /tmp/atelier-lock/bin/uv pip freeze --python /tmp/atelier-lock/bin/python --exclude-editable; } > constraints/main.txt

.PHONY: clean
clean: ## Stop services and remove local state (.atelier), keeping the venvs and downloaded tools
	-$(ATELIER) services down
	find .atelier -mindepth 1 -maxdepth 1 ! -name tools -exec rm -rf {} +
