# Developer and CI entry points for corral.
#
#   make venv    .venv with corral installed editable plus dev extras
#   make test    start test services (PostgreSQL, ...) and run pytest
#   make demo    run the quickstart example
#   make lint    ruff, if installed
#   make clean   remove .venv and example ledgers
#
# With CI=true, `make test` fails when a test service cannot be started;
# otherwise it warns and the tests that need that service are skipped.

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
PYTEST      ?= $(VPY) -m pytest
# Most tests wait on subprocesses, so four pytest-xdist workers keep 2 cores busy. The SLURM tests
# (marker "slurm") share one single-node cluster: they run afterwards, one at a time.
PYTEST_WORKERS ?= 4
PYTEST_ARGS ?= -q --durations=15

.DEFAULT_GOAL := help
.PHONY: help venv test demo lint clean

help:
	@sed -n '3,8s/^# \{0,1\}//p' Makefile

# ---------------------------------------------------------------- venv ---

$(VPY):
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "hint: on Debian/Ubuntu install python3-venv first" >&2; exit 1; }

# The dev install is a superset of the plain one, so it refreshes both stamps.
$(VENV)/.installed-dev: pyproject.toml | $(VPY)
	$(VPY) -m pip install -e '.[dev]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | $(VPY)
	$(VPY) -m pip install -e .
	touch $@

venv: $(VENV)/.installed-dev

# ---------------------------------------------------------------- test ---

# $(call service,SCRIPT,ENV_VAR,NAME)
# Runs SCRIPT, whose last stdout line is a URL, and exports it as ENV_VAR.
# An ENV_VAR already set by the caller is used as is. If SCRIPT fails:
# with CI=true stop with an error; otherwise warn (NAME tests will skip).
define service
if [ -n "$${$(2):-}" ]; then \
  echo "make test: using $(2)=$${$(2)}" >&2; \
elif url=$$($(1) | tail -n 1) && [ -n "$$url" ]; then \
  export $(2)="$$url"; \
  echo "make test: $(2)=$$url" >&2; \
elif [ "$${CI:-}" = true ]; then \
  echo "make test: ERROR: $(1) failed (CI=true)" >&2; exit 1; \
else \
  echo "make test: WARNING: $(1) failed; $(3) tests will be skipped" >&2; \
fi;
endef

test: $(VENV)/.installed-dev
	@set -o pipefail; \
	$(call service,scripts/pg-test-server,CORRAL_TEST_PG_URL,PostgreSQL) \
	$(call service,scripts/slurm-local-cluster,CORRAL_TEST_SLURM_URL,SLURM) \
	$(PYTEST) $(PYTEST_ARGS) -n $(PYTEST_WORKERS) -m "not slurm" && \
	$(PYTEST) $(PYTEST_ARGS) -m slurm

# ---------------------------------------------------------------- demo ---

demo: $(VENV)/.installed
	cd examples/quickstart && \
	  ../../$(VENV)/bin/corral run corral.yaml && \
	  ../../$(VENV)/bin/corral status corral.yaml && \
	  echo "--- summary (the once-per-run stage's result):" && \
	  ../../$(VENV)/bin/corral export corral.yaml --stage summary --format json && \
	  echo "--- first episodes (corral export --format csv):" && \
	  ../../$(VENV)/bin/corral export corral.yaml --stage episode --format csv | head -4

# ---------------------------------------------------------------- misc ---

lint:
	@if [ -x $(VENV)/bin/ruff ]; then ruff=$(VENV)/bin/ruff; \
	elif command -v ruff >/dev/null 2>&1; then ruff=ruff; \
	else echo "ruff not installed; skipping lint" >&2; exit 0; fi; \
	$$ruff check src tests

clean:
	rm -rf $(VENV) examples/*/.corral examples/*/archive src/*.egg-info
