# PECN: two commands on a fresh clone (see README):
#   make demo   set up, generate synthetic SSv2, materialise the whole asset graph into dagster_home/
#   make test   set up, run the test suite (the command CI runs)
#   make rehearse  the full profile's code path and model sizes (random weights, no hub) on a
#                  handful of synthetic videos; prints a table per asset (pecn_assets/rehearse.py)
VENV    ?= .venv
PY      := $(VENV)/bin/python
# The CPU build of torch on machines without a GPU; with CUDA, install your CUDA torch build
# into the venv first (make setup keeps an installed torch), or set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow ui bench clean-demo rehearse

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[test]"
	touch $@

# The install runs inside the recipe so that the wall time printed at the end covers all of it.
demo:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory setup && \
	PECN_PROFILE=demo OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pecn_assets.demo; rc=$$?; \
	echo "make demo: $$(( $$(date +%s) - start ))s wall time in total (install, data, graph)"; exit $$rc

# Not part of `make test` (about 25 minutes on 2 CPU cores). REHEARSE_ARGS: e.g. --keep.
REHEARSE_ARGS ?=
rehearse: setup
	@start=$$(date +%s); \
	$(PY) -m pecn_assets.rehearse $(REHEARSE_ARGS); rc=$$?; \
	echo "make rehearse: $$(( $$(date +%s) - start ))s wall time in total"; exit $$rc

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" -n 2 --dist loadgroup $(PYTEST_ARGS)

test-slow: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "slow" $(PYTEST_ARGS)

# Through pecn_assets.ui: started in the background (SIGINT ignored), dagster dev would ignore
# SIGINT and SIGTERM; with both reset it stops on either (docs/UI.md, "Stopping the UI").
ui: setup
	exec $(PY) -m pecn_assets.ui $(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000

bench: setup
	$(PY) benchmarks/bench_frame_cache.py
	$(PY) benchmarks/bench_pix2pix.py

clean-demo:
	rm -rf data/synthetic_sthv2 outputs/demo test_result/demo .tiny_models
	find dagster_home -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
