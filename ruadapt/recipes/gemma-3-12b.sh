#!/usr/bin/env bash
# gemma-3-12b: recipes/lib.sh's pipeline (tokenizer → swap → CPT → LEP → calibration → eval) with the model, hardware
# and defaults of recipes/gemma-3-12b/recipe.yaml; a relaunch skips finished steps and resumes training.
# Launch: bash recipes/gemma-3-12b.sh    (DRY_RUN=1 prints the commands; BASE=... or any variable before it overrides)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ruadapt_recipe "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/gemma-3-12b"
