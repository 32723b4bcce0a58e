# Set-up and everyday commands. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/engine run --config routes.yaml

test: $(STAMP)
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check engine tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/engine bench

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache
