# PECN: two commands on a fresh clone (see README):
#   make demo   set up, generate synthetic SSv2, materialise the whole asset graph into dagster_home/
#   make test   set up, run the test suite (the command CI runs)
#   make rehearse  the full profile's code path and model sizes (random weights, no hub) on a
#                  handful of synthetic videos; prints a table per asset (pecn_assets/tools/rehearse.py)
#   make gpu-check the real-size models for a few steps on this machine's GPU(s) and the projected
#                  wall time of the full experiment (pecn_ml/gpu_check.py; fails at once without CUDA)
#   make results   docs/RESULTS.md from dagster_home (after make demo)
#   make lock      refresh constraints.txt from .venv (after the tests pass); lock-check compares
VENV    ?= .venv
PY      := $(VENV)/bin/python
# torch as your pip index resolves it (on a stock Linux PyPI: the CUDA build). TORCH_INDEX_URL
# picks a build, e.g. https://download.pytorch.org/whl/cpu (CPU) or .../whl/cu128; a torch 2.13.0
# already in the venv (any build: the lock pins the version, not the build) is kept.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
# Every package pinned to what the tests passed with (`make lock`); CONSTRAINTS= installs unpinned.
CONSTRAINTS ?= constraints.txt
PIP_LOCK = $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow ui bench clean-demo rehearse gpu-check lock lock-check results

setup: $(VENV)/.installed

# The torch line ends with the build installed: CPU, or CUDA and its version.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(PIP_LOCK) "$(TORCH_SPEC)" \
		$(if $(TORCH_INDEX_URL),--no-deps --index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install $(PIP_LOCK) -e ".[test]" || { echo "make setup: installing with" \
		"$(CONSTRAINTS) failed; it pins the Python version its second line names (other" \
		"Pythons: make setup CONSTRAINTS= installs unpinned)"; exit 1; }
	$(PY) -m pecn_ml.utils.cuda
	touch $@

lock: setup
	$(PY) .ci/lock.py freeze > constraints.txt.new && mv constraints.txt.new constraints.txt
	@echo "constraints.txt refreshed from $(VENV): commit it with the change that needed it"

lock-check: setup
	$(PY) .ci/lock.py check

# The install runs inside the recipe so that the wall time printed at the end covers all of it.
demo:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory setup && \
	PECN_PROFILE=demo OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pecn_assets.tools.demo; rc=$$?; \
	echo "make demo: $$(( $$(date +%s) - start ))s wall time in total (install, data, graph)"; exit $$rc

# Not part of `make test` (measured times: docs/OPERATIONS.md, "Rehearsal"). REHEARSE_ARGS: e.g. --keep.
REHEARSE_ARGS ?=
rehearse: setup
	@start=$$(date +%s); \
	$(PY) -m pecn_assets.tools.rehearse $(REHEARSE_ARGS); rc=$$?; \
	echo "make rehearse: $$(( $$(date +%s) - start ))s wall time in total"; exit $$rc

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" -n 2 --dist loadgroup $(PYTEST_ARGS)

test-slow: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "slow" $(PYTEST_ARGS)

# Through pecn_assets.tools.ui: started in the background (SIGINT ignored), dagster dev would ignore
# SIGINT and SIGTERM; with both reset it stops on either (docs/UI.md, "Stopping the UI").
# First sizes the gpu pool to the machine (pecn_assets/gpu_pool.py).
ui: setup
	$(PY) -m pecn_assets.gpu_pool && exec $(PY) -m pecn_assets.tools.ui $(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000

# Needs a CUDA GPU: without one it says why in one line and fails. About 5-8 minutes on one H100
# (more the first time: it builds the rehearsal's models). GPU_CHECK_ARGS: e.g. --train-videos 7412.
GPU_CHECK_ARGS ?=
gpu-check: setup
	@$(PY) -m pecn_ml.gpu_check $(GPU_CHECK_ARGS)

bench: setup
	$(PY) benchmarks/bench_frame_cache.py
	$(PY) benchmarks/bench_pix2pix.py

# docs/RESULTS.md from dagster_home (after `make demo`): every number from its latest materialisations,
# stamped with the commit and machine (pecn_assets/tools/results.py).
results: setup
	$(PY) -m pecn_assets.tools.results --out docs/RESULTS.md

clean-demo:
	rm -rf data/synthetic_sthv2 outputs/demo test_result/demo .tiny_models
	find dagster_home -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
