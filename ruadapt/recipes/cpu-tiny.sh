#!/usr/bin/env bash
# cpu-tiny: the whole ruadapt pipeline shrunk to a 2-core CPU — this is `make demo` (≈ 25 min), and with
# TOY=1 the smoke run inside `make test` (≈ 2-3 min). The same recipes/lib.sh pipeline the 8-GPU recipes run,
# with other variables, plus the steps a real adaptation gets for free (a base and an instruct model):
#
#   data (skills, held-out tasks) → Qwen2.5 tokenizer trimmed to 8,000 tokens → tiny Qwen2 base pretrained from
#   scratch → "instruct": the skills taught to the body by LoRA, then a short full SFT
#   → [lib.sh: tokenizer extension → swap (→ distill, with DISTILL_STEPS > 0) → CPT stage 1 (embeddings, DeepSpeed,
#   2 CPU processes)]
#   → LEP swap / overlap / conversion → short LoRA calibration of each → eval (skills, bpb, speed) → report.md
#
# Hardware: any CPU (2 cores here).  Launch: make demo   (or: bash recipes/cpu-tiny.sh;  DRY_RUN=1 prints commands)
# Relaunching resumes: finished steps are skipped (their output exists), training continues from checkpoints.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"  # ruadapt/recipes, also when started as recipes/cpu-tiny.sh
ROOT="${ROOT:-$(cd "$HERE/../.." && pwd)}"               # the repository: runs/, tokenizers/, and ../shared beside it
SHARED="${SHARED:-${RUADAPT_TEST_DATA:-$ROOT/../shared}}"   # the test data folder the tests read (docs/testing.md)
if [ ! -d "$SHARED/data" ]; then
    echo "cpu-tiny: $SHARED/data not found (the test data folder, docs/testing.md); set RUADAPT_TEST_DATA=/path/to/it" >&2
    exit 2
fi
TOY="${TOY:-0}"
if [ "$TOY" = 1 ]; then RUN="${RUN:-$ROOT/runs/demo-toy}"; else RUN="${RUN:-$ROOT/runs/demo}"; fi
RUADAPT="${RUADAPT:-ruadapt}"
PYTHON="${PYTHON:-python}"
NUM_GPUS="${NUM_GPUS:-2}"               # CPU processes under the DeepSpeed launcher (gloo)
MASTER_PORT="${MASTER_PORT:-29517}"
export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
RU_TRAIN="$RUN/data/ru_train.txt"    # shared/data/*_train.txt without the held-out sentences (make_data.py)
EN_TRAIN="$RUN/data/en_train.txt"
RU_EVAL="$SHARED/data/ru_eval.txt"
EN_EVAL="$SHARED/data/en_eval.txt"      # English next to Russian in every bpb figure (the base's other language)
PAIRS="$SHARED/data/ru_en_parallel.tsv"
BASE_TOKENIZER="${BASE_TOKENIZER:-$ROOT/tokenizers/qwen2.5-trim-ruen}"   # made on the spot when missing
BASE_VOCAB="${BASE_VOCAB:-8000}"        # its size: a small softmax makes every training step cheaper

if [ "$TOY" = 1 ]; then   # seconds per stage: every stage runs, nothing learns much
    HIDDEN=32 LAYERS=2 HEADS=2
    PRETRAIN_DOCS=3000 BASE_STEPS=8 SFT_DOCS=600 INSTRUCT_STEPS=6 INSTRUCT_FULL_STEPS=3 HELDOUT=40
    NEW_TOKENS=300 CPT_STEPS=6 CALIB_STEPS=4 CALIB="${CALIB:-conversion}" EVAL_LINES=40 SPEED_PROMPTS=2 SPEED_TOKENS=8 SPEED_ROUNDS=2
    START_LINES=40
else
    HIDDEN="${HIDDEN:-192}" LAYERS="${LAYERS:-4}" HEADS="${HEADS:-4}"
    PRETRAIN_DOCS="${PRETRAIN_DOCS:-0}" BASE_STEPS="${BASE_STEPS:-600}" SFT_DOCS="${SFT_DOCS:-20000}"
    INSTRUCT_STEPS="${INSTRUCT_STEPS:-400}" INSTRUCT_FULL_STEPS="${INSTRUCT_FULL_STEPS:-40}" HELDOUT="${HELDOUT:-100}"
    NEW_TOKENS="${NEW_TOKENS:-8000}" CPT_STEPS="${CPT_STEPS:-150}" CALIB_STEPS="${CALIB_STEPS:-100}"
    EVAL_LINES="${EVAL_LINES:-400}" SPEED_PROMPTS="${SPEED_PROMPTS:-6}" SPEED_TOKENS="${SPEED_TOKENS:-48}"
    START_LINES="${START_LINES:-300}"     # the start table: lines of ru_eval/en_eval (issue 23 measured on 300)
    SPEED_ROUNDS="${SPEED_ROUNDS:-5}"
fi
CALIB="${CALIB:-swap overlap conversion}"   # LEP variants calibrated (step 7)
SYSTEM="Ты полезный ассистент."        # the system prompt of the demo's chats (make_data.py)
export RUN RU_TRAIN EN_TRAIN PRETRAIN_DOCS BASE_STEPS SFT_DOCS INSTRUCT_STEPS INSTRUCT_FULL_STEPS CALIB_STEPS
export DS_CONFIGS="$HERE/deepspeed"
STEPS="${STEPS:-data basetok models tokenizer swap distill cpt lep calib eval start report}"

# shellcheck source=lib.sh
source "$HERE/lib.sh"
launch=(--num-gpus "$NUM_GPUS" --master-port "$MASTER_PORT")
[ "${DRY_RUN:-0}" = 1 ] || mkdir -p "$RUN"
echo "# cpu-tiny demo in $RUN (TOY=$TOY)" >&2

# 1. skills (copy, first/last word, language) as chats + held-out lm-eval tasks, pretraining text with repeats,
#    and ru/en train text without the held-out sentences (held-out pairs fixed by hash)
if ruadapt_step data "$RUN/data"; then
    ruadapt_run "$PYTHON" "$HERE/cpu-tiny/make_data.py" --pairs "$PAIRS" --ru-train "$SHARED/data/ru_train.txt" \
        --en-train "$SHARED/data/en_train.txt" --out "$RUN/data" --heldout "$HELDOUT"
fi
# 2. the base tokenizer: Qwen2.5 trimmed to the BASE_VOCAB most used tokens of ru/en train (a tiny
#    model cannot afford a 151,936-row softmax on CPU); the repo ships it, else it is made here
if [ ! -f "$BASE_TOKENIZER/tokenizer.json" ]; then
    BASE_TOKENIZER="$RUN/tokenizer-base"
    if ruadapt_step basetok "$BASE_TOKENIZER"; then
        ruadapt_cli trim --tokenizer "$SHARED/tokenizers/qwen2.5" \
            --corpus "$RU_TRAIN" "$EN_TRAIN" --keep-top "$BASE_VOCAB" --out "$BASE_TOKENIZER"
    fi
fi
# 3-4. a tiny Qwen2 base pretrained from scratch on ru_train + en_train (stage full on a random init), and its
#      "instruct" model: full SFT on the chat tasks with the Qwen2.5 chat template — one launch, two runs
#      (a finished run is skipped on relaunch)
if ruadapt_step models "$RUN/instruct"; then
    [ -e "$RUN/init/config.json" ] || ruadapt_run "$PYTHON" "$HERE/cpu-tiny/init_model.py" --tokenizer "$BASE_TOKENIZER" \
        --out "$RUN/init" --hidden "$HIDDEN" --layers "$LAYERS" --heads "$HEADS"
    ruadapt_cli train --config "$HERE/cpu-tiny/pretrain.yaml" --config "$HERE/cpu-tiny/instruct-body.yaml" \
        --config "$HERE/cpu-tiny/instruct.yaml" "${launch[@]}"
fi
# 5. the shared pipeline: +NEW_TOKENS Russian merges → swap → CPT stage 1 (embeddings only) → $RUN/cpt1; CPT
#    replays the base's English (en_train) beside the Russian, at the share cpt-embeddings.yaml gives. With
#    DISTILL_STEPS > 0 (default 0), distill.yaml trains the new input rows first and CPT starts from $RUN/distilled
BASE="$RUN/base" INSTRUCT="$RUN/instruct" CORPUS="$RU_TRAIN" REPLAY_CORPUS="$EN_TRAIN" RECIPE="$HERE/cpu-tiny" \
    STAGE2=0 SFT_DATA='' \
    NEW_TOKENS="$NEW_TOKENS" CPT_STEPS="$CPT_STEPS" NUM_GPUS="$NUM_GPUS" MASTER_PORT="$MASTER_PORT" \
    STEPS="$(for s in tokenizer swap distill cpt; do case " $STEPS " in *" $s "*) printf '%s ' "$s";; esac; done)" \
    ruadapt_pipeline
# 6. LEP with each method: base → instruct maps applied to the CPT'd embeddings
for method in swap overlap conversion; do
    if ruadapt_step lep "$RUN/lep-$method"; then
        ruadapt_cli lep --base "$RUN/base" --instruct "$RUN/instruct" --adapted "$RUN/cpt1" \
            --method "$method" --out "$RUN/lep-$method"
    fi
done
# 7. the paper's calibration (its Table 4): a short LoRA on the first/last layers + embeddings, small lr, on the
#    instruct model's own chat data, of each LEP variant in CALIB — and of the CPT'd base itself (the control: same
#    config and steps, no instruct body), so the report shows what the instruct body brings
for method in $CALIB cpt1; do
    from="$RUN/lep-$method" to="$RUN/lep-$method-calib"
    [ "$method" = cpt1 ] && from="$RUN/cpt1" to="$RUN/cpt1-calib"
    if ruadapt_step calib "$to"; then
        ruadapt_cli train --config "$HERE/cpu-tiny/sft.yaml" "${launch[@]}" \
            --set "model=$from" --set "out=$to" \
            --set "data.train=[\"$RUN/data/sft_train.jsonl\"]" --set "train.max_steps=$CALIB_STEPS"
    fi
done
# 8. eval: the skills as lm-eval generate_until tasks (exact match, chrF) through the chat template; Russian bpb on
#    held-out assistant answers (prompt as context), Russian and English bpb on ru_eval/en_eval; chars/token; speed
if ruadapt_step eval "$RUN/eval"; then
    models=(--model "instruct=$RUN/instruct" --model "cpt-no-lep=$RUN/cpt1")
    for m in swap overlap conversion; do models+=(--model "lep-$m=$RUN/lep-$m"); done
    for m in $CALIB; do
        [ -d "$RUN/lep-$m-calib" ] || [ "${DRY_RUN:-0}" = 1 ] && models+=(--model "lep-$m+calib=$RUN/lep-$m-calib")
    done
    [ -d "$RUN/cpt1-calib" ] || [ "${DRY_RUN:-0}" = 1 ] && models+=(--model "cpt-no-lep+calib=$RUN/cpt1-calib")
    ruadapt_cli eval "${models[@]}" --chat "ru_chat=$RUN/data/heldout_chat_ru.jsonl" --text "ru=$RU_EVAL" \
        --text "en=$EN_EVAL" \
        --include-path "$RUN/data/tasks" --tasks demo_copy,demo_first_word,demo_question,demo_lang \
        --system-instruction "$SYSTEM" --task-batch-size 16 --max-lines "$EVAL_LINES" --window 256 \
        --speed-prompts "$SPEED_PROMPTS" --new-tokens "$SPEED_TOKENS" --speed-rounds "$SPEED_ROUNDS" --out "$RUN/eval"
fi
# 8b. the start: the base with its own tokenizer, the swapped model before any training and the CPT'd one, on the same
#     held-out ru/en text (bits per byte do not depend on the tokenizer): what the new rows cost before CPT, what
#     CPT gave back, and what it cost the base's English
if ruadapt_step start "$RUN/eval-start"; then
    ruadapt_cli eval --model "base=$RUN/base" --model "swapped=$RUN/swapped" --model "cpt1=$RUN/cpt1" \
        --text "ru=$RU_EVAL" --text "en=$EN_EVAL" --max-lines "$START_LINES" --window 256 --speed-prompts 0 \
        --out "$RUN/eval-start"
fi
# 9. the Table-3-shaped report with a verdict
if ruadapt_step report "$RUN/report.md"; then
    ruadapt_run "$PYTHON" "$HERE/cpu-tiny/report.py" --run "$RUN"
fi
echo "# demo done: $RUN/report.md" >&2
