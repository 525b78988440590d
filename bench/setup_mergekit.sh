#!/usr/bin/env bash
# The peer tool for bench/swap.py, in its own venv (torch pinned first so no CUDA wheels are pulled).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv-mergekit
.venv-mergekit/bin/pip install -q torch==2.13.0
.venv-mergekit/bin/pip install -q mergekit==0.1.5 transformers==5.24.0 tokenizers==0.23.3
