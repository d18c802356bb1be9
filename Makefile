# Every developer task is one `make` target; `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install outbox with its test tools

demo: $(STAMP) ## run the demo (embedded Postgres unless OUTBOX_DSN is set)
	$(VENV)/bin/outbox demo

test: $(STAMP) ## install what is needed and run the tests (OUTBOX_TEST_DSN, else Docker, else embedded)
	$(PY) -m pytest

lint: $(STAMP) ## ruff, mypy --strict and the layering contracts (import-linter)
	$(VENV)/bin/ruff check outbox tests benchmarks examples
	$(VENV)/bin/ruff format --check outbox
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

docs: $(STAMP) ## serve the documentation site at http://127.0.0.1:8000 (mkdocs)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

docs-build: $(STAMP) ## build the documentation site into build/site, failing on any warning
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

bench: $(STAMP) ## the benchmarks against the peers (see benchmarks/README.md)
	$(PY) benchmarks/run.py

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist

.PHONY: help install demo test lint docs docs-build bench clean
