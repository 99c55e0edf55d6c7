# marginwatch developer / CI entry points (GNU make).
#
#   make test        venv + system deps + Kafka jars + local broker, the whole
#                    pytest suite, then the broker is stopped again (pytest's
#                    exit status is kept; "no tests collected" fails)
#   make test-unit   tests that need no Kafka (-m 'not kafka')
#   make kafka-up / kafka-down / kafka-status / kafka-logs / kafka-clean
#   make demo [DURATION=60]
#
# Variables: PYTHON (interpreter that creates .venv), PYTEST_ARGS (extra pytest
# arguments), MW_KAFKA_PORT / MW_KAFKA_CONTROLLER_PORT / MW_CACHE_DIR (see
# streams/kafka_local/), KAFKA_DOWN=always (make test also stops a broker that
# was already running before it; by default such a broker is left alone).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.mw-installed
KAFKA := $(PY) -m streams.kafka_local
PYTEST := $(PY) -m pytest -p no:cacheprovider
PYTEST_ARGS ?=
DURATION ?=
KAFKA_DOWN ?=

.PHONY: help venv deps kafka-jars kafka-up kafka-down kafka-restart kafka-status \
        kafka-logs kafka-clean test test-unit demo clean

help:
	@echo "targets: venv deps kafka-jars kafka-up kafka-down kafka-restart kafka-status kafka-logs"
	@echo "         kafka-clean test test-unit demo [DURATION=s] clean"

# ------------------------------------------------------------------ environment

venv: $(VENV_STAMP)

# Re-installed whenever pyproject.toml changes.
$(VENV_STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  command -v $(PYTHON) >/dev/null 2>&1 || { echo "venv: $(PYTHON) not found (set PYTHON=...)" >&2; exit 1; }; \
	  echo "venv: creating $(VENV) with $(PYTHON)"; \
	  $(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# System packages: Java 17+ and Maven (the broker), kcat (tests), promtool
# (alert-rule checks).  Installed with apt-get when missing and we are root;
# never fails: says what is missing and why it could not be installed.
deps:
	@missing=""; \
	command -v java >/dev/null 2>&1 || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null 2>&1 || missing="$$missing maven"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if ! command -v kcat >/dev/null 2>&1 && ! command -v kafkacat >/dev/null 2>&1; then missing="$$missing kcat"; fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "deps: missing:$$missing (not root: install them with apt-get yourself)"; exit 0; \
	fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "deps: missing:$$missing (no apt-get on this system: install them yourself)"; exit 0; \
	fi; \
	echo "deps: installing$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq || echo "deps: apt-get update failed"; \
	pkgs=""; for p in $$missing; do \
	  if [ "$$p" = kcat ] && ! apt-cache show kcat >/dev/null 2>&1; then p=kafkacat; fi; \
	  pkgs="$$pkgs $$p"; \
	done; \
	apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null \
	  || echo "deps: apt-get install$$pkgs failed (see above); continuing"

# ------------------------------------------------------------------------ Kafka

kafka-jars: venv
	@$(KAFKA) jars

kafka-up: venv kafka-jars
	@$(KAFKA) up

kafka-down:
	@if [ -x $(PY) ]; then $(KAFKA) down; else python3 -m streams.kafka_local down; fi

kafka-restart: venv
	@$(KAFKA) restart

kafka-status: venv
	@$(KAFKA) status

kafka-logs: venv
	@$(KAFKA) logs -n 200

kafka-clean: venv
	@$(KAFKA) clean

# ------------------------------------------------------------------------ tests

# The broker is stopped whatever pytest did; pytest's status is the target's
# (5 = no tests collected fails too).  A broker that was already running before
# `make test` (e.g. a developer's) is left running unless KAFKA_DOWN=always.
test: venv deps kafka-jars
	@was_up=0; if $(KAFKA) status >/dev/null 2>&1; then was_up=1; fi; \
	$(KAFKA) up || { rc=$$?; $(KAFKA) down >/dev/null 2>&1; exit $$rc; }; \
	rc=0; $(PYTEST) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$was_up = 0 ] || [ "$(KAFKA_DOWN)" = always ]; then $(KAFKA) down || true; \
	else echo "make test: leaving the Kafka broker that was already running (KAFKA_DOWN=always stops it)"; fi; \
	if [ $$rc = 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

test-unit: venv
	$(PYTEST) -m 'not kafka and not soak' $(PYTEST_ARGS)

# ------------------------------------------------------------------------- demo

# A live demo: local broker (started if needed, stopped again if the demo started
# it), a worker, the simulator with a crash, the liquidation bot; DURATION=s bounds it.
demo: venv deps kafka-jars
	$(VENV)/bin/marginwatch demo $(if $(DURATION),--duration $(DURATION))

# ------------------------------------------------------------------------ clean

# Stops the broker; removes build litter and the broker's data (the fetched jars
# in .cache/kafka-libs are kept: `rm -rf .cache` for everything).
clean:
	@if [ -x $(PY) ]; then $(KAFKA) down; $(KAFKA) clean; fi
	rm -rf build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
