# Two commands do all the set-up on a fresh clone:
#   make demo   -> .venv + install + quick Noisy-MNIST reproduction (a few minutes on 2 cores)
#   make test   -> .venv + install + the whole test suite
# Other targets: make reproduce (full Table I), make bench (scoring speed), make lint (ruff),
# make typecheck (mypy on src/); CONTRIBUTING.md says which to run when.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Pinned so that pip takes the local CPU build instead of pulling a multi-GB CUDA build.
# Override on a GPU machine, e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url ..."`.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed-stamp
# MNIST: $SPADECAM_DATA when set, else ../shared/data/mnist when it exists, else download into
# the cache.
SPADECAM_DATA ?= $(shell test -d ../shared/data/mnist && cd ../shared/data/mnist && pwd)
DATA_ARGS := $(if $(SPADECAM_DATA),--data-dir $(SPADECAM_DATA),--download)
OUT    ?= runs
# Training and scoring precision of the reproductions: auto (default: on CPUs with AMX or
# AVX512-BF16 the faster of bf16-mixed and fp32 training as measured on the model, and bf16
# scoring; else fp32) or 32 (exact fp32, as the 0.1 tables); docs/speed.md.
PRECISION ?= auto
export SPADECAM_DATA

.PHONY: install demo test test-fast reproduce reproduce-3seeds reproduce-elpv reproduce-elpv-quick tables examples bench lint typecheck clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/spadecam reproduce noisy-mnist --quick $(DATA_ARGS) --precision $(PRECISION) --out $(OUT)/demo --report $(OUT)/demo/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  # without the tests marked slow (DDP, subprocess, end-to-end)
	$(BIN)/python -m pytest -q -m "not slow"

reproduce: $(STAMP)
	$(BIN)/spadecam reproduce noisy-mnist $(DATA_ARGS) --precision $(PRECISION) --out $(OUT)/full

# The benchmark committed under benchmarks/results: recipe spadecam over 3 seeds with ablations
# and figures, then the paper recipe (one seed; its rows are appended to noisy_mnist.csv).
reproduce-3seeds: $(STAMP)
	$(BIN)/spadecam reproduce noisy-mnist --recipe spadecam --seeds 0,1,2 --ablations $(DATA_ARGS) --precision $(PRECISION) --out $(OUT)/spadecam-3seeds
	$(BIN)/spadecam reproduce noisy-mnist --recipe paper --seeds 0 $(DATA_ARGS) --precision $(PRECISION) --out $(OUT)/paper-1seed

# The ELPV benchmark (real solar-cell images, pip install -e '.[benchmarks]'): 3 seeds of the
# from-scratch recipe with its ablations, then 3 of the default pretrained one (with the
# one-class pretrained baseline); results committed under benchmarks/results (elpv*.csv, logs).
reproduce-elpv: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[benchmarks]'
	$(BIN)/spadecam reproduce elpv --recipe spadecam --seeds 0,1,2 --ablations --out $(OUT)/elpv-3seeds
	$(BIN)/spadecam reproduce elpv --recipe pretrained --seeds 0,1,2 --out $(OUT)/elpv-pretrained-3seeds

reproduce-elpv-quick: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[benchmarks]'
	$(BIN)/spadecam reproduce elpv --quick --out $(OUT)/elpv-quick

# Rewrite the result tables (README.md, docs/*.md: between their markers) from benchmarks/results/*.csv
tables: $(STAMP)
	$(BIN)/python benchmarks/make_tables.py

# The own-images walk-through of docs/own-images.md, run on the current code (about 1 min).
examples: $(STAMP)
	$(BIN)/python benchmarks/make_examples.py

bench: $(STAMP)  # Noisy-MNIST 84 px (bench_scoring.py), real sizes (bench_sizes.py), the pretrained backbone (bench_pretrained.py)
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_sizes.py
	$(BIN)/python benchmarks/bench_pretrained.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# mypy's settings (and the two libraries without type information) are in pyproject.toml
typecheck: $(STAMP)
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
