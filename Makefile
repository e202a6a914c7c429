# Two commands on a fresh machine: `make up` (set up + run the workbench) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-ls
BIN := $(VENV)/bin

.PHONY: install up test lint shell-scripts clean

# Every tracked shell script, found anew on each run so that a new one is checked too: *.sh, .ci/run, and any file
# whose first line is a sh or bash shebang.
list_shell_scripts = git ls-files | while IFS= read -r f; do \
	[ -f "$$f" ] || continue; \
	case "$$f" in *.sh|.ci/run) echo "$$f"; continue;; esac; \
	if head -n 1 "$$f" | grep -qE '^\#!.*[/ ](ba|da)?sh( |$$)'; then echo "$$f"; fi; \
	done

install: $(VENV)/.installed $(LS_VENV)/.installed

# torch first, from the local CPU wheel: any other torch spec pulls GBs of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Label Studio pins many packages, so it lives in its own environment; the constraints hold back what its pins leave
# open and a newer release broke (a change to them reinstalls).
LS_CONSTRAINTS := scripts/label-studio-constraints.txt
$(LS_VENV)/.installed: $(LS_CONSTRAINTS)
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q -c $(LS_CONSTRAINTS) label-studio==1.23.2
	touch $@

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
	rm -rf $(VENV) $(LS_VENV)
