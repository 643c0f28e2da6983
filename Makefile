# Two commands do everything on a fresh machine:
#   make run   - the whole pipeline end to end on the embedded default (Kafka + local Spark)
#   make test  - the test suite (starts its own broker on spare ports)
# Both create .venv, install the pinned packages and fetch jars on first use.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JARS_STAMP := .cache/jars/.ready

.PHONY: install jars run test test-fast lint typecheck bench up down clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

jars: $(JARS_STAMP)

$(JARS_STAMP): $(STAMP) conf/base.yaml conf/local.yaml pipelines/runtime/jars.py pipelines/runtime/jvm.py $(shell find pipelines/silver/jvm -name "*.java")
	$(PY) -m pipelines.runtime.prefetch
	@touch $(JARS_STAMP)

run: jars
	$(VENV)/bin/lakehouse demo

test: jars typecheck
	$(VENV)/bin/pytest -q

test-fast: jars
	$(VENV)/bin/pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

typecheck: install
	$(VENV)/bin/mypy

bench: jars
	$(PY) -m bench.run

up: jars
	$(VENV)/bin/lakehouse up

down: install
	$(VENV)/bin/lakehouse down

clean:
	rm -rf lakehouse .pytest_cache
