# Two commands on a fresh machine: `make up` (set up + run the workbench) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-ls
BIN := $(VENV)/bin

.PHONY: install up test lint clean

install: $(VENV)/.installed $(LS_VENV)/.installed

# torch first, from the local CPU wheel: any other torch spec pulls GBs of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Label Studio pins many packages, so it lives in its own environment.
$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q label-studio==1.23.2
	touch $@

up: install
	$(BIN)/workbench up

test: install
	bash scripts/install-system-packages.sh
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(LS_VENV)
