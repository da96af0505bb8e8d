# Two commands do all the set-up on a fresh machine:
#   make serve   start the gateway on config/default.toml (bundled all-MiniLM-L6-v2, CPU, offline)
#   make test    run the test suite
# Both create .venv on first use (CPU torch wheel, pinned stack, dev tools).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config/default.toml

.PHONY: install serve test lint bench redis golden golden-gen

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
# LLM2Vec-Gen golden fixtures: the reference package (llm2vec-gen 0.1.3 on its own
# transformers 4.56.2 / peft 0.18.0, in its own venv) writes tests/reference/llm2vec_gen/fixtures.
GEN_VENV := .venv-reference-gen
GEN_REQ := tests/reference/llm2vec_gen/requirements.txt

$(GEN_VENV)/.installed: $(GEN_REQ)
	test -x $(GEN_VENV)/bin/python || python3 -m venv $(GEN_VENV)
	$(GEN_VENV)/bin/python -m pip install -q --upgrade pip
	$(GEN_VENV)/bin/python -m pip install -q -r $(GEN_REQ)
	# Without its pins (torch 2.6, flash-attn) and training stack (hydra, wandb, mteb).
	$(GEN_VENV)/bin/python -m pip install -q --no-deps llm2vec-gen==0.1.3
	touch $@

golden-gen: $(GEN_VENV)/.installed
	# PYTHONHASHSEED: peft writes target_modules from a set; a fixed seed keeps files stable.
	HF_HUB_OFFLINE=1 PYTHONHASHSEED=0 $(GEN_VENV)/bin/python tests/reference/llm2vec_gen/generate.py
