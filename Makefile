# The two commands a new user needs:
#   make serve    set up, then run the server (ws://127.0.0.1:5556/)
#   make test     set up, then run the test suite
# Setup (scripts/setup.sh) creates .venv and installs what the sandbox needs; it
# is skipped in well under a second once done, until pyproject.toml changes.

VENV        ?= .venv
PY          := $(VENV)/bin/python
CONFIG      ?= config/settings.toml
SERVE_ARGS  ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
BENCH_ARGS  ?=

.DEFAULT_GOAL := help
.PHONY: help setup serve test lint bench clean distclean

help:
	@echo "make serve   run the server with $(CONFIG) (extra flags: SERVE_ARGS='--port 6000 --debug')"
	@echo "make test    run the tests (extra pytest flags: PYTEST_ARGS='-k lint -x'; TEST_WORKERS=0: one process)"
	@echo "make lint    lint manifests/, then ruff and mypy"
	@echo "make bench   run the benchmarks (BENCH_ARGS=--quick for a smoke run, --json PATH)"
	@echo "make setup   only create $(VENV) and install system packages (done by serve/test)"
	@echo "make clean   remove caches and build output; distclean also removes $(VENV)"

setup:
	@VENV=$(VENV) bash scripts/setup.sh

serve: setup
	exec $(PY) -m service --config $(CONFIG) $(SERVE_ARGS)

# The tests run in TEST_WORKERS processes (pytest-xdist; 0: in pytest's own): most of
# their time is spent waiting for sandboxes, so two of them keep 2 CPUs busier. Tests
# marked xdist_group share an expensive module fixture and run in one worker.
# pytest exits 5 when it collected no tests; that is a failure here, never a pass.
test: setup
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; fi; \
	exit $$rc

lint: setup
	$(VENV)/bin/service lint manifests/
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
