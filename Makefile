# ddkit: two commands for a fresh machine (Python 3.11 + pip): `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ddkit-installed
# Tests and notebooks pin BLAS/OpenMP threads to the machine (2 cores here).
export PYTHONHASHSEED := 0

.PHONY: install demo demo-all test test-fast bench gpu-check lab clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

install: $(STAMP)

## The main job: the quickstart notebook (DM vs random real vs herding, IPC 1) on the bundled data, then the report.
demo: $(STAMP)
	$(BIN)/ddkit sweep params/demo.yaml --workers 1
	$(BIN)/ddkit report --results results --out results/report

## Every notebook at a tiny CPU setting (one shared evaluation protocol), then the report.
demo-all: $(STAMP)
	$(BIN)/ddkit sweep params/demo_all.yaml --workers 2
	$(BIN)/ddkit report --results results --out results/report

## The whole suite: unit tests + every notebook executed at its tiny defaults (nbval).
test: $(STAMP)
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -q

## PUBLIC_DM=/path/to/DatasetCondensation adds the comparison with the public DM code (bench/public_dm.py).
bench: $(STAMP)
	$(BIN)/python -m bench $(if $(PUBLIC_DM),--public-dm $(PUBLIC_DM))

## On a CUDA machine (<= 8 min): the unit suite on CUDA, every notebook at its tiny defaults with device=cuda, and with
## PUBLIC_DM=/path/to/DatasetCondensation the comparison with the public DM code; JSON in results/bench/gpu_check.json.
gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check $(if $(PUBLIC_DM),--public-dm $(PUBLIC_DM))

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean-results:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
