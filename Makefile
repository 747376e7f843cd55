# Two commands on a fresh machine: `make demo` and `make test`.
# They need Python 3.12+ on PATH, or `make PYTHON=/path/to/python3.12 ...`.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in python3.12 python3.13 python3.14 python3; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    echo $$p; break; fi; done)
endif
VENV := .venv
# `make test-min`: the suite at the lowest versions pyproject.toml allows (constraints/min.txt), in its own venv
VENV_MIN := .venv-min
VPY_MIN := $(VENV_MIN)/bin/python
# The goal named in error hints (the sub-make below would otherwise say check-python).
GOAL ?= $(or $(MAKECMDGOALS),demo)
VPY := $(VENV)/bin/python

.PHONY: demo test test-min check-python clean

# Checked before the virtual environment is created (not on every run).
check-python:
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: vzdask needs Python 3.12 or newer; none found on PATH (tried python3.12, python3.13, python3.14, python3)." >&2; \
	  echo "       Install Python 3.12+ or run: make PYTHON=/path/to/python3.12 $(GOAL)" >&2; exit 1; fi
	@if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then \
	  found=$$($(PYTHON) --version 2>&1) || found="not runnable"; \
	  echo "error: vzdask needs Python 3.12 or newer, but PYTHON=$(PYTHON) is: $$found" >&2; \
	  echo "       Run: make PYTHON=/path/to/python3.12 $(GOAL)" >&2; exit 1; fi
	@if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
	  echo "error: $(PYTHON) cannot create virtual environments (its venv/ensurepip modules are missing)." >&2; \
	  echo "       On Debian/Ubuntu: apt-get install python3-venv (or python3.12-venv)." >&2; exit 1; fi

$(VPY):
	@$(MAKE) --no-print-directory check-python GOAL='$(GOAL)'
	$(PYTHON) -m venv --clear $(VENV)
	$(VPY) -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml $(VPY)
	$(VPY) -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VPY)
	$(VPY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(VPY) -m vzdask.demo

test: $(VENV)/.test-installed
	$(VPY) -m pytest -q

$(VPY_MIN):
	@$(MAKE) --no-print-directory check-python GOAL='$(GOAL)'
	$(PYTHON) -m venv --clear $(VENV_MIN)
	$(VPY_MIN) -m pip install -q --upgrade pip

$(VENV_MIN)/.test-installed: pyproject.toml constraints/min.txt $(VPY_MIN)
	$(VPY_MIN) -m pip install -q -e '.[test]' -c constraints/min.txt
	touch $@

# The whole suite but test_mypy: type checking depends on the libraries' stubs, so `make test` runs it
# at the newest versions (see pyproject.toml).
test-min: $(VENV_MIN)/.test-installed
	$(VPY_MIN) -m pytest -q --deselect tests/test_lint.py::test_mypy

clean:
	rm -rf $(VENV) $(VENV_MIN) .pytest_cache
