# Quick start: `make run` (main job) and `make test` (the suite). Both create
# the virtual environment in .venv first when it is missing or out of date.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/main
# Extra flags for the main job, e.g. make run ARGS="--tiny".
ARGS ?=

.PHONY: run test test-fast bench env clean-env

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml tools/find_python.sh
	@set -e; \
	if [ ! -x $(PY) ]; then \
	  interpreter=$$(PYTHON="$(PYTHON)" tools/find_python.sh); \
	  echo "Creating $(VENV) with $$interpreter"; \
	  "$$interpreter" -m venv $(VENV); \
	fi; \
	$(PY) -m pip install --quiet --upgrade pip; \
	echo "Installing pinned dependencies from requirements.lock"; \
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock; \
	$(PY) -c 'import os, site; open(os.path.join(site.getsitepackages()[0], "workspace.pth"), "w").write(os.getcwd())'; \
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main --workdir=$(WORKDIR) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# The PyTorch reference of benchmarks/cfm_bench.py lives in its own env.
BENCH_VENV := .venv-bench

$(BENCH_VENV)/.installed: benchmarks/setup_reference.sh
	bash benchmarks/setup_reference.sh $(BENCH_VENV)

bench: $(STAMP) $(BENCH_VENV)/.installed
	$(PY) -m benchmarks.run_all

clean-env:
	rm -rf $(VENV)
