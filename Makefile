# Two commands do all the set-up on a fresh machine:
#   make serve   start the gateway on config/default.toml (bundled all-MiniLM-L6-v2, CPU, offline)
#   make test    run the test suite
# Both create .venv on first use (CPU torch wheel, pinned stack, dev tools).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config/default.toml

.PHONY: install serve test lint bench redis services deploy-check

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

# Tests start their own redis-server and HAProxy on loopback; install them where missing.
services:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || missing="$$missing haproxy"; \
	test -z "$$missing" || (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null)

redis: services

test: install services
	$(PY) -m pytest

# deploy/: the Kubernetes manifests against the Kubernetes schemas that kubernetes-validate
# ships (offline; the ServiceMonitor is a CRD it has no schema for), then checkov over
# deploy/ and the Dockerfile. Own venv: checkov pins versions the gateway does not share.
DEPLOY_VENV ?= .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
MANIFESTS := $(wildcard deploy/kubernetes/*.yaml deploy/kubernetes/*/*.yaml)

$(DEPLOY_STAMP):
	test -x $(DEPLOY_VENV)/bin/python || python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q kubernetes-validate==1.37.0 checkov==3.3.30
	touch $(DEPLOY_STAMP)

deploy-check: $(DEPLOY_STAMP)
	$(DEPLOY_VENV)/bin/kubernetes-validate --strict --quiet -k 1.30.0 $(MANIFESTS)
	$(DEPLOY_VENV)/bin/kubernetes-validate --strict --quiet -k 1.37.0 $(MANIFESTS)
	$(DEPLOY_VENV)/bin/checkov --quiet --compact --skip-download --framework kubernetes -d deploy
	$(DEPLOY_VENV)/bin/checkov --quiet --compact --skip-download --framework dockerfile -f Dockerfile

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy

bench: install
	$(PY) -m bench.run_all
