#!/usr/bin/env bash
# qwen2.5-32b: Russian vocabulary adaptation of Qwen/Qwen2.5-32B (+ Qwen/Qwen2.5-32B-Instruct).
# Hardware: 1 node × 8 GPUs (H100 80 GB); ZeRO-3.
# Launch:   bash recipes/qwen2.5-32b.sh                 (DRY_RUN=1 bash recipes/qwen2.5-32b.sh prints the commands)
# Multi-node: set HOSTFILE=/path/hostfile (lines 'host slots=8') and adjust grad_accum in the YAMLs.
# Pipeline: tokenizer → swap → CPT stage 1 (embeddings) → CPT stage 2 (LoRA) → LEP → calibration → eval
# (recipes/lib.sh); a relaunch skips finished steps and resumes training from the last checkpoint.
set -euo pipefail

BASE="${BASE:-/models/Qwen2.5-32B}"
INSTRUCT="${INSTRUCT:-/models/Qwen2.5-32B-Instruct}"
CORPUS="${CORPUS:-/data/ru_train.txt}"
REPLAY_CORPUS="${REPLAY_CORPUS:-/data/en_train.txt}"   # the base's own languages (English, code): CPT replays them
SFT_DATA="${SFT_DATA:-/data/ru_chat.jsonl}"
EVAL_RU="${EVAL_RU:-/data/ru_eval.txt}"
EVAL_EN="${EVAL_EN:-/data/en_eval.txt}"
RUN="${RUN:-runs/qwen2.5-32b}"
MODE="${MODE:-extend}"
NEW_TOKENS="${NEW_TOKENS:-48000}"
NUM_GPUS="${NUM_GPUS:-8}"
HOSTFILE="${HOSTFILE:-}"
CPT_STEPS="${CPT_STEPS:-2000}"    # × 256 sequences × 2048 tokens ≈ 1.0B tokens
CPT2_STEPS="${CPT2_STEPS:-1000}"
SFT_STEPS="${SFT_STEPS:-300}"
STAGE2="${STAGE2:-1}"
EVAL_ARGS="${EVAL_ARGS:---device cuda --dtype bfloat16}"
RECIPE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/qwen2.5-32b"

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ruadapt_pipeline
