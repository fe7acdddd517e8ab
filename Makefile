# The two entry points of README.md: `make demo` (the main job) and `make test` (the suite).
# Each sets up its own virtual environment with the exact pins of requirements.lock first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.m4-installed
WORKDIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/m4 demo --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
