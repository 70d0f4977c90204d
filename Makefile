# ModelForge developer entry points. `make demo` and `make test` set everything up first
# (a .venv/ at the repo root) and are safe to run again: set-up reruns only when a
# pyproject.toml or a constraints file changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.modelforge-installed
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
EDITABLES := -e ".[train,dev,serve]" $(foreach p,$(PLUGINS),-e $(dir $(p)))
NODE_STAMP := schema/node_modules/.modelforge-installed

# The second environment for the unsloth provider (docs/unsloth.md): unsloth's versions of
# transformers/trl/datasets, the same core and plugins.
UNSLOTH_VENV := .venv-unsloth
UNSLOTH_PY := $(UNSLOTH_VENV)/bin/python
UNSLOTH_PIP := $(UNSLOTH_PY) -m pip --disable-pip-version-check
UNSLOTH_STAMP := $(UNSLOTH_VENV)/.modelforge-installed
# Training extras only, plus pytest for its tests: serve and the dev tools stay in .venv.
# The logger plugins stay out: mlflow's and wandb's pins do not resolve beside unsloth's caps,
# and the unsloth tests never log to a tracker.
UNSLOTH_PLUGINS := $(filter-out plugins/logger-%,$(PLUGINS))
UNSLOTH_EDITABLES := -e ".[train]" $(foreach p,$(UNSLOTH_PLUGINS),-e $(dir $(p)))

.PHONY: setup browser demo test lint bench clean unsloth-env test-unsloth

setup: $(STAMP) $(NODE_STAMP)

# The browser test drives Debian's Chromium with Playwright (never `playwright install`,
# which downloads a browser build).
browser:
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver)

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

unsloth-env: $(UNSLOTH_STAMP)

$(UNSLOTH_STAMP): pyproject.toml $(PLUGINS) constraints/unsloth.txt
	test -x $(UNSLOTH_PY) || $(PYTHON) -m venv $(UNSLOTH_VENV)
	$(UNSLOTH_PIP) install -q torch==2.13.0
	$(UNSLOTH_PIP) install -q "setuptools>=68" wheel
	$(UNSLOTH_PIP) install -q -c constraints/unsloth.txt --no-build-isolation unsloth unsloth_zoo pytest $(UNSLOTH_EDITABLES)
	# unsloth pulls torchvision; its CUDA build cannot load beside the CPU torch, and unsloth
	# then refuses to import. Text training never needs it.
	$(UNSLOTH_PIP) uninstall -q -y torchvision
	$(UNSLOTH_PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(UNSLOTH_PY) -W ignore -c "import unsloth" >/dev/null
	touch $@

# unsloth patches transformers and TRL process-wide: its tests run in their own process there.
# They also reload the adapters with the main .venv, hence setup.
test-unsloth: setup unsloth-env
	$(UNSLOTH_PY) -m pytest -q -m unsloth plugins/provider-unsloth/tests

demo: setup
	$(VENV)/bin/modelforge demo

test: setup browser
	$(PY) -m pytest -q
	$(MAKE) test-unsloth

lint: setup
	$(PY) -m ruff check modelforge_core plugins tests bench
	$(PY) -m mypy

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) schema/node_modules
