# Two set-up commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,spatial]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tabst demo --out reports/demo --force

test: $(STAMP)
	$(BIN)/ruff check tabst cli tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check tabst cli tests benchmarks

clean:
	rm -rf reports/demo .pytest_cache
