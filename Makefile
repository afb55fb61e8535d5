# The two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.aiozc-installed
TORCH_WHEELS ?= /opt/wheels

.PHONY: demo test vm-test install os-deps bench clean core

# iproute2 builds the network-namespace sink rig the tests and benchmarks use; wrk drives the
# `bench aiohttp` wrk cases. Installed only when missing and only when we are root (CI and
# sessions here are).
os-deps:
	@if ! command -v ip >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq iproute2; \
	fi
	@if ! command -v wrk >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -qq wrk || (apt-get update -qq && apt-get install -y -qq wrk) || true; \
	fi

$(STAMP): pyproject.toml setup.py $(wildcard aiozc/_sys/_core_*.c) aiozc/_sys/_core_build.py aiozc/_sys/_core_sources.py $(wildcard aiozc/_sys/_core_*.h)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# Optional peers for the tensor tests and benchmark (they skip, with a reason, without them).
	# torch only from a local CPU wheel: from PyPI it would pull a multi-GB CUDA build.
	-$(PY) -m pip install -q pyzmq
	-if ls $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then \
		$(PY) -m pip install -q --find-links $(TORCH_WHEELS) 'torch==2.13.0'; fi
	touch $(STAMP)

install: os-deps $(STAMP)

demo: install
	$(PY) -m aiozc demo

# The tests of what has a compiled and a pure-Python implementation: run once more on the
# pure path (AIOZC_NO_EXTENSIONS=1), after the whole suite ran with the compiled core.
CORE_TESTS := tests/test_completions.py tests/test_datagram.py tests/test_datagram_batch.py \
	tests/test_udp_sink.py tests/test_transport.py tests/test_uring.py tests/test_engine_uring.py \
	tests/test_uring_groups.py tests/test_uring_io_diff.py tests/test_streamread_core.py \
	tests/test_udp_uring_hotcall.py tests/test_coalescer.py tests/test_transport_cmethods.py tests/test_transport_hotpath.py tests/test_writelines_gather.py \
	tests/test_compat_contract.py tests/test_transport_zcqueue.py tests/test_transport_zcqueue_enobufs.py \
	tests/test_transport_paced.py tests/test_transport_cdone.py tests/test_errqueue_batch.py

test: install
	$(PY) -m pytest
	AIOZC_NO_EXTENSIONS=1 $(PY) -m pytest -q $(CORE_TESTS)

# In-place build of the compiled core (the editable install does it too): for worktrees
# that import aiozc through PYTHONPATH.
core:
	$(PY) aiozc/_sys/_core_build.py

# The TCP zero-copy success path, inside a QEMU guest (tools/vm): downloads QEMU, a Debian
# kernel and busybox into /var/cache/aiozc-vm on first use; prints SKIPPED with the reason and
# succeeds where it cannot run (not root, no /dev/net/tun, no apt, archive unreachable).
vm-test: install
	$(PY) -m aiozc.tools.vm test

bench: install
	$(PY) -m aiozc bench tcp

clean:
	rm -rf $(VENV) build *.egg-info
