#!/usr/bin/env bash
# gemma-3-12b: Russian vocabulary adaptation of google/gemma-3-12b-pt (+ google/gemma-3-12b-it).
# Hardware: 1 node × 8 GPUs (A100/H100 80 GB).
# Launch:   bash recipes/gemma-3-12b.sh                 (DRY_RUN=1 bash recipes/gemma-3-12b.sh prints the commands)
# Multi-node: set HOSTFILE=/path/hostfile (lines 'host slots=8') and adjust grad_accum in the YAMLs.
# Gemma-3-12B ships as a vision-language checkpoint (model_type gemma3); ruadapt works on the text model
# (model_type gemma3_text): save Gemma3ForCausalLM's language model as BASE / INSTRUCT first.
# Pipeline: tokenizer → swap → CPT stage 1 (embeddings) → CPT stage 2 (LoRA) → LEP → calibration → eval
# (recipes/lib.sh); a relaunch skips finished steps and resumes training from the last checkpoint.
set -euo pipefail

BASE="${BASE:-/models/gemma-3-12b-pt}"
INSTRUCT="${INSTRUCT:-/models/gemma-3-12b-it}"
CORPUS="${CORPUS:-/data/ru_train.txt}"
REPLAY_CORPUS="${REPLAY_CORPUS:-/data/en_train.txt}"   # the base's own languages (English, code): CPT replays them
SFT_DATA="${SFT_DATA:-/data/ru_chat.jsonl}"
EVAL_RU="${EVAL_RU:-/data/ru_eval.txt}"
EVAL_EN="${EVAL_EN:-/data/en_eval.txt}"
RUN="${RUN:-runs/gemma-3-12b}"
MODE="${MODE:-extend}"
NEW_TOKENS="${NEW_TOKENS:-48000}"
NUM_GPUS="${NUM_GPUS:-8}"
HOSTFILE="${HOSTFILE:-}"
CPT_STEPS="${CPT_STEPS:-2000}"    # × 256 sequences × 2048 tokens ≈ 1.0B tokens
CPT2_STEPS="${CPT2_STEPS:-1000}"
SFT_STEPS="${SFT_STEPS:-300}"
STAGE2="${STAGE2:-1}"
EVAL_ARGS="${EVAL_ARGS:---device cuda --dtype bfloat16}"
RECIPE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/gemma-3-12b"

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ruadapt_pipeline
