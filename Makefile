# The two commands a newcomer needs: `make dev` runs the product, `make test` proves it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export GOTOOLCHAIN := local
# Heavy builds live outside the repository so that a fresh clone reuses them (fintech_devstack/build.py).
CACHE_DIR := $(or $(FINTECH_CACHE_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/fintech-operator)
# mypy's cache, shared by every checkout: most of a cold run is the typed libraries (pydantic,
# psycopg, FastAPI), unchanged between clones; mypy revalidates each cached module by the
# hash of its source, so a stale entry is re-checked, never trusted. flock serialises runs
# that share it.
MYPY_CACHE := $(CACHE_DIR)/mypy

.PHONY: setup dev down test lint chart-lint unit integration e2e crds bench clean image cluster-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed
	./tools/bootstrap.sh
	$(BIN)/fintech-operator stack build

## dev: the real local platform plus the operator, rewards consumer and notifier, restarted when
## one dies (Ctrl-C stops them; FINTECH_STACK_DIR=DIR make dev runs a second one, docs/development.md)
dev: setup
	$(BIN)/fintech-operator dev

## down: stop the local platform started by `make dev`
down:
	$(BIN)/fintech-operator stack down

# Workers of `make test`: each starts its own platform when it first needs one, and runs whole
# test files (--dist loadfile: a module's fixtures and its tests' order stay as written), handed
# out in collection order (--no-loadscope-reorder; xdist would otherwise start with the files
# of most tests, the fast unit ones, and leave the slow e2e files, of few tests each, for last).
# The suite mostly waits on servers (load average 1 to 4 when serial), so 2 workers halve its time
# on 2 cores; 4 timed out first cards on a loaded machine (bench/RESULTS.md, "make test time").
TEST_WORKERS ?= 2
# What pytest runs (empty: tests/ as pyproject.toml says); e.g. TEST_PATHS=tests/unit.
TEST_PATHS ?=
TEST_LOGS := .test-logs
# `make test` runs lint and the cluster tier at this lower CPU priority beside pytest: pytest
# is the long pole (12 to 16 min warm, the cluster tier 5 to 7), so on 2 cores it goes first and
# the side tiers use the CPU its workers leave while they wait on their servers.
SIDE_NICE ?= 10
# The cluster tier, as `make cluster-test` and `make test` run it: the node's executables and
# images are built (when their inputs changed) before the tests, outside their timeouts.
CLUSTER_TESTS = ./tools/bootstrap.sh node && $(BIN)/python -m fintech_devstack.node \
	&& FINTECH_CLUSTER_TESTS=1 $(BIN)/pytest -q tests/cluster

## test: every test against the real platform (TEST_WORKERS in parallel) and, alongside it, lint
## and type checks and the chart on a real node (their output in .test-logs/, shown at the end)
test: setup
	@mkdir -p $(TEST_LOGS)
	@echo "[test] make lint and make cluster-test run alongside pytest; their output follows pytest's"
	@nice -n $(SIDE_NICE) $(MAKE) --no-print-directory lint >$(TEST_LOGS)/lint.log 2>&1 & lint=$$!; \
	nice -n $(SIDE_NICE) sh -c '$(CLUSTER_TESTS)' >$(TEST_LOGS)/cluster-test.log 2>&1 & cluster=$$!; \
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(TEST_PATHS); \
	tests=$$?; wait $$lint; linted=$$?; wait $$cluster; node=$$?; \
	echo "[test] ==== make lint, from $(TEST_LOGS)/lint.log ===="; cat $(TEST_LOGS)/lint.log; \
	echo "[test] ==== make cluster-test, from $(TEST_LOGS)/cluster-test.log ===="; \
	cat $(TEST_LOGS)/cluster-test.log; \
	echo "[test] make lint: exit $$linted; pytest: exit $$tests; make cluster-test: exit $$node"; \
	test $$linted -eq 0 && test $$tests -eq 0 && test $$node -eq 0

lint: $(VENV)/.installed
	$(BIN)/ruff check fintech_operator fintech_devstack tests bench
	$(BIN)/ruff format --check fintech_operator fintech_devstack tests bench
	@mkdir -p $(MYPY_CACHE)
	flock $(MYPY_CACHE)/.lock env MYPY_CACHE_DIR=$(MYPY_CACHE) $(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m fintech_operator.api.crdgen --check
	$(BIN)/python -m fintech_operator.gateway.openapi --check
	$(BIN)/python -m fintech_operator.settings_reference --check

## chart-lint: `helm lint --strict` on the chart (the cached Helm build) and hadolint on the Dockerfile
chart-lint: setup
	"$$($(BIN)/python -c 'from fintech_devstack import build; print(build.ensure_all().helm)')" \
		lint --strict charts/fintech-operator
	$(BIN)/hadolint Dockerfile

unit: $(VENV)/.installed
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

## e2e: the seed's flow (card, purchase, Kafka, rewards) end to end; prints the rewards rows
e2e: setup
	$(BIN)/pytest -q -s tests/e2e/test_seed_flow.py

crds: $(VENV)/.installed
	$(BIN)/python -m fintech_operator.api.crdgen

# The long fault campaign (issue 16, docs/faults.md): 505 faults of every kind, the cheap kinds
# drawn more often so that it lasts about 40 minutes rather than hours of Kafka restarts.
LONG_CAMPAIGN = --seed 1616 --duration 1800 --faults 505 --pause 5 --outage 3 --quiesce 300 \
	--kinds kill-operator:60,kill-rewards:60,kill-notifier:60,kill-gateway:60,pause-operator:30,pause-rewards:30,pause-notifier:30,pause-gateway:30,webhook-500:35,webhook-429:35,postgres-immediate:30,etcd-kill:24,apiserver-kill:12,kafka-kill:6

# Every benchmark, each on its own throwaway platform; results go to bench/RESULTS.md by hand.
bench: setup
	$(BIN)/python bench/bench_screening.py
	$(BIN)/python bench/bench_ledger.py --own-platform
	$(BIN)/python bench/bench_recon.py --own-platform
	$(BIN)/python bench/bench_events.py
	$(BIN)/python bench/bench_events.py --kafka-security SASL_SSL
	$(BIN)/python bench/bench_card_activation.py
	$(BIN)/python bench/bench_postings_e2e.py --postings 300
	$(BIN)/python bench/bench_postings_e2e.py --postings 300 --cards 20
	$(BIN)/python bench/bench_relay.py
	$(BIN)/python bench/bench_rewards.py
	$(BIN)/python bench/bench_postings_burst.py
	$(BIN)/python bench/bench_operator_memory.py
	$(BIN)/python bench/bench_authorizations.py --own-platform
	$(BIN)/python bench/faults.py $(LONG_CAMPAIGN)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

## image: the product image from the Dockerfile (on a local bookworm Python base), plus the
## PostgreSQL, Kafka, pause and CoreDNS images `stack node` runs; cached by their inputs
image: setup
	./tools/bootstrap.sh node
	$(BIN)/python -m fintech_devstack.images

## cluster-test: the chart installed with Helm on a real node (root, containerd; slow)
cluster-test: setup
	$(CLUSTER_TESTS)
