# make demo  - create .venv if missing, run the whole pipeline on a tiny model on CPU (recipes/cpu-tiny.sh)
# make test  - create .venv if missing, fetch llama.cpp's converter (tests/test_gguf.py), make lint, run the test suite
#              without the tests marked slow (the maintainer's loop, ≤ 10 min on 2 cores; docs/testing.md)
# make test-all - the same with the slow tests too (every DeepSpeed launcher run, llama.cpp conversions, the README
#              quickstart): what CI runs (.ci/run)
# make lint  - ruff check, ruff format --check and mypy (settings in pyproject.toml)
# make llama-cpp - only fetch the converter: the llama-cpp-python sdist (no build), its vendor/llama.cpp unpacked
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ruadapt-installed

.PHONY: venv test test-all lint demo clean llama-cpp

# llama.cpp's convert_hf_to_gguf.py for `ruadapt gguf` tests: the llama-cpp-python sdist (76 MB) from PyPI, kept
# whole (bench/gguf_llama_cpp.py builds llama_cpp from it) and its converter unpacked beside it; nothing is compiled
LLAMA_CPP_PY ?= 0.3.36
LLAMA_CPP    := .cache/llama-cpp-python-$(LLAMA_CPP_PY)
LLAMA_CPP_OK := $(LLAMA_CPP)/vendor/llama.cpp/convert_hf_to_gguf.py

venv: $(STAMP)

# torch first and pinned: an unpinned torch (or deepspeed first) pulls GBs of CUDA wheels
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

llama-cpp: $(LLAMA_CPP_OK)

$(LLAMA_CPP_OK): | $(STAMP)
	rm -rf $(LLAMA_CPP).tmp && mkdir -p $(LLAMA_CPP).tmp
	$(PY) -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PY) -d $(LLAMA_CPP).tmp
	tar xzf $(LLAMA_CPP).tmp/llama_cpp_python-$(LLAMA_CPP_PY).tar.gz -C $(LLAMA_CPP).tmp --strip-components=1 \
	  $(addprefix llama_cpp_python-$(LLAMA_CPP_PY)/vendor/llama.cpp/,LICENSE convert_hf_to_gguf.py convert_hf_to_gguf_update.py conversion gguf-py)
	rm -rf $(LLAMA_CPP) && mv $(LLAMA_CPP).tmp $(LLAMA_CPP)

# two pytest-xdist workers, a test file each at a time (module fixtures stay whole; xdist hands out files with the
# most tests first); each DeepSpeed test file uses master ports of its own. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2

lint: $(STAMP)
	$(VENV)/bin/ruff check ruadapt tests bench
	$(VENV)/bin/ruff format --check ruadapt tests bench
	$(VENV)/bin/mypy

PYTEST = DS_ACCELERATOR=cpu RUADAPT_LLAMA_CPP=$(abspath $(LLAMA_CPP)) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: lint $(STAMP) $(LLAMA_CPP_OK)
	$(PYTEST) -m "not slow" tests

test-all: lint $(STAMP) $(LLAMA_CPP_OK)
	$(PYTEST) tests

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash recipes/cpu-tiny.sh

clean:
	rm -rf runs/demo .pytest_cache
