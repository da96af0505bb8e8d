# Two commands do all the set-up on a fresh machine:
#   make serve   start the gateway on config/default.toml (bundled all-MiniLM-L6-v2, CPU, offline)
#   make test    run the test suite
# Both create .venv on first use (CPU torch wheel, pinned stack, dev tools).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config/default.toml

.PHONY: install serve test lint bench redis golden

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

# The golden fixtures: llm2vec 0.2.3's own encode() on tiny checkpoints, in a venv of its
# own (the reference stack is not the gateway's). Rewrites tests/reference/fixtures.
REF_VENV ?= .venv-reference
REF_PY := $(REF_VENV)/bin/python
REF_STAMP := $(REF_VENV)/.installed

$(REF_STAMP): tests/reference/requirements.txt
	test -x $(REF_PY) || python3 -m venv $(REF_VENV)
	$(REF_PY) -m pip install -q --upgrade pip
	$(REF_PY) -m pip install -q torch==2.13.0
	$(REF_PY) -m pip install -q -r tests/reference/requirements.txt
	touch $(REF_STAMP)

golden: $(REF_STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0 $(REF_PY) -m tests.reference.generate
