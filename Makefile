# The two commands a newcomer needs:
#   make serve   set everything up and run the service on the built-in model
#   make test    set everything up and run ruff, mypy and the whole test suite with coverage
# Every install reads constraints.txt, the one place torch is pinned. The browser dashboard is
# built with npm from client/dashboard/package-lock.json before the Python install, which ships
# it as package data.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --constraint constraints.txt
HOST ?= 127.0.0.1
PORT ?= 8765
DASHBOARD := client/dashboard
DASHBOARD_SOURCES := $(wildcard $(DASHBOARD)/src/*) $(DASHBOARD)/build.mjs
CHROMIUM := /usr/bin/chromium
# Root (as in CI containers) may install the system packages the build and the browser tests need.
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

.PHONY: serve test lint typecheck pytest clean dashboard npm chromium comfyui-dir

# The ComfyUI tests (tests/comfyui) start a real ComfyUI from a snapshot: $$COMFYUI_DIR, else
# ../shared/comfyui beside the repository (where CI lays shared/). ComfyUI imports torchvision,
# whose wheels need the package index's own torch build, not the CPU build constraints.txt pins,
# so ComfyUI runs in its own environment, built once and reused: the index's torch with
# torchvision (run on the CPU), ComfyUI's requirements, stepwatch installed editable, and coverage
# (the tests measure the nodes inside ComfyUI's process too).
COMFYUI_DIR ?= $(abspath ../shared/comfyui)
COMFYUI_VENV ?= .venv-comfyui
COMFYUI_TORCH := torch==2.14.1 torchvision==0.29.1
export COMFYUI_DIR
export STEPWATCH_COMFYUI_PYTHON := $(abspath $(COMFYUI_VENV))/bin/python

# The dashboard is built before the Python install (order-only, so that a rebuilt dashboard does
# not reinstall the venv; `serve` and `pytest` rebuild it when its sources change).
$(VENV)/.installed: pyproject.toml constraints.txt | $(DASHBOARD)/dist/index.html
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) --editable '.[test]'
	touch $@

comfyui-dir:
	@[ -f "$(COMFYUI_DIR)/main.py" ] || { echo "make: no ComfyUI at $(COMFYUI_DIR): set COMFYUI_DIR \
		to a ComfyUI checkout (the tests use Comfy-Org/ComfyUI a125cd8)"; exit 1; }

$(COMFYUI_VENV)/.installed: pyproject.toml | comfyui-dir
	$(PYTHON) -m venv $(COMFYUI_VENV)
	printf '%s\n' $(COMFYUI_TORCH) > $(COMFYUI_VENV)/constraints.txt
	$(COMFYUI_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COMFYUI_VENV)/bin/python -m pip install --quiet $(COMFYUI_TORCH)
	grep -v -E '^(torch|torchvision|torchaudio)$$' "$(COMFYUI_DIR)/requirements.txt" \
		> $(COMFYUI_VENV)/comfyui-requirements.txt
	$(COMFYUI_VENV)/bin/python -m pip install --quiet --constraint $(COMFYUI_VENV)/constraints.txt \
		--requirement $(COMFYUI_VENV)/comfyui-requirements.txt
	$(COMFYUI_VENV)/bin/python -m pip install --quiet --constraint $(COMFYUI_VENV)/constraints.txt \
		--editable . 'coverage[toml]>=7.5'
	touch $@

npm:
	@command -v npm >/dev/null || [ "$$(id -u)" != 0 ] || $(APT_INSTALL) nodejs npm \
		|| { apt-get update && $(APT_INSTALL) nodejs npm; }
	@command -v npm >/dev/null || { echo "make: the dashboard needs Node.js 18+ and npm"; exit 1; }

# The dashboard's npm packages, exactly as the lockfile pins them.
$(DASHBOARD)/node_modules/.package-lock.json: $(DASHBOARD)/package.json $(DASHBOARD)/package-lock.json | npm
	cd $(DASHBOARD) && npm ci --no-audit --no-fund
	touch $@

$(DASHBOARD)/dist/index.html: $(DASHBOARD)/node_modules/.package-lock.json $(DASHBOARD_SOURCES)
	cd $(DASHBOARD) && npm run build

dashboard: $(DASHBOARD)/dist/index.html

# The browser tests drive Debian's Chromium (never a browser Playwright downloads).
chromium:
	@[ -x $(CHROMIUM) ] || [ "$$(id -u)" != 0 ] || $(APT_INSTALL) chromium \
		|| { apt-get update && $(APT_INSTALL) chromium; }
	@[ -x $(CHROMIUM) ] || { echo "make: $(CHROMIUM) is missing: install Debian's chromium"; exit 1; }

serve: $(VENV)/.installed dashboard
	$(VENV)/bin/stepwatch serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed $(DASHBOARD)/node_modules/.package-lock.json
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd $(DASHBOARD) && npm run --silent check

# The service layer of server/, the engine's run path (its parameters, events, control, policy,
# model and monitor) and the ComfyUI modules that do not import ComfyUI are checked strictly too;
# the modules they import (the rest of the engine and the models, which torch's typing limits)
# are read, not reported.
SERVICE_MODULES := app bridge catalog cli config connections devicequeue eventlog execution gate \
	harness http liverun outbox runs serving steering watching session wireframes store store.archive \
	store.database store.history store.previews store.recording comfyui.adapter comfyui.candidates comfyui.chart \
	comfyui.install engine.control engine.events engine.model engine.monitor engine.params \
	engine.pipeline_call engine.policy engine.checking engine.lanes engine.batch engine.candidates engine.search engine.steptimer engine.strategies
# Input images: the upload checks, their table, and what a pipeline takes.
SERVICE_MODULES += uploads store.uploads engine.inputs
# Pipelines whose loop the engine drives itself: DDPM/DDIM, Kandinsky 2.2.
SERVICE_MODULES += engine.driven_loop engine.kandinsky

# mypy cannot follow setuptools' package-dir mapping, so it reads the packages through a tree of
# links that spells their import names (stepwatch/protocol -> protocol/, ...).
typecheck: $(VENV)/.installed
	mkdir -p .typing/stepwatch
	for pkg in protocol client server; do ln -sfn ../../$$pkg .typing/stepwatch/$$pkg; done
	MYPYPATH=.typing $(VENV)/bin/mypy -p stepwatch.protocol -p stepwatch.client
	MYPYPATH=.typing $(VENV)/bin/mypy --follow-imports=silent \
		$(foreach module,$(SERVICE_MODULES),-m stepwatch.server.$(module))

pytest: $(VENV)/.installed $(COMFYUI_VENV)/.installed dashboard chromium
	$(VENV)/bin/coverage erase
	$(VENV)/bin/coverage run -m pytest $(PYTEST_ARGS)
	if ls .coverage.* >/dev/null 2>&1; then $(VENV)/bin/coverage combine --append --quiet; fi
	$(VENV)/bin/coverage report --include='protocol/*' --fail-under=100
	$(VENV)/bin/coverage report

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(COMFYUI_VENV) .coverage .mypy_cache .pytest_cache .ruff_cache build *.egg-info
	rm -rf $(DASHBOARD)/node_modules $(DASHBOARD)/dist
