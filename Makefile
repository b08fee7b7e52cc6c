# The two set-up commands of the README:
#   make demo   runs the main job on built-in data
#   make test   runs the test suite
# Each creates the virtual environment it needs (.venv) on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PEER   ?= .peer-venv
TORCH_CPU ?= torch==2.13.0

.PHONY: venv demo test test-all test-codepaths lint peer test-peer bench clean

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

# The float-sensitive tests (tiles and stores, blocked analytic kernels, empirical blocking,
# features, kernel checks) again on other CPU code paths: torch's scalar kernels and MKL's AVX2
# path, then with small cache-sized blocks (TORCHNTK_CACHE_BYTES), so that a test assuming the
# rounding or the blocks of one machine fails here too.
FLOAT_TESTS ?= tests/scale/test_tiled.py tests/scale/test_store_integrity.py \
	tests/scale/test_budget_tiles.py tests/scale/test_solvers.py tests/layers/test_fast_paths.py \
	tests/layers/test_core.py tests/layers/test_masking.py tests/empirical/test_properties.py \
	tests/features/test_map.py tests/features/test_solvers.py tests/test_kernel_checks.py \
	tests/test_memory.py
# ruff, with the configuration in pyproject.toml
lint: venv
	$(PY) -m ruff check src tests benchmarks examples

test-codepaths: venv
	ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m pytest -n 2 -q $(FLOAT_TESTS) $(PYTEST_ARGS)
	TORCHNTK_CACHE_BYTES=16KiB $(PY) -m pytest -n 2 -q $(FLOAT_TESTS) $(PYTEST_ARGS)

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
