# Every target builds or refreshes .venv from pyproject.toml when needed, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
ARGS ?=

.PHONY: test demo lint bench clean browser postgres docker chaos bench-memory bench-store

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The dashboard's browser test drives Debian's chromium (no browser download); install it when
# missing and we may (root with apt-get). Without it the browser test fails and says why.
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; } || echo "warning: /usr/bin/chromium missing; the dashboard browser test will fail"

# The PostgreSQL store's tests start a throwaway cluster with Debian's postgresql (initdb and
# pg_ctl under /usr/lib/postgresql/*/bin); install it when missing and we may. Without it those
# tests fail and say why.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		command -v apt-get >/dev/null && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		echo "warning: PostgreSQL missing; the PostgreSQL store tests will fail"


# The docker-mode tests start their own dockerd (Debian's docker.io: dockerd, containerd, runc);
# install it when missing and we may. Without it those tests fail and say why.
docker:
	@test -x /usr/sbin/dockerd || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends docker.io >/dev/null; } || \
		echo "warning: /usr/sbin/dockerd missing; the docker-mode tests will fail"

test: $(STAMP) browser postgres docker
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# A long chaos run (thousands of jobs, dozens of faults); e.g. make chaos ARGS="--jobs 500 --seed 3"
# Several coordinators: make chaos ARGS="--coordinators 3 --store postgres"
chaos: $(STAMP) postgres
	$(BIN)/python -m tests.chaos $(ARGS)

# Coordinator RSS with a deep queue (no agents): make bench-memory ARGS="--jobs 50000"
bench-memory: $(STAMP)
	$(BIN)/python -m tests.bench.queue_memory $(ARGS)

demo: $(STAMP)
	$(BIN)/comfyfleet demo --data-dir var/demo $(ARGS)

# Benchmarks (bench/, not installed): rewrites BENCHMARKS.md; `make bench ARGS=--quick` is small.
# COMFY_URL=http://HOST:PORT (and COMFY_OUTPUT_DIR=its output folder) adds a real ComfyUI, driven
# directly and through comfyfleet in turn (bench/real_comfy.py); without it, the simulator.
bench: $(STAMP) postgres
	$(BIN)/python -m bench.run $(ARGS)

# Open-job reads with 100,000 finished jobs, PostgreSQL against SQLite: make bench-store ARGS="--finished 20000"
bench-store: $(STAMP) postgres
	$(BIN)/python -m bench.store_finished $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy cli shared coordinator agent client sim

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
