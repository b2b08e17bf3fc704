# callgate developer entry points (GNU make). Works on a fresh Debian/Ubuntu with only
# python3: missing system packages (python3-venv, redis-server) are installed with apt.
#
#   make run     start the gateway with a demo tenant (embedded redis-server in var/)
#   make test    the test-suite (CI runs exactly this through .ci/run)
#   make lint    ruff + mypy --strict
#   make clean   remove var/ and caches;  make distclean  also remove .venv

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; pyproject.toml newer than it triggers a reinstall.
INSTALL_STAMP := $(VENV)/.installed
VAR := var
OPERATOR_TOKEN_FILE := $(VAR)/operator-token
PYTEST_ARGS ?=
SIPBENCH_ARGS ?=

# Shell snippets: `$(APT_UPDATE)` refreshes the package lists, `$(APT_INSTALL) pkg...`
# installs Debian packages; as root directly or through sudo.
APT_UPDATE := \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "error: apt-get not found; install the packages below by hand" >&2; exit 1; \
	fi; \
	sudo=""; \
	if [ "$$(id -u)" -ne 0 ]; then \
	  if command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	  else echo "error: root or sudo is needed to install system packages" >&2; exit 1; fi; \
	fi; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
APT_INSTALL := $(APT_UPDATE); \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

.PHONY: help venv redis postgres sip valgrind run test lint bench loadtest sipbench chaos clean distclean

help:
	@echo "make run        start callgate with a demo tenant (operator token in $(OPERATOR_TOKEN_FILE))"
	@echo "make test       run the test-suite (PYTEST_ARGS='-k store' to select)"
	@echo "make lint       ruff check + mypy --strict"
	@echo "make bench      micro-benchmark of the call path"
	@echo "make loadtest   Locust load test"
	@echo "make sipbench   call setup through Kamailio and the gateway (sipp)"
	@echo "make chaos      fault-injection tests (Redis crashes, persister restarts, bursts,"
	@echo "                Redis stalls, cluster failover; docs/faults.md)"
	@echo "make clean      remove var/ and caches; distclean also removes $(VENV)"

# --- internal: virtualenv and system packages ------------------------------------------

venv: $(INSTALL_STAMP)

$(BIN)/python:
	@if ! $(PYTHON) -m venv $(VENV); then \
	  echo "python3 -m venv failed: installing python3-venv" >&2; \
	  rm -rf $(VENV); \
	  $(APT_INSTALL) python3-venv; \
	  $(PYTHON) -m venv $(VENV); \
	fi

$(INSTALL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

# redis-server and redis-cli (the latter from redis-tools, a dependency of redis-server).
# Debian's package also starts a system Redis on 6379: harmless, callgate never uses it.
redis:
	@if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then \
	  echo "redis-server/redis-cli not found: installing redis-server with apt" >&2; \
	  $(APT_INSTALL) redis-server redis-tools; \
	fi

# --- entry points ----------------------------------------------------------------------

# The operator token is generated once and kept in var/ so that restarts keep it; an
# exported CALLGATE_OPERATOR_TOKEN wins.
run: venv redis
	@mkdir -p $(VAR)
	@if [ -z "$${CALLGATE_OPERATOR_TOKEN:-}" ]; then \
	  if [ ! -s $(OPERATOR_TOKEN_FILE) ]; then \
	    ( umask 077; \
	      $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' \
	        > $(OPERATOR_TOKEN_FILE).tmp; \
	      mv $(OPERATOR_TOKEN_FILE).tmp $(OPERATOR_TOKEN_FILE) ); \
	    echo "generated an operator token in $(OPERATOR_TOKEN_FILE)"; \
	  fi; \
	  CALLGATE_OPERATOR_TOKEN="$$(< $(OPERATOR_TOKEN_FILE))"; \
	  export CALLGATE_OPERATOR_TOKEN; \
	fi; \
	exec $(BIN)/callgate serve --demo

# PostgreSQL binaries (initdb, pg_ctl) for the ledger tests, unless a server is given in
# CALLGATE_TEST_POSTGRES_URL; the suite starts its own server on a free port.
postgres:
	@if [ -z "$${CALLGATE_TEST_POSTGRES_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "initdb not found: installing postgresql with apt" >&2; \
	  $(APT_INSTALL) postgresql; \
	fi

# promtool, for the alert-rule tests: the one binary, unpacked from Debian's prometheus
# package into the virtualenv (installing the package would also start a Prometheus
# server). When it cannot be fetched, those two tests are skipped with a warning.
PROMTOOL := $(BIN)/promtool
$(PROMTOOL): | $(BIN)/python
	@if command -v promtool >/dev/null 2>&1; then ln -sf "$$(command -v promtool)" $@; exit 0; fi; \
	echo "promtool not found: unpacking it from Debian's prometheus package" >&2; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	fetch() { (cd "$$tmp" && apt-get download -q prometheus >/dev/null 2>&1); }; \
	if fetch || { ( $(APT_UPDATE) ) >/dev/null && fetch; }; then \
	  dpkg-deb -x "$$tmp"/prometheus_*.deb "$$tmp/x" && cp "$$tmp/x/usr/bin/promtool" $@; \
	else \
	  echo "warning: could not fetch promtool; the alert-rule tests will be skipped" >&2; \
	fi

# Kamailio with its app_python3 and json modules (async, permissions, db_text and kamcmd
# come with the kamailio package; app_python3 runs integrations/kamailio/callgate_client.py,
# the proxy's keep-alive HTTP client), and sipp, for tests/test_kamailio*.py
# (integrations/kamailio); and its cnxcc module, the baseline `make sipbench` compares with
# (integrations/kamailio/cnxcc-baseline.cfg; cnxcc speaks to its Redis itself, through
# hiredis, and needs no other module). On a machine with systemd the package also starts
# a Kamailio on 5060: harmless, the tests start their own on free ports.
KAMAILIO_MODULES := /usr/lib/*/kamailio/modules
sip:
	@if ! command -v kamailio >/dev/null 2>&1 || ! command -v sipp >/dev/null 2>&1 \
	    || ! command -v kamcmd >/dev/null 2>&1 \
	    || ! ls $(KAMAILIO_MODULES)/app_python3.so $(KAMAILIO_MODULES)/json.so \
	        $(KAMAILIO_MODULES)/async.so $(KAMAILIO_MODULES)/cnxcc.so >/dev/null 2>&1; then \
	  echo "kamailio/sipp not found: installing them with apt" >&2; \
	  $(APT_INSTALL) kamailio kamailio-python3-modules kamailio-json-modules \
	    kamailio-cnxcc-modules sip-tester; \
	fi

# valgrind, for the gate on Redis instructions per call (tests/test_fcall_cost.py).
valgrind:
	@if ! command -v valgrind >/dev/null 2>&1; then \
	  echo "valgrind not found: installing it with apt" >&2; \
	  $(APT_INSTALL) valgrind; \
	fi

test: venv redis postgres sip valgrind $(PROMTOOL)
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy gateway loadtest tests integrations/kamailio/callgate_client.py

# bench: authorize throughput and latency against an aiohttp hello-world ceiling (wrk), then
# CPU per call at a switch's pace (100/300/1000 calls/s, 8 connections) and at idle;
# loadtest: a short headless Locust session; chaos: the crash tests with 100+ kills, and the
# burst, Redis-stall and failover scenarios 20 times each (docs/faults.md).
bench: venv redis
	$(BIN)/python -m loadtest.bench

loadtest: venv redis
	$(BIN)/python -m loadtest.run_locust

# sipbench: call setup (INVITE to 200) through Kamailio and the gateway, sipp at 250, 500,
# 750 and 1000 calls/s, beside the same load through Kamailio's cnxcc module (a benchmark
# baseline); SIPBENCH_ARGS to change, e.g. '--rates 500 --repeat 3' or '--delays-ms 0,50'.
sipbench: venv redis sip
	$(BIN)/python -m loadtest.sip_bench $(SIPBENCH_ARGS)

chaos: venv redis postgres
	CALLGATE_CHAOS_KILLS=$${CALLGATE_CHAOS_KILLS:-100} CALLGATE_CHAOS_REDIS_KILLS=$${CALLGATE_CHAOS_REDIS_KILLS:-20} \
	CALLGATE_CHAOS_REPEATS=$${CALLGATE_CHAOS_REPEATS:-20} \
	$(BIN)/pytest -q -p no:cacheprovider -s -m chaos $(PYTEST_ARGS)

# --- cleaning --------------------------------------------------------------------------

clean:
	rm -rf $(VAR) .pytest_cache .mypy_cache .ruff_cache .hypothesis loadtest/results
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) build *.egg-info
