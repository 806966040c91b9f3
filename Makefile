# wordloom-outbox. `make run` drains a seeded outbox on embedded servers; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CORPUS ?=
WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: run test install snapshot bench clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg setup.py bin/bootstrap
	PYTHON=$(PYTHON) bash bin/bootstrap

run: $(VENV)/.installed
	$(PY) -m wordloom_outbox.labs.demo --workers $(WORKERS) $(if $(CORPUS),--corpus "$(CORPUS)",)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Benchmarks side by side (docs/PERFORMANCE.md); sizes from BENCH_* variables (bench/run.py).
bench: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) -m bench.run

snapshot: $(VENV)/.installed
	$(PY) -m wordloom_outbox.cli labs run --all --out snapshots

clean:
	rm -rf $(VENV) build *.egg-info snapshots
