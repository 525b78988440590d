#!/usr/bin/env bash
# mistral-nemo-12b: recipes/lib.sh's pipeline (tokenizer → swap → CPT → LEP → calibration → eval) with the model,
# hardware and defaults of recipes/mistral-nemo-12b/recipe.yaml; a relaunch skips finished steps and resumes training.
# Launch: bash recipes/mistral-nemo-12b.sh  (DRY_RUN=1 prints the commands; BASE=... or any variable overrides)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ruadapt_recipe "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/mistral-nemo-12b"
