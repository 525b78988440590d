# make demo  - create .venv if missing, run the whole pipeline on a tiny model on CPU (recipes/cpu-tiny.sh)
# make test  - create .venv if missing, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ruadapt-installed

.PHONY: venv test demo clean

venv: $(STAMP)

# torch first and pinned: an unpinned torch (or deepspeed first) pulls GBs of CUDA wheels
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	DS_ACCELERATOR=cpu $(PY) -m pytest -q tests

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash recipes/cpu-tiny.sh

clean:
	rm -rf runs/demo .pytest_cache
