# ModelForge developer entry points. `make demo` and `make test` set everything up first
# (a .venv/ at the repo root) and are safe to run again: set-up reruns only when a
# pyproject.toml or a constraints file changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.modelforge-installed
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
EDITABLES := -e ".[train,dev]" $(foreach p,$(PLUGINS),-e $(dir $(p)))
NODE_STAMP := schema/node_modules/.modelforge-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml $(PLUGINS) constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: any other route pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q "setuptools>=68" wheel
	$(PIP) install -q -c constraints/cpu.txt --no-build-isolation $(EDITABLES)
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

$(NODE_STAMP): schema/package.json schema/package-lock.json
	cd schema && npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(VENV)/bin/modelforge demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check modelforge_core plugins tests bench
	$(PY) -m mypy

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) schema/node_modules
