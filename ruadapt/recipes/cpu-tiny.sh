#!/usr/bin/env bash
# cpu-tiny: the whole ruadapt pipeline shrunk to a 2-core CPU — this is `make demo` (≈ 20 min), and with
# TOY=1 the smoke run inside `make test` (≈ 2-3 min). The same recipes/lib.sh pipeline the 8-GPU recipes run,
# with other variables, plus the steps a real adaptation gets for free (a base and an instruct model):
#
#   data → trimmed Qwen2.5 tokenizer → tiny Qwen2 base pretrained from scratch → "instruct" by full SFT
#   → [lib.sh: tokenizer extension → swap → CPT stage 1 (embeddings, DeepSpeed, 2 CPU processes)]
#   → LEP swap / overlap / conversion → short LoRA calibration of the best LEP → eval → report.md
#
# Hardware: any CPU (2 cores here).  Launch: make demo   (or: bash recipes/cpu-tiny.sh;  DRY_RUN=1 prints commands)
# Relaunching resumes: finished steps are skipped (their output exists), training continues from checkpoints.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"  # ruadapt/recipes, also when started as recipes/cpu-tiny.sh
ROOT="${ROOT:-$(cd "$HERE/../.." && pwd)}"               # the repository: runs/, tokenizers/, and ../shared beside it
SHARED="${SHARED:-$ROOT/../shared}"
if [ ! -d "$SHARED/data" ]; then
    echo "cpu-tiny: $SHARED/data not found (the team's shared/ folder beside the repository); set SHARED=/path/to/shared" >&2
    exit 2
fi
TOY="${TOY:-0}"
if [ "$TOY" = 1 ]; then RUN="${RUN:-$ROOT/runs/demo-toy}"; else RUN="${RUN:-$ROOT/runs/demo}"; fi
RUADAPT="${RUADAPT:-ruadapt}"
PYTHON="${PYTHON:-python}"
NUM_GPUS="${NUM_GPUS:-2}"               # CPU processes under the DeepSpeed launcher (gloo)
MASTER_PORT="${MASTER_PORT:-29517}"
export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
RU_TRAIN="$SHARED/data/ru_train.txt"
EN_TRAIN="$SHARED/data/en_train.txt"
RU_EVAL="$SHARED/data/ru_eval.txt"
PAIRS="$SHARED/data/ru_en_parallel.tsv"
BASE_TOKENIZER="${BASE_TOKENIZER:-$ROOT/tokenizers/qwen2.5-trim-ruen}"   # made on the spot when missing

if [ "$TOY" = 1 ]; then   # seconds per stage: every stage runs, nothing learns much
    HIDDEN=32 LAYERS=2 HEADS=2
    PRETRAIN_DOCS=3000 BASE_STEPS=8 SFT_DOCS=600 INSTRUCT_STEPS=6 HELDOUT=40
    NEW_TOKENS=300 CPT_STEPS=6 CALIB_STEPS=4 EVAL_LINES=40 SPEED_PROMPTS=2 SPEED_TOKENS=8 SPEED_ROUNDS=2
else
    HIDDEN="${HIDDEN:-192}" LAYERS="${LAYERS:-4}" HEADS="${HEADS:-4}"
    PRETRAIN_DOCS="${PRETRAIN_DOCS:-0}" BASE_STEPS="${BASE_STEPS:-200}" SFT_DOCS="${SFT_DOCS:-0}"
    INSTRUCT_STEPS="${INSTRUCT_STEPS:-150}" HELDOUT="${HELDOUT:-300}"
    NEW_TOKENS="${NEW_TOKENS:-8000}" CPT_STEPS="${CPT_STEPS:-150}" CALIB_STEPS="${CALIB_STEPS:-40}"
    EVAL_LINES="${EVAL_LINES:-400}" SPEED_PROMPTS="${SPEED_PROMPTS:-6}" SPEED_TOKENS="${SPEED_TOKENS:-48}"
    SPEED_ROUNDS="${SPEED_ROUNDS:-5}"
fi
export RUN RU_TRAIN EN_TRAIN PRETRAIN_DOCS BASE_STEPS SFT_DOCS INSTRUCT_STEPS CALIB_STEPS
export DS_CONFIGS="$HERE/deepspeed"
STEPS="${STEPS:-data basetok models tokenizer swap cpt lep calib eval report}"

# shellcheck source=lib.sh
source "$HERE/lib.sh"
launch=(--num-gpus "$NUM_GPUS" --master-port "$MASTER_PORT")
[ "${DRY_RUN:-0}" = 1 ] || mkdir -p "$RUN"
echo "# cpu-tiny demo in $RUN (TOY=$TOY)" >&2

# 1. chat tasks from the parallel pairs (held-out pairs fixed by hash)
if ruadapt_step data "$RUN/data"; then
    ruadapt_run "$PYTHON" "$HERE/cpu-tiny/make_chat_data.py" --pairs "$PAIRS" --out "$RUN/data" --heldout "$HELDOUT"
fi
# 2. the base tokenizer: Qwen2.5 trimmed to the tokens of ru/en train + chat text (a tiny model cannot afford
#    a 151,936-row softmax on CPU); the repo ships it, else it is made here
if [ ! -f "$BASE_TOKENIZER/tokenizer.json" ]; then
    BASE_TOKENIZER="$RUN/tokenizer-base"
    if ruadapt_step basetok "$BASE_TOKENIZER"; then
        ruadapt_cli trim --tokenizer "$SHARED/tokenizers/qwen2.5" \
            --corpus "$RU_TRAIN" "$EN_TRAIN" "$RUN/data/sft_train.jsonl" --out "$BASE_TOKENIZER"
    fi
fi
# 3-4. a tiny Qwen2 base pretrained from scratch on ru_train + en_train (stage full on a random init), and its
#      "instruct" model: full SFT on the chat tasks with the Qwen2.5 chat template — one launch, two runs
#      (a finished run is skipped on relaunch)
if ruadapt_step models "$RUN/instruct"; then
    [ -e "$RUN/init/config.json" ] || ruadapt_run "$PYTHON" "$HERE/cpu-tiny/init_model.py" --tokenizer "$BASE_TOKENIZER" \
        --out "$RUN/init" --hidden "$HIDDEN" --layers "$LAYERS" --heads "$HEADS"
    ruadapt_cli train --config "$HERE/cpu-tiny/pretrain.yaml" --config "$HERE/cpu-tiny/instruct.yaml" "${launch[@]}"
fi
# 5. the shared pipeline: +NEW_TOKENS Russian merges → swap → CPT stage 1 (embeddings only) → $RUN/cpt1
BASE="$RUN/base" INSTRUCT="$RUN/instruct" CORPUS="$RU_TRAIN" RECIPE="$HERE/cpu-tiny" STAGE2=0 SFT_DATA='' \
    NEW_TOKENS="$NEW_TOKENS" CPT_STEPS="$CPT_STEPS" NUM_GPUS="$NUM_GPUS" MASTER_PORT="$MASTER_PORT" \
    STEPS="$(for s in tokenizer swap cpt; do case " $STEPS " in *" $s "*) printf '%s ' "$s";; esac; done)" \
    ruadapt_pipeline
# 6. LEP with each method: base → instruct maps applied to the CPT'd embeddings
for method in swap overlap conversion; do
    if ruadapt_step lep "$RUN/lep-$method"; then
        ruadapt_cli lep --base "$RUN/base" --instruct "$RUN/instruct" --adapted "$RUN/cpt1" \
            --method "$method" --out "$RUN/lep-$method"
    fi
done
# 7. the paper's calibration: LoRA on the first/last layers + embeddings, small lr, on conversion
if ruadapt_step calib "$RUN/lep-conversion-calib"; then
    ruadapt_cli train --config "$HERE/cpu-tiny/sft.yaml" "${launch[@]}" \
        --set "model=$RUN/lep-conversion" --set "out=$RUN/lep-conversion-calib" \
        --set "data.train=[\"$RUN/data/sft_train.jsonl\"]" --set "train.max_steps=$CALIB_STEPS"
fi
# 8. eval: Russian bpb on held-out assistant answers (prompt as context) and on ru_eval; chars/token; speed
if ruadapt_step eval "$RUN/eval"; then
    models=(--model "instruct=$RUN/instruct" --model "cpt-no-lep=$RUN/cpt1")
    for m in swap overlap conversion; do models+=(--model "lep-$m=$RUN/lep-$m"); done
    [ -d "$RUN/lep-conversion-calib" ] || [ "${DRY_RUN:-0}" = 1 ] && models+=(--model "lep-conversion+calib=$RUN/lep-conversion-calib")
    ruadapt_cli eval "${models[@]}" --chat "ru_chat=$RUN/data/heldout_ru.jsonl" --text "ru=$RU_EVAL" \
        --max-lines "$EVAL_LINES" --window 256 --speed-prompts "$SPEED_PROMPTS" --new-tokens "$SPEED_TOKENS" \
        --speed-rounds "$SPEED_ROUNDS" --out "$RUN/eval"
fi
# 9. the Table-3-shaped report with a verdict
if ruadapt_step report "$RUN/report.md"; then
    ruadapt_run "$PYTHON" "$HERE/cpu-tiny/report.py" --run "$RUN"
fi
echo "# demo done: $RUN/report.md" >&2
