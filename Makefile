# Two commands set everything up on a fresh Debian machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test bench setup system-deps clean keys

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || PYTHON=python3; test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

system-deps:
	@missing=""; command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    echo "Installing$$missing with apt-get"; \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  fi

setup: system-deps $(STAMP)
	@mkdir -p var

run: setup
	$(PY) -m scripts.run_platform

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(if $(QUICK),--quick,)

keys: setup
	$(PY) -m workers.security generate var/keys

clean:
	rm -rf var/test.sqlite3* bench-out
