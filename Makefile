# Two commands do all the set-up on a fresh machine:
#   make serve   start the gateway on config/default.toml (bundled all-MiniLM-L6-v2, CPU, offline)
#   make test    run the test suite
# Both create .venv on first use (CPU torch wheel, pinned stack, dev tools).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config/default.toml

.PHONY: install serve test lint bench redis

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch pulls several GB of CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	HF_HUB_OFFLINE=1 $(PY) -m app serve --config $(CONFIG)

# Tests start their own redis-server on loopback; install it where it is missing.
redis:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null)

test: install redis
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy

bench: install
	$(PY) -m bench.run_all
