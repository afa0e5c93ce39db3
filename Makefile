# Set-up is part of every target: each creates .venv when missing and installs the project (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spared-installed
export SPARED_REALDATA ?= $(abspath ../shared/realdata)

.PHONY: install browser demo test lint bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/spared demo --out demo_output

# Headless Chromium for the report's browser test: Debian's package when absent (as root); else the test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the browser test will be skipped"; \
	  else echo "chromium absent and not root: the browser test will be skipped"; fi; }

test: install browser
	$(PY) -m pytest -q
	$(MAKE) docs

# The docs site (MkDocs + mkdocstrings, offline) into site/, strict: a broken link or reference fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf demo_output site .pytest_cache .ruff_cache
