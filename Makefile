# smalllm — one command per job; each installs first when .venv/ is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# A PyTorch wheel index selects the build, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?=
# pytest-xdist workers for `make test`/`test-fast`: the suite is mostly process start-up and
# subprocess waits, so two workers on 2 cores halve its wall time (PYTEST_WORKERS=0: one process).
PYTEST_WORKERS ?= 2

.PHONY: install lower-bound test test-fast demo bench bench-gpu lint format clean toy

# The torch step runs on every `make install` (it is idempotent), so TORCH_INDEX takes effect on an
# installed environment too, and a GPU machine with a CPU torch is told which command fixes it.
install: $(STAMP)
	@sh scripts/install_torch.sh $(BIN) $(TORCH_VERSION) "$(TORCH_INDEX)"

# torch is pinned first: a bare `torch` requirement would pull a multi-GB CUDA wheel.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	sh scripts/install_torch.sh $(BIN) $(TORCH_VERSION) "$(TORCH_INDEX)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The lowest transformers pyproject.toml allows, installed beside the venv (not into it): the test of
# tests/test_hub.py loads a checkpoint with it, laid over the venv's torch by PYTHONPATH (~15 s, 110 MB).
LOWER_BOUND := $(VENV)/lower-bound
lower-bound: $(LOWER_BOUND)/.installed
$(LOWER_BOUND)/.installed: $(STAMP)
	$(BIN)/pip install --quiet --no-deps --target $(LOWER_BOUND) \
		"transformers==4.46.*" "tokenizers==0.20.*" "huggingface-hub>=0.23.2,<1.0"
	touch $@

test: install lower-bound
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) tests

test-fast: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" tests

demo: install
	$(BIN)/smalllm demo

# The linear-mixture toy's four experiments on the quick preset (docs/toy.md); figures in runs/toy-quick/report.
toy: install
	$(BIN)/smalllm toy all --preset quick --out runs/toy-quick --overwrite

bench: install
	$(BIN)/python scripts/bench.py

# On a CUDA machine: 20m/300m/1b at context 2048, with and without compile and activation checkpointing
# (README "GPU benchmark"). Without a GPU: `$(BIN)/python scripts/bench_gpu.py --dry-run` prints the estimates.
bench-gpu: install
	$(BIN)/python scripts/bench_gpu.py

lint: install
	$(BIN)/ruff check smalllm scripts tests
	$(BIN)/ruff format --check smalllm scripts tests

format: install
	$(BIN)/ruff format smalllm scripts tests
	$(BIN)/ruff check --fix smalllm scripts tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
