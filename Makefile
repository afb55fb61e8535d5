# The two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.aiozc-installed

.PHONY: demo test install os-deps bench clean

# iproute2 builds the network-namespace sink rig the tests and benchmarks use.
# Installed only when missing and only when we are root (CI and sessions here are).
os-deps:
	@if ! command -v ip >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq iproute2; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: os-deps $(STAMP)

demo: install
	$(PY) -m aiozc demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m aiozc bench tcp

clean:
	rm -rf $(VENV) build *.egg-info
