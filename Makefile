# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test venv lint typecheck protos bench clean

$(VENV)/bin/activate:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "qdspace needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Runtime + the EL images (CC BY-NC-SA 4.0, non-commercial) the demo inspects + the
# `train` extra: the demo trains each supplier's small CNN and exports the federated
# model to ONNX. torch==2.13.0 (CPU) comes from the machine's local wheel.
$(VENV)/.demo-installed: pyproject.toml $(VENV)/bin/activate
	$(PIP) install -q 'torch==2.13.0'
	$(PIP) install -q -e '.[elpv,train]'
	@touch $@

# Everything the tests need; torch==2.13.0 (CPU) comes from the machine's local wheel.
$(VENV)/.test-installed: pyproject.toml $(VENV)/bin/activate
	$(PIP) install -q 'torch==2.13.0'
	$(PIP) install -q -e '.[dev,train,elpv]'
	@touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(VENV)/bin/qdspace demo

test: $(VENV)/.test-installed
	$(PY) -m pytest -q -ra

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(VENV)/bin/mypy -p qdspace

protos: $(VENV)/.test-installed
	$(PY) -m qdspace.protocols.generate

clean:
	rm -rf $(VENV) qdspace-demo .pytest_cache .mypy_cache .ruff_cache
