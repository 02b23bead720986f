# APG Service Mesh -- the two commands of the Quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck install clean bench proto

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m integration.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Regenerate the admin API's Python code from proto/ (tests/test_admin_proto.py checks it).
proto: $(STAMP)
	$(BIN)/buf lint
	$(BIN)/python proto/generate.py

bench: $(STAMP)
	$(BIN)/python -m integration.bench_propagation

clean:
	rm -rf $(VENV) .meshd .pytest_cache .mypy_cache .ruff_cache
