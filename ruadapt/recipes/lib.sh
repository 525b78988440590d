# shellcheck shell=bash
# recipes/lib.sh — the one pipeline every recipe runs; a model recipe = recipes/NAME/recipe.yaml (model, hardware,
# defaults) + its run YAMLs, started by recipes/NAME.sh (`source lib.sh; ruadapt_recipe DIR`).
#
#   tokenizer train → swap [→ distill] → CPT stage 1 (embeddings) [→ CPT stage 2 (LoRA)] → LEP → SFT/calibration → eval
#
# Required variables (a recipe.yaml gives them defaults; or set them in the environment before running):
#   BASE       base model dir (HF, safetensors)          INSTRUCT   its instruct model dir
#   CORPUS     Russian training text (one doc per line)  RUN        run directory (everything goes below it)
#   REPLAY_CORPUS  text in the base's own languages (English, code): the CPT YAMLs mix a share of it (docs/replay.md)
#   RECIPE     dir of the run YAMLs (cpt-embeddings.yaml, cpt-lora.yaml, sft.yaml; distill.yaml for DISTILL_STEPS)
# Optional, with their defaults in one place, ruadapt/recipe.py (`ruadapt recipe env [NAME]` prints them):
#   MODE NEW_TOKENS VOCAB_SIZE                        tokenizer (replace mode uses VOCAB_SIZE)
#   NUM_GPUS HOSTFILE MASTER_PORT                     DeepSpeed launch (HOSTFILE = multi-node)
#   CPT_STEPS CPT2_STEPS SFT_STEPS                    optimizer steps (read by the YAMLs as ${CPT_STEPS} ...)
#   STAGE2                                            0 = skip CPT stage 2 (LoRA); LEP then uses stage 1
#   SWAP_ARGS                                         extra `ruadapt swap` options (the untied model recipes:
#                                                     --init-output first, the rule that trains best, docs/init.md)
#   DISTILL_STEPS=0                                   > 0: step `distill` (RECIPE/distill.yaml, docs/distill.md)
#                                                     trains the new input rows from the base, that many steps,
#                                                     into RUN/distilled, and CPT starts from there; 0 = skip
#   LEP_LORA_DELTAS=0                                 1 = LEP also adds the stage-2 LoRA deltas to the instruct body
#   SFT_DATA                                          chat JSONL; empty = skip SFT/calibration
#   EVAL_RU EVAL_EN EVAL_CHAT= EVAL_ARGS              eval inputs (empty = that part skipped)
#   STEPS                                             run only some steps (their inputs must exist)
#   DRY_RUN=0                                         1 = print every command, run nothing
#   RUADAPT=ruadapt                                   the command to call (".venv/bin/ruadapt", "python -m ruadapt")
# Exported for the YAMLs: CPT_FROM, the model CPT stage 1 reads (model: ${CPT_FROM}) = RUN/swapped, or
# RUN/distilled when DISTILL_STEPS > 0.
# Relaunching a recipe resumes: finished steps are skipped (their output exists), CPT/SFT continue from
# their last complete checkpoint.

ruadapt_need() {  # ruadapt_need VAR... : fail early, in one line, when a required variable is empty
    local v
    for v in "$@"; do
        if [ -z "${!v:-}" ]; then
            echo "recipe: set $v (see the header of recipes/lib.sh)" >&2
            exit 2
        fi
    done
}

ruadapt_run() {  # print the command; run it unless DRY_RUN=1
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [ "${DRY_RUN:-0}" != 1 ]; then
        "$@"
    fi
}

ruadapt_cli() {  # ruadapt_cli SUBCOMMAND ARGS... : ruadapt_run with the command in $RUADAPT (may hold words,
    local -a cmd  #                                   e.g. "python -m ruadapt")
    read -r -a cmd <<< "${RUADAPT:-ruadapt}"
    ruadapt_run "${cmd[@]}" "$@"
}

ruadapt_step() {  # ruadapt_step NAME OUTPUT : true when step NAME is selected and OUTPUT is not there yet
    case " ${STEPS} " in *" $1 "*) ;; *) return 1 ;; esac
    if [ "${DRY_RUN:-0}" != 1 ] && [ -e "$2" ] && [ -n "$(ls -A "$2" 2>/dev/null)" ]; then
        echo "# $1: $2 exists, skipping" >&2
        return 1
    fi
    return 0
}

ruadapt_env() {  # ruadapt_env [RECIPE]: each variable the environment leaves empty gets its default, printed as
    local -a cmd  #   shell assignments by `ruadapt recipe env` (RECIPE: a name or a dir holding recipe.yaml)
    local assignments
    read -r -a cmd <<< "${RUADAPT:-ruadapt}"
    assignments="$("${cmd[@]}" recipe env "$@")" || exit 2  # the CLI has said what is wrong, in one line
    eval "$assignments"
}

ruadapt_recipe() {  # ruadapt_recipe DIR: the pipeline with DIR/recipe.yaml's model, defaults and run YAMLs
    ruadapt_env "$1"
    ruadapt_pipeline
}

ruadapt_pipeline() {
    : "${DRY_RUN:=0}" "${RUADAPT:=ruadapt}"
    ruadapt_env  # the pipeline's own defaults (MODE, NEW_TOKENS, NUM_GPUS, STAGE2, *_STEPS, STEPS)
    ruadapt_need BASE INSTRUCT CORPUS REPLAY_CORPUS RUN RECIPE
    RECIPES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    case "$DISTILL_STEPS" in
        '' | *[!0-9]*) echo "recipe: DISTILL_STEPS=$DISTILL_STEPS: a number of steps (0 = no distill step)" >&2; exit 2 ;;
    esac
    CPT_FROM="$RUN/swapped"
    if [ "$DISTILL_STEPS" -gt 0 ]; then
        CPT_FROM="$RUN/distilled"
        if [ ! -f "$RECIPE/distill.yaml" ]; then
            echo "recipe: DISTILL_STEPS=$DISTILL_STEPS but $RECIPE has no distill.yaml (docs/distill.md; a copy has it" \
                "when made with ruadapt recipe cp --set DISTILL_STEPS=N)" >&2
            exit 2
        fi
    fi
    # the YAMLs read these as ${VAR}
    export BASE INSTRUCT CORPUS REPLAY_CORPUS RUN SFT_DATA="${SFT_DATA:-}" CPT_STEPS CPT2_STEPS SFT_STEPS
    export DISTILL_STEPS CPT_FROM
    export DS_CONFIGS="$RECIPES_DIR/deepspeed"
    local launch=()
    [ -n "${NUM_GPUS:-}" ] && [ -z "${HOSTFILE:-}" ] && launch+=(--num-gpus "$NUM_GPUS")
    [ -n "${HOSTFILE:-}" ] && launch+=(--hostfile "$HOSTFILE")
    [ -n "${MASTER_PORT:-}" ] && launch+=(--master-port "$MASTER_PORT")
    [ "$DRY_RUN" = 1 ] || mkdir -p "$RUN"

    local tok_args=(--mode "$MODE")
    if [ "$MODE" = replace ]; then tok_args+=(--vocab-size "${VOCAB_SIZE:?set VOCAB_SIZE for MODE=replace}"); else tok_args+=(--new-tokens "$NEW_TOKENS"); fi
    if ruadapt_step tokenizer "$RUN/tokenizer"; then
        ruadapt_cli tokenizer train --base "$BASE" --corpus "$CORPUS" "${tok_args[@]}" --out "$RUN/tokenizer"
    fi
    if ruadapt_step swap "$RUN/swapped"; then
        # shellcheck disable=SC2086  # SWAP_ARGS is a list of extra options
        ruadapt_cli swap --model "$BASE" --tokenizer "$RUN/tokenizer" ${SWAP_ARGS:-} --out "$RUN/swapped"
    fi
    if [ "$DISTILL_STEPS" -gt 0 ] && ruadapt_step distill "$RUN/distilled"; then  # off by default (docs/distill.md)
        ruadapt_cli train --config "$RECIPE/distill.yaml" "${launch[@]}"
    fi
    local adapted="$RUN/cpt1" cpt=(--config "$RECIPE/cpt-embeddings.yaml")
    if [ "$STAGE2" = 1 ]; then
        adapted="$RUN/cpt2"
        cpt+=(--config "$RECIPE/cpt-lora.yaml")
    fi
    if ruadapt_step cpt "$adapted"; then  # both CPT stages in one launch; a finished stage 1 is skipped on relaunch
        ruadapt_cli train "${cpt[@]}" "${launch[@]}"
    fi
    if ruadapt_step lep "$RUN/lep"; then
        local lep_args=()
        [ "${LEP_LORA_DELTAS:-0}" = 1 ] && [ "$STAGE2" = 1 ] && lep_args+=(--lora-deltas "$RUN/cpt2/adapter")
        ruadapt_cli lep --base "$BASE" --instruct "$INSTRUCT" --adapted "$adapted" "${lep_args[@]}" --out "$RUN/lep"
    fi
    local final="$RUN/lep"
    if [ -n "${SFT_DATA:-}" ]; then
        final="$RUN/final"
        if ruadapt_step sft "$RUN/final"; then
            ruadapt_cli train --config "$RECIPE/sft.yaml" "${launch[@]}"
        fi
    fi
    if ruadapt_step eval "$RUN/eval"; then
        local ev=(--model "instruct=$INSTRUCT" --model "ruadapt=$final")
        [ -n "${EVAL_RU:-}" ] && ev+=(--text "ru=$EVAL_RU")
        [ -n "${EVAL_EN:-}" ] && ev+=(--text "en=$EVAL_EN")
        [ -n "${EVAL_CHAT:-}" ] && ev+=(--chat "ru_chat=$EVAL_CHAT")
        # shellcheck disable=SC2086  # EVAL_ARGS is a list of extra options
        ruadapt_cli eval "${ev[@]}" ${EVAL_ARGS:-} --out "$RUN/eval"
    fi
    echo "# done: $final" >&2
}
