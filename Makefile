# The two set-up commands of the README:
#   make demo   runs the main job on built-in data
#   make test   runs the test suite
# Each creates the virtual environment it needs (.venv) on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PEER   ?= .peer-venv
TORCH_CPU ?= torch==2.13.0

.PHONY: venv demo test test-all peer test-peer bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Keep an existing torch; on a fresh machine install the CPU build first, so that the
	@# unpinned `torch` dependency does not pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[all,test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/torchntk demo

test: venv
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -n 2 -q --runslow $(PYTEST_ARGS)

# The peer (neural-tangents, JAX) in its own environment, beside torchntk.
$(PEER)/.installed: pyproject.toml
	test -x $(PEER)/bin/python || $(PYTHON) -m venv $(PEER)
	$(PEER)/bin/python -c "import torch" 2>/dev/null || $(PEER)/bin/pip install -q "$(TORCH_CPU)"
	$(PEER)/bin/pip install -q -e ".[all,test,bench]"
	touch $@

peer: $(PEER)/.installed

test-peer: peer
	$(PEER)/bin/python -m pytest -q tests/peer $(PYTEST_ARGS)

bench: peer
	$(PEER)/bin/python benchmarks/empirical.py
	$(PEER)/bin/python benchmarks/analytic.py
	$(PEER)/bin/python benchmarks/dynamics.py

clean:
	rm -rf $(VENV) $(PEER) build dist src/*.egg-info
