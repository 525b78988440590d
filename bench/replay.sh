#!/usr/bin/env bash
# bench/replay.sh — how much of the base's English CPT stage 1 must replay to keep it (issue 23, point 5).
#
# On the demo's models (a finished `make demo`, or recipes/cpu-tiny.sh run up to its cpt step): CPT stage 1 with
# the demo's own YAML (recipes/cpu-tiny/cpt-embeddings.yaml, 150 steps, 2 CPU processes), its data.train replaced
# by Russian (the demo's ru_train) mixed with a replay share of English (the demo's en_train, the base's other
# language) at each SHARE percent, then one `ruadapt eval` of the base (its own tokenizer), the swapped model before
# CPT and every CPT'd model on the same 300 lines of shared/data/ru_eval.txt and en_eval.txt, window 256 — the
# figures the demo's report and docs/replay.md quote. Bits per byte do not depend on the tokenizer.
#
#   RUN=runs/demo bash bench/replay.sh                    # SHARES="0 10 25 50" (percent of the sequences)
#   RUN=runs/demo SHARES="25" CPT_STEPS=150 bash bench/replay.sh
#   RUN=runs/demo SHARES="10 50" EVAL=0 MASTER_PORT=29619 bash bench/replay.sh   # a second launch beside the first
#
# Writes RUN/replay/cpt1-rSHARE (one CPT each; an existing one is kept), RUN/replay/eval (report.json) and prints
# the table (markdown). Relaunching reruns only what is missing. Needs ≈ 1-3 min per share on 2 cores.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${RUN:?set RUN to the demo run directory (e.g. runs/demo)}"
RUN="$(cd "$RUN" && pwd)"
SHARED="${SHARED:-$ROOT/../shared}"
SHARES="${SHARES:-0 10 25 50}"
CPT_STEPS="${CPT_STEPS:-150}"
LINES="${LINES:-300}"
RUADAPT="${RUADAPT:-ruadapt}"
MASTER_PORT="${MASTER_PORT:-29617}"
RU="$RUN/data/ru_train.txt" EN="$RUN/data/en_train.txt"
for f in "$RUN/base/config.json" "$RUN/swapped/config.json" "$RU" "$EN"; do
    [ -e "$f" ] || { echo "bench/replay.sh: $f not found (run recipes/cpu-tiny.sh up to its cpt step first)" >&2; exit 2; }
done
export RUN CORPUS="$RU" REPLAY_CORPUS="$EN" CPT_STEPS DS_CONFIGS="$ROOT/recipes/deepspeed" CPT_FROM="$RUN/swapped"
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false
read -r -a cli <<< "$RUADAPT"
mkdir -p "$RUN/replay"
models=(--model "base=$RUN/base" --model "swapped=$RUN/swapped")
for s in $SHARES; do
    out="$RUN/replay/cpt1-r$s"
    if [ ! -f "$out/ruadapt_train.json" ]; then
        if [ "$s" = 0 ]; then mix="[\"$RU\"]"; else mix="[{path: \"$RU\", weight: $((100 - s))}, {path: \"$EN\", weight: $s}]"; fi
        start=$SECONDS
        "${cli[@]}" train --config "$ROOT/recipes/cpu-tiny/cpt-embeddings.yaml" --num-gpus 2 --master-port "$MASTER_PORT" \
            --set "out=$out" --set "data.train=$mix"
        echo "# replay $s %: CPT $CPT_STEPS steps in $((SECONDS - start)) s" >&2
    fi
    models+=(--model "cpt-r$s=$out")
done
[ "${EVAL:-1}" = 1 ] || exit 0   # EVAL=0: train only (several shares in parallel launches, one eval after)
rm -rf "$RUN/replay/eval"
"${cli[@]}" eval "${models[@]}" --text "ru=$SHARED/data/ru_eval.txt" --text "en=$SHARED/data/en_eval.txt" \
    --max-lines "$LINES" --window 256 --speed-prompts 0 --out "$RUN/replay/eval"
"${PYTHON:-python}" - "$RUN/replay/eval/report.json" <<'EOF'
import json, sys
bpb = json.load(open(sys.argv[1]))["bpb"]
base = bpb["base"]
print("| model | ru bpb | Δ ru vs base | en bpb | Δ en vs base |\n|---|---:|---:|---:|---:|")
for m, r in bpb.items():
    d = {k: (r[k]["bpb"] / base[k]["bpb"] - 1) * 100 for k in ("ru", "en")}
    print(f"| {m} | {r['ru']['bpb']:.3f} | {d['ru']:+.1f} % | {r['en']['bpb']:.3f} | {d['en']:+.1f} % |")
EOF
