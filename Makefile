# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell for p in python3.12 python3.13 python3.14 python3; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    echo $$p; break; fi; done)
VENV := .venv
VPY := $(VENV)/bin/python

.PHONY: demo test check-python clean

check-python:
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: vzdask needs Python 3.12 or newer; none found on PATH (tried python3.12, python3.13, python3.14, python3)." >&2; \
	  echo "       Install Python 3.12 or run: make PYTHON=/path/to/python3.12 test" >&2; exit 1; fi

$(VPY): | check-python
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml $(VPY)
	$(VPY) -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VPY)
	$(VPY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.demo-installed

demo: check-python $(VENV)/.demo-installed
	$(VPY) -m vzdask.demo

test: check-python $(VENV)/.test-installed
	$(VPY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
