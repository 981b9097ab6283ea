# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test venv lint typecheck protos bench bench-quick clean bytecode

$(VENV)/bin/activate:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "qdspace needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# What the demo needs beyond the core install (a node: contracts, ledger client, FL):
# `inspect` (Ray Serve + onnxruntime: the inspection chapter), `devchain` (the embedded
# EVM chain it anchors on), `train` (each supplier's small CNN, the ONNX export) and
# `elpv` (the EL images, CC BY-NC-SA 4.0, non-commercial), `connect` (asyncua: Cellex's
# simulated PECVD line and `qdspace connect opcua`). torch==2.13.0 (CPU) comes from the
# machine's local wheel.
DEMO_EXTRAS := inspect,devchain,train,elpv,connect

$(VENV)/.demo-installed: pyproject.toml $(VENV)/bin/activate
	$(PIP) install -q 'torch==2.13.0'
	$(PIP) install -q -e '.[$(DEMO_EXTRAS)]'
	@touch $@

# Everything the tests need: the demo's extras plus `dev` (pytest, ruff and mypy at
# pinned versions) and `connect` (the line connectors); torch==2.13.0 (CPU) comes from
# the machine's local wheel.
$(VENV)/.test-installed: pyproject.toml $(VENV)/bin/activate
	$(PIP) install -q 'torch==2.13.0'
	$(PIP) install -q -e '.[dev,connect,$(DEMO_EXTRAS)]'
	@touch $@ $(VENV)/.demo-installed

# The project's own modules compiled to bytecode once, before the demo and the tests: both
# start many interpreters (nodes, a chain, CLI commands, benches), and where
# PYTHONDONTWRITEBYTECODE is set (it is on this project's machines) none of them writes
# what it compiled, so each compiled every module again: ~0.8 s more CPU per node start.
# compileall writes the files whatever that variable says; an import then reads them.
SOURCES := qdspace connector federation inference ledger node policies protocols util

bytecode:
	$(PY) -m compileall -q -j 0 $(SOURCES) bench tests >/dev/null

demo: $(VENV)/.demo-installed
	@$(MAKE) --no-print-directory bytecode
	$(VENV)/bin/qdspace demo

# Two pytest-xdist workers: run serially the suite keeps one core of two busy; how the
# tests are grouped is in tests/conftest.py. `make test TEST_WORKERS=1` runs it serially.
TEST_WORKERS ?= 2

test: $(VENV)/.test-installed
	@$(MAKE) --no-print-directory bytecode
	$(PY) -m pytest -q -ra $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(VENV)/bin/mypy -p qdspace

# Every bench script with --quick (small sizes, seconds each), its JSON checked, so the
# benchmarks cannot rot; the full runs stay manual (`python bench/<name>.py`).
bench-quick: $(VENV)/.test-installed
	$(PY) -m pytest -q -ra tests/integration/test_bench_quick.py

protos: $(VENV)/.test-installed
	$(PY) -m qdspace.protocols.generate

clean:
	rm -rf $(VENV) qdspace-demo .pytest_cache .mypy_cache .ruff_cache
