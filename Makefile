# Two set-up commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint clean system-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,spatial,transformers,dask]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tabst demo --out reports/demo --force

# Headless Chromium (Debian package `chromium`) renders the HTML reports in two report tests.
# Free when it is on PATH; else apt-get installs it as root or through password-less `sudo -n`;
# if neither works, a warning (those two tests then fail with their own clear message).
system-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "warning: chromium is missing and there is no apt-get: install Chromium for the" \
	         "report-rendering tests" >&2; \
	  elif [ "$$(id -u)" = 0 ]; then SUDO=""; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else \
	    echo "warning: chromium is missing and installing it needs root: run" \
	         "'sudo apt-get install chromium' (the report-rendering tests need it)" >&2; \
	    SUDO=no; \
	  fi; \
	  if [ "$${SUDO-no}" != no ]; then \
	    echo "installing chromium (apt-get) for the report-rendering tests ..." >&2; \
	    log=$$(mktemp); \
	    { $$SUDO apt-get update -qq && \
	      $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$$log" 2>&1 \
	    || { tail -n 5 "$$log" >&2; echo "warning: apt-get could not install chromium (the" \
	         "report-rendering tests need it)" >&2; }; \
	    rm -f "$$log"; \
	  fi; }

test: $(STAMP) system-deps
	$(BIN)/ruff check tabst cli tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check tabst cli tests benchmarks

clean:
	rm -rf reports/demo .pytest_cache
