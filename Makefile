# Two commands on a fresh machine: `make up` (set up + run the workbench) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-ls
BIN := $(VENV)/bin

.PHONY: install lock up test lint shell-scripts clean

# Every tracked shell script, found anew on each run so that a new one is checked too: *.sh, .ci/run, and any file
# whose first line is a sh or bash shebang.
list_shell_scripts = git ls-files | while IFS= read -r f; do \
	[ -f "$$f" ] || continue; \
	case "$$f" in *.sh|.ci/run) echo "$$f"; continue;; esac; \
	if head -n 1 "$$f" | grep -qE '^\#!.*[/ ](ba|da)?sh( |$$)'; then echo "$$f"; fi; \
	done

install: $(VENV)/.installed $(LS_VENV)/.installed

# Exactly what requirements.lock pins, every file checked against its sha256 (`make lock` refreshes the lock from
# pyproject.toml). torch first, alone: its pin is the local CPU wheel's hash, so a machine without that file stops
# there instead of pulling GBs of CUDA packages. Then the project itself, with nothing more (its build uses the
# locked setuptools), and `pip check`, which fails if pyproject.toml asks for a package the lock does not hold.
LOCK := requirements.lock
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	awk '/^torch==/ {on = 1} on {print} on && !/\\$$/ {exit}' $(LOCK) > $(VENV)/torch.lock
	$(BIN)/pip install -q --require-hashes --no-deps -r $(VENV)/torch.lock
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

# Label Studio pins many packages, so it lives in its own environment, installed from its own lock: `make lock`
# resolves label-studio==1.23.2 under scripts/label-studio-constraints.txt, which holds back what its pins leave open
# and a newer release broke (a change to the lock reinstalls).
LS_LOCK := scripts/label-studio.lock
$(LS_VENV)/.installed: $(LS_LOCK)
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q --require-hashes -r $(LS_LOCK)
	touch $@

# Resolve both lock files anew (latest releases that pyproject.toml and the constraints allow); review the diff.
lock:
	PYTHON=$(PYTHON) bash scripts/lock.sh

up: install
	$(BIN)/workbench up

test: install
	bash scripts/install-system-packages.sh
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	@command -v shellcheck >/dev/null || { echo "make lint: shellcheck is missing; run bash scripts/install-system-packages.sh" >&2; exit 1; }
	@files="$$($(list_shell_scripts))"; \
	[ -n "$$files" ] || { echo "make lint: no shell scripts found (is this a git checkout?)" >&2; exit 1; }; \
	echo "shellcheck" $$files; \
	printf '%s\n' "$$files" | xargs -d '\n' shellcheck

shell-scripts:
	@$(list_shell_scripts)

clean:
	rm -rf $(VENV) $(LS_VENV) .venv-lock
