# Developer and CI entry points for Gatehouse. Every target does all of its own
# set-up and can be run again. `make run`, `make test` and `make bench` can run
# side by side: they use separate MariaDB and Redis instances (profiles dev, test
# and bench, see scripts/services.sh) with their state in .state/PROFILE.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
# One shell per recipe, so that a recipe can source an environment file and
# `exec` the server in place of the shell.
.ONESHELL:
# Recipes print their own progress lines and errors but not their shell code. With
# .ONESHELL, the `@` that starts a recipe silences all of its lines. `make V=1 TARGET`
# shows the code as well, and `make --dry-run` always prints it.
QUIET := $(if $(filter 1,$(V)),,@)
.DEFAULT_GOAL := help

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV := $(ROOT)/.venv
# The servers that `make bench` and `make soak` measure run from here: the runtime
# dependencies only, pinned by constraints.txt, as the image installs them.
RUNTIME_VENV := $(ROOT)/.state/bench/runtime-venv
STATE := $(ROOT)/.state
SERVICES := $(ROOT)/scripts/services.sh
PROFILES := dev test bench

# Interpreter that creates .venv.
PYTHON ?= python3
# TCP port of `make run` on 127.0.0.1. Setting GATEHOUSE_BIND overrides the whole address.
PORT ?= 8000
# Extra arguments for pytest in `make test`, such as PYTEST_ARGS='-k refresh -x'.
PYTEST_ARGS ?=
# `make bench`: seconds of each measured wrk run, and the first of the three TCP
# ports on 127.0.0.1 that it uses (Gatehouse, the floor app, fastapi-users).
BENCH_SECONDS ?= 15
BENCH_PORT ?= 8730
# `make soak`: length in seconds and request rate per second.
SOAK_SECONDS ?= 600
SOAK_RATE ?= 1000
# Optional dependency groups of pyproject.toml that .venv gets: the test tools,
# and the offline chart and Dockerfile checks (Helm's SDK, Kubernetes schemas).
EXTRAS := test,deploy

# `make run` checks PORT before it starts anything, because gunicorn would report a bad
# value as an invalid GATEHOUSE_BIND, which PORT only fills in. $(and) stops at the first
# empty condition, so the shell compares only a single word of digits.
remove_digits = $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,$(subst 7,,$(subst 8,,$(subst 9,,$(1)))))))))))
port_is_valid = $(and $(filter 1,$(words $(PORT))),$(if $(call remove_digits,$(PORT)),,digits),$(shell \
	[ $(PORT) -ge 1 ] 2>/dev/null && [ $(PORT) -le 65535 ] 2>/dev/null && echo valid))
ifneq ($(filter run,$(MAKECMDGOALS)),)
ifeq ($(GATEHOUSE_BIND),)
ifeq ($(port_is_valid),)
$(error PORT is invalid ($(PORT)): set it to a TCP port number, 1-65535, such as PORT=8080)
endif
endif
endif

.PHONY: help venv runtime-venv lock run test test-deep bench soak stop clean-state \
	$(addprefix services-,$(PROFILES)) $(addprefix keys-,$(PROFILES)) $(addprefix migrate-,$(PROFILES))

help:
	$(QUIET)echo 'Targets:'
	printf '  %-14s %s\n' \
	  run "serve the app with gunicorn on 127.0.0.1:$(PORT) (PORT=N changes the port) with the dev services" \
	  test "run pytest against the test services (PYTEST_ARGS='...' adds arguments)" \
	  test-deep "run the schemathesis tests with 1,000 examples per API operation" \
	  bench "measure Gatehouse, the floor app and fastapi-users with wrk; write docs/benchmarks.md" \
	  soak "serve a mixed load for SOAK_SECONDS; fail on 5 % memory growth, errors or Redis keys left after the purge" \
	  venv "create .venv and install the package with its test and deploy extras, pinned by constraints.txt" \
	  lock "regenerate constraints.txt from a fresh resolve of pyproject.toml" \
	  services-dev "start the dev MariaDB and Redis on ports $${GATEHOUSE_DEV_MYSQL_PORT:-3307} and $${GATEHOUSE_DEV_REDIS_PORT:-6380}" \
	  services-test "start the test MariaDB and Redis on ports $${GATEHOUSE_TEST_MYSQL_PORT:-3308} and $${GATEHOUSE_TEST_REDIS_PORT:-6381}" \
	  services-bench "start the bench MariaDB and Redis on ports $${GATEHOUSE_BENCH_MYSQL_PORT:-3318} and $${GATEHOUSE_BENCH_REDIS_PORT:-6393}" \
	  keys-dev "generate a signing key for the dev profile unless one exists" \
	  keys-test "generate a signing key for the test profile unless one exists" \
	  keys-bench "generate a signing key for the bench profile unless one exists" \
	  migrate-dev "apply database migrations to the dev database" \
	  migrate-test "apply database migrations to the test database" \
	  migrate-bench "apply database migrations to the bench database" \
	  stop "stop the dev gunicorn and the dev, test and bench services" \
	  clean-state "stop everything, then delete .state: all local data, passwords and keys"
	echo
	echo 'scripts/services.sh lists the environment variables that override the service ports.'
	echo 'V=1, such as `make V=1 run`, prints the shell code of each recipe as it runs.'

# The stamp is older than pyproject.toml or constraints.txt after either
# changes, and pip then brings .venv in line with them. On the first install
# constraints.txt is written from what pip resolved; `make lock` regenerates it.
venv: $(VENV)/.installed

$(VENV)/.installed: $(ROOT)/pyproject.toml $(wildcard $(ROOT)/constraints.txt)
	$(QUIET)cd $(ROOT)
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	echo "installing Gatehouse with its $(EXTRAS) extras into $(VENV)"
	if [ -f constraints.txt ]; then
	  $(VENV)/bin/pip install -c constraints.txt -e '.[$(EXTRAS)]'
	else
	  $(VENV)/bin/pip install -e '.[$(EXTRAS)]'
	  $(VENV)/bin/pip freeze --exclude-editable > constraints.txt.tmp
	  mv constraints.txt.tmp constraints.txt
	fi
	touch $@

runtime-venv: $(RUNTIME_VENV)/.installed

$(RUNTIME_VENV)/.installed: $(ROOT)/pyproject.toml $(ROOT)/constraints.txt
	$(QUIET)cd $(ROOT)
	[ -x $(RUNTIME_VENV)/bin/python ] || $(PYTHON) -m venv $(RUNTIME_VENV)
	echo "installing Gatehouse's runtime dependencies into $(RUNTIME_VENV)"
	$(RUNTIME_VENV)/bin/pip install -q -c constraints.txt -e .
	touch $@

# Resolves the dependencies in a throw-away virtual environment, so that
# packages left over in .venv do not end up in the constraints.
lock:
	$(QUIET)cd $(ROOT)
	lock_dir=$$(mktemp -d)
	trap 'rm -rf "$$lock_dir"' EXIT
	$(PYTHON) -m venv "$$lock_dir/venv"
	"$$lock_dir/venv/bin/pip" install -e '.[$(EXTRAS)]'
	"$$lock_dir/venv/bin/pip" freeze --exclude-editable > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

$(addprefix services-,$(PROFILES)): services-%:
	$(QUIET)$(SERVICES) start $*

$(addprefix keys-,$(PROFILES)): keys-%: venv services-%
	$(QUIET). $(STATE)/$*/gatehouse.env
	if compgen -G "$$GATEHOUSE_KEYS_DIR/*.pem" > /dev/null; then
	  echo "signing key present in $$GATEHOUSE_KEYS_DIR"
	else
	  $(VENV)/bin/gatehouse keys generate
	fi

$(addprefix migrate-,$(PROFILES)): migrate-%: venv services-%
	$(QUIET). $(STATE)/$*/gatehouse.env
	$(VENV)/bin/gatehouse migrate

# exec replaces the recipe's shell with gunicorn, so Ctrl-C reaches gunicorn
# directly and make only waits for it to exit.
run: venv services-dev keys-dev migrate-dev
	$(QUIET). $(STATE)/dev/gatehouse.env
	export GATEHOUSE_BIND="$${GATEHOUSE_BIND:-127.0.0.1:$(PORT)}"
	cd $(ROOT)
	exec $(VENV)/bin/gunicorn -c gunicorn.conf.py --pid $(STATE)/dev/gunicorn.pid wsgi:app

# .state/tools/bin holds prometheus and promtool when scripts/services.sh unpacked them.
test: venv services-test keys-test migrate-test
	$(QUIET). $(STATE)/test/gatehouse.env
	export PATH="$(STATE)/tools/bin:$$PATH"
	cd $(ROOT)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The schemathesis run of `make test` with 1,000 examples per operation instead of 15.
test-deep: venv services-test keys-test migrate-test
	$(QUIET). $(STATE)/test/gatehouse.env
	export PATH="$(STATE)/tools/bin:$$PATH"
	cd $(ROOT)
	GATEHOUSE_FUZZ_EXAMPLES=1000 $(VENV)/bin/pytest -p no:cacheprovider tests/test_schemathesis.py $(PYTEST_ARGS)

# The harness (bench/run.py) starts and stops every server it measures, and the
# bench MariaDB and Redis are stopped afterwards, so nothing keeps running.
bench: venv runtime-venv services-bench keys-bench migrate-bench
	$(QUIET). $(STATE)/bench/gatehouse.env
	export GATEHOUSE_BENCH_SERVER_BIN=$(RUNTIME_VENV)/bin
	cd $(ROOT)
	trap '$(SERVICES) stop bench' EXIT
	$(VENV)/bin/python -m bench.run --seconds $(BENCH_SECONDS) --port $(BENCH_PORT) --report docs/benchmarks.md

soak: venv runtime-venv services-bench keys-bench migrate-bench
	$(QUIET). $(STATE)/bench/gatehouse.env
	export GATEHOUSE_BENCH_SERVER_BIN=$(RUNTIME_VENV)/bin
	cd $(ROOT)
	trap '$(SERVICES) stop bench' EXIT
	$(VENV)/bin/python -m bench.soak --seconds $(SOAK_SECONDS) --rate $(SOAK_RATE) --port $(BENCH_PORT) \
	  --report docs/benchmarks.md

stop:
	$(QUIET)$(SERVICES) stop dev
	$(SERVICES) stop test
	$(SERVICES) stop bench

# Deletes the databases, Redis data, generated passwords and signing keys of
# every profile without asking: a reset for development machines.
clean-state: stop
	$(QUIET)rm -rf $(STATE)
	echo "deleted $(STATE)"
