# Two commands set everything up on a fresh Debian machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export REDIS_URL ?= redis://127.0.0.1:6379/0

# The suites that touch the database run a second time on a throwaway PostgreSQL cluster.
POSTGRES_TESTS ?= tests/test_api.py tests/test_groupcommit.py tests/test_recovery.py tests/test_admin.py \
  tests/test_admin_stack.py tests/test_dispatcher_loop.py tests/test_multi_dispatcher.py \
  tests/test_postgres_concurrency.py tests/test_final_states.py
N_HOSTS ?= 3

.PHONY: run test test-sqlite test-postgres bench setup system-deps clean keys cluster

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || PYTHON=python3; test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .  # `.venv/bin/python` imports the project from any folder
	touch $(STAMP)

system-deps:
	@missing=""; command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    echo "Installing$$missing with apt-get"; \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  fi

setup: system-deps $(STAMP)
	@mkdir -p var

run: setup
	$(PY) -m scripts.run_platform

# Both runs go ahead even when the first fails; `make test` fails if either did.
test: setup
	@status=0; $(MAKE) --no-print-directory test-sqlite || status=1; \
	  $(MAKE) --no-print-directory test-postgres || status=1; exit $$status

test-sqlite: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-postgres: setup
	$(PY) -m pytest --postgres $(POSTGRES_TESTS) $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(if $(QUICK),--quick,)

# Redis, PostgreSQL, the web tier, two dispatchers and N worker hosts in network namespaces (root).
cluster: setup
	$(PY) -m scripts.cluster --hosts $(N_HOSTS)

keys: setup
	$(PY) -m workers.security generate var/keys

clean:
	rm -rf var/test.sqlite3* bench-out
