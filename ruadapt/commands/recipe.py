"""``ruadapt recipe ls`` and ``ruadapt recipe cp NAME DEST [--set VAR=VALUE ...] [--force]``"""

from __future__ import annotations

import argparse

from ..recipe import SPEC_FILE, copy_recipe, list_recipes, recipe_env
from . import add_parser, path_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "recipe",
        help="list the recipes that ship with ruadapt, and copy one into a directory of your own",
        description="Recipes: the run YAMLs of a model's training stages, the DeepSpeed configs they use and the "
        "script that runs the whole pipeline (tokenizer → swap → CPT → LEP → SFT → eval), inside the package.",
        examples="ruadapt recipe ls\n"
        "ruadapt recipe cp qwen2.5-7b runs/qwen7b --set CORPUS=/data/ru_train.txt --set SFT_DATA=/data/ru_chat.jsonl",
    )
    rsub = p.add_subparsers(dest="recipe_command", metavar="SUBCOMMAND", required=True)

    ls = add_parser(
        rsub,
        "ls",
        help="the recipes: name, hardware, what they adapt",
        description="Every recipe that ships with this ruadapt, with the hardware it is sized for and a one-line "
        "description (from the header of its script).",
        examples="ruadapt recipe ls",
    )
    ls.set_defaults(func=run_ls)

    cp = add_parser(
        rsub,
        "cp",
        help="copy a recipe's YAMLs, DeepSpeed configs and script into DEST, with RUN and the defaults filled in",
        description="Write into DEST (new, empty, or holding none of the recipe's files) the recipe's run YAMLs, the "
        "DeepSpeed configs they name (DEST/deepspeed) and, for the GPU recipes, its pipeline script with lib.sh. "
        "In the copies ${RUN} is DEST (every output goes below it), ${DS_CONFIGS} is DEST/deepspeed, a variable "
        "whose default is a number (CPT_STEPS, ...) is that number, and --set VAR=VALUE sets any variable of the "
        "recipe (also the script's own: BASE, INSTRUCT, NUM_GPUS, ...). Data you bring (CORPUS, SFT_DATA, ...) "
        "not given with --set stays ${VAR}: ruadapt train reads it from the environment. The copies are then "
        "yours to edit; `ruadapt train --config DEST/X.yaml` runs them as written.",
        examples="""\
ruadapt recipe cp qwen2.5-7b runs/qwen7b --set CORPUS=/data/ru_train.txt --set SFT_DATA=/data/ru_chat.jsonl
ruadapt train --config runs/qwen7b/cpt-embeddings.yaml --config runs/qwen7b/cpt-lora.yaml --num-gpus 8
BASE=/models/Qwen2.5-7B INSTRUCT=/models/Qwen2.5-7B-Instruct bash runs/qwen7b/qwen2.5-7b.sh   # the whole pipeline
ruadapt recipe cp qwen2.5-7b runs/qwen7b --set CPT_STEPS=4000 --force   # replace the recipe's files, keep outputs
ruadapt recipe cp cpu-tiny /tmp/tiny --set CPT_STEPS=20                 # the demo's YAMLs (DS_ACCELERATOR=cpu)""",
    )
    cp.add_argument("name", metavar="NAME", help="recipe name, as `ruadapt recipe ls` lists it")
    cp.add_argument("dest", metavar="DEST", type=path_arg, help="directory for the copy (and, as RUN, for the outputs)")
    cp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="value of one of the recipe's ${VAR}s or script variables (repeat)",
    )
    cp.add_argument(
        "--force",
        action="store_true",
        help="replace the recipe's files where DEST already has them (other files in DEST stay)",
    )
    cp.set_defaults(func=run_cp)

    env = add_parser(
        rsub,
        "env",
        help="print a recipe's model and defaults as shell assignments (what recipes/lib.sh evaluates)",
        description="The variables of a model recipe (recipes/NAME/recipe.yaml, or DIR/recipe.yaml of a copy) as "
        "bash: each default only where the variable is empty, so the environment wins; a copy's fixed ones always; "
        "RECIPE = the directory of its run YAMLs. Without RECIPE: the pipeline's own defaults (MODE, NEW_TOKENS, "
        "NUM_GPUS, STAGE2, DISTILL_STEPS, CPT_STEPS, CPT2_STEPS, SFT_STEPS, STEPS). recipes/lib.sh runs this; the "
        "defaults live in ruadapt/recipe.py, once.",
        examples="ruadapt recipe env qwen2.5-7b\n"
        "ruadapt recipe env runs/qwen7b          # a copy made by ruadapt recipe cp\n"
        'eval "$(ruadapt recipe env qwen2.5-72b)"; echo "$HOSTFILE"',
    )
    env.add_argument(
        "recipe",
        metavar="RECIPE",
        nargs="?",
        default=None,
        help="a recipe name or a directory holding recipe.yaml (default: the pipeline's defaults only)",
    )
    env.set_defaults(func=run_env)


def run_ls(args: argparse.Namespace) -> int:
    recipes = list_recipes()
    rows = [("NAME", "HARDWARE", "DESCRIPTION")] + [(r.name, r.hardware or "-", r.description or "-") for r in recipes]
    w0, w1 = (max(len(row[i]) for row in rows) for i in (0, 1))
    for name, hardware, description in rows:
        print(f"{name:<{w0}}  {hardware:<{w1}}  {description}")
    print("\ncopy one to edit and run it: ruadapt recipe cp NAME DEST [--set VAR=VALUE ...]")
    return 0


def run_cp(args: argparse.Namespace) -> int:
    r = copy_recipe(args.name, args.dest, args.set, force=args.force)
    dest = r["dest"]
    print(
        f"{r['recipe']} -> {dest}: {' '.join(r['files'])}"
        + (f" ({len(r['replaced'])} replaced)" if r["replaced"] else "")
    )
    print("  filled in: " + " ".join(f"{k}={v}" for k, v in r["filled"].items()))
    if r["environment"]:
        print("  read from the environment when ruadapt train runs: " + " ".join(r["environment"]))
    print("next:")
    if r["environment"]:
        print("  export " + " ".join(f"{v}=..." for v in r["environment"]))
    yamls = [f for f in r["files"] if f.endswith(".yaml") and f != SPEC_FILE]
    print(f"  ruadapt train --config {dest}/{yamls[0]} --dry-run    # check it, then drop --dry-run")
    if r["script"]:
        print(f"  DRY_RUN=1 BASE=... INSTRUCT=... bash {dest}/{r['script']}    # the whole pipeline's commands")
    return 0


def run_env(args: argparse.Namespace) -> int:
    print(recipe_env(args.recipe), end="")
    return 0
