# The two commands a newcomer needs:
#   make serve   set everything up and run the service on the built-in model
#   make test    set everything up and run ruff, mypy and the whole test suite with coverage
# Every install reads constraints.txt, the one place torch is pinned.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --constraint constraints.txt
HOST ?= 127.0.0.1
PORT ?= 8765

.PHONY: serve test lint typecheck pytest clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) --editable '.[test]'
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/stepwatch serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The service layer of server/ (not the engine and models, which torch's typing limits) is
# checked strictly too; the modules it imports are read, not reported.
SERVICE_MODULES := app bridge catalog cli config eventlog gate http outbox runs serving \
	session store translate

# mypy cannot follow setuptools' package-dir mapping, so it reads the packages through a tree of
# links that spells their import names (stepwatch/protocol -> protocol/, ...).
typecheck: $(VENV)/.installed
	mkdir -p .typing/stepwatch
	for pkg in protocol client server; do ln -sfn ../../$$pkg .typing/stepwatch/$$pkg; done
	MYPYPATH=.typing $(VENV)/bin/mypy -p stepwatch.protocol -p stepwatch.client
	MYPYPATH=.typing $(VENV)/bin/mypy --follow-imports=silent \
		$(foreach module,$(SERVICE_MODULES),-m stepwatch.server.$(module))

pytest: $(VENV)/.installed
	$(VENV)/bin/coverage erase
	$(VENV)/bin/coverage run -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/coverage report --include='protocol/*' --fail-under=100
	$(VENV)/bin/coverage report

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .coverage .mypy_cache .pytest_cache .ruff_cache build *.egg-info
