"""The recipes that ship inside the package (``ruadapt/recipes``): list them, and copy one into a directory of
its own with the ``${VAR}`` values its run YAMLs read filled in, so that the copies run as written.

A recipe NAME is ``recipes/NAME/*.yaml`` (the run YAMLs of its training stages) and, for a model recipe,
``recipes/NAME/recipe.yaml`` (:class:`RecipeSpec`: description, hardware, base and instruct model, the defaults
where it differs from :class:`ModelDefaults`) with ``recipes/NAME.sh`` that runs the whole pipeline
(tokenizer → swap → [distill →] CPT → LEP → SFT → eval) of ``recipes/lib.sh`` on it. lib.sh reads the recipe through
``ruadapt recipe env``, which prints shell assignments (:func:`shell_assignments`): the defaults live here, once,
and a new model is one recipe.yaml plus its run YAMLs. In the package the YAMLs read paths and step counts from
the environment, which lib.sh exports; a copy has them written in:

- ``RUN`` (where every output goes) = DEST, and ``DS_CONFIGS`` = DEST/deepspeed, where the DeepSpeed configs
  the YAMLs name are copied;
- a variable whose default (:class:`ModelDefaults`) is a number (step counts, document caps) = that number;
- ``CPT_FROM`` (the model CPT stage 1 starts from) = DEST/distilled when ``DISTILL_STEPS`` > 0, else DEST/swapped
  (lib.sh exports it by the same rule); ``distill.yaml`` is left out with ``DISTILL_STEPS`` = 0, the default:
  lib.sh skips that step, and its ``max_steps`` would be 0, which ``ruadapt train`` refuses;
- ``--set VAR=VALUE`` = VALUE (also for the recipe's own variables: BASE, INSTRUCT, NUM_GPUS, ...);
- data the user brings (``CORPUS``, ``SFT_DATA``, ...) stays ``${VAR}``: ``ruadapt train`` reads it from the
  environment and names file, key and variable in one line when it is not set.

The script and recipe.yaml are copied too (beside lib.sh) for a model recipe; in the copied recipe.yaml the
filled-in variables are ``fixed`` to the values in the YAMLs, so script and YAMLs cannot disagree about where the
outputs are. ``cpu-tiny.sh`` (the repository's demo, ``make demo``) drives the repository's data and helper
scripts and is not copied.

Files are read through :mod:`importlib.resources`, never relative to a checkout, so an installed ruadapt finds
them. Existing files are not overwritten without ``force``; the copy is written into a temporary folder first
(:mod:`ruadapt.io.outdir`).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml

from . import __version__
from .errors import RuadaptError
from .io.outdir import atomic_files_into, atomic_output_dir
from .schema import build

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # as ruadapt/train/config.py expands them
FIXED = ("RUN", "DS_CONFIGS")  # written by recipe cp itself
DERIVED = ("DS_CONFIGS", "CPT_FROM")  # recipe cp writes them from RUN (and DISTILL_STEPS); never --set
DISTILL_FILE = "distill.yaml"  # the optional step between swap and CPT (lib.sh runs it when DISTILL_STEPS > 0)
SPEC_FILE = "recipe.yaml"


@dataclass
class PipelineDefaults:
    """The defaults of lib.sh's ``ruadapt_pipeline`` for every caller (the demo's cpu-tiny.sh too): printed by
    ``ruadapt recipe env``, applied to each variable the environment leaves empty."""

    MODE: Literal["extend", "replace"] = "extend"
    NEW_TOKENS: int = 48000
    NUM_GPUS: int = 8
    STAGE2: Literal["0", "1"] = "1"
    DISTILL_STEPS: int = 0  # > 0: distill the new input rows (docs/distill.md) that many steps; CPT starts from them
    SWAP_ARGS: str = ""  # extra `ruadapt swap` options, e.g. the init rules (empty: swap's defaults, docs/init.md)
    CPT_STEPS: int = 2000  # × 256 sequences × 2048 tokens ≈ 1.0B tokens
    CPT2_STEPS: int = 1000
    SFT_STEPS: int = 300
    STEPS: str = "tokenizer swap distill cpt lep sft eval"  # distill runs only when DISTILL_STEPS > 0


@dataclass
class ModelDefaults(PipelineDefaults):
    """What a model recipe adds: where the data is, where the run goes, the eval options for a GPU node.
    ``RUN`` empty = ``runs/NAME``."""

    CORPUS: str = "/data/ru_train.txt"
    REPLAY_CORPUS: str = "/data/en_train.txt"  # the base's own languages (English, code): CPT replays them
    SFT_DATA: str = "/data/ru_chat.jsonl"
    EVAL_RU: str = "/data/ru_eval.txt"
    EVAL_EN: str = "/data/en_eval.txt"
    RUN: str = ""
    HOSTFILE: str = ""
    EVAL_ARGS: str = "--device cuda --dtype bfloat16"


@dataclass
class RecipeSpec:
    """``recipes/NAME/recipe.yaml``, through the schema (a misspelt key or variable is an error)."""

    description: str
    hardware: str
    base: str
    instruct: str
    notes: list[str] = field(default_factory=list)  # shown by `ruadapt recipe ls`-readers and the docs, not used
    defaults: ModelDefaults = field(default_factory=ModelDefaults)  # only where this model differs
    fixed: list[str] = field(default_factory=list)  # variables the environment may not override (a copy's RUN)

    def values(self, name: str) -> dict[str, str]:
        """Every variable the recipe gives lib.sh, as text: BASE, INSTRUCT and the defaults."""
        out = {"BASE": self.base, "INSTRUCT": self.instruct}
        out.update({f.name: str(getattr(self.defaults, f.name)) for f in fields(self.defaults)})
        out["RUN"] = out["RUN"] or f"runs/{name}"
        return out


def read_spec(path: Path | Traversable) -> RecipeSpec:
    """A recipe.yaml as :class:`RecipeSpec`; every problem one line naming the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise RuadaptError(f"{path}: cannot read it as YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise RuadaptError(f"{path}: expected a mapping (description, hardware, base, instruct, defaults)")
    try:
        return build(RecipeSpec, raw, "")
    except RuadaptError as e:
        raise RuadaptError(*(f"{path}: {line}" for line in e.lines)) from None


def shell_assignments(
    values: dict[str, str], fixed: AbstractSet[str] = frozenset(), recipe_dir: str | None = None
) -> str:
    """``values`` as bash that lib.sh evaluates: a default only where the variable is empty (the environment
    wins), a fixed one always; quoted by :func:`shlex.quote`, so any value survives as written."""
    lines = [
        f"{var}={shlex.quote(value)}" if var in fixed else f'[ -n "${{{var}:-}}" ] || {var}={shlex.quote(value)}'
        for var, value in values.items()
    ]
    if recipe_dir is not None:
        lines.append(f"RECIPE={shlex.quote(recipe_dir)}")
    return "\n".join(lines) + "\n"


def recipe_env(recipe: str | None) -> str:
    """What ``ruadapt recipe env [RECIPE]`` prints: without one, lib.sh's pipeline defaults; with a shipped
    recipe's name or a directory holding recipe.yaml (a copy), its model, its defaults and ``RECIPE`` = that
    directory (where its run YAMLs are)."""
    if recipe is None:
        return shell_assignments({f.name: str(f.default) for f in fields(PipelineDefaults)})
    folder = Path(recipe).expanduser()
    if (folder / SPEC_FILE).is_file():
        where = os.path.abspath(folder)  # as given: a checkout's recipes/ is a link, and its path is the one shown
        spec, name = read_spec(folder / SPEC_FILE), Path(where).name
    else:
        if recipe not in recipe_names():
            raise RuadaptError(
                f"{recipe}: neither a directory holding {SPEC_FILE} nor a recipe; recipes: "
                f"{', '.join(recipe_names())} (ruadapt recipe ls)"
            )
        if not (recipes_dir() / recipe / SPEC_FILE).is_file():
            raise RuadaptError(f"recipe {recipe} has no {SPEC_FILE}: it is not a model recipe for lib.sh")
        spec, name, where = read_spec(recipes_dir() / recipe / SPEC_FILE), recipe, str(recipes_dir() / recipe)
    return shell_assignments(spec.values(name), set(spec.fixed), where)


def recipes_dir() -> Traversable:
    """``ruadapt/recipes`` of the installed package (a checkout's ``recipes/`` is a link to it)."""
    return resources.files("ruadapt") / "recipes"


@dataclass
class Recipe:
    """One recipe as shipped: its YAMLs, the DeepSpeed configs they name, its script and the script's defaults."""

    name: str
    description: str
    hardware: str
    yamls: dict[str, str]  # file name -> text
    deepspeed: list[str]  # file names in recipes/deepspeed
    script: str | None  # NAME.sh, when it is a lib.sh pipeline that can run from a copy (it has a recipe.yaml)
    defaults: dict[str, str] = field(default_factory=dict)  # VAR -> default (recipe.yaml over ModelDefaults)
    script_vars: list[str] = field(default_factory=list)  # the variables recipe.yaml gives lib.sh (BASE, ...)
    spec: RecipeSpec | None = None

    @property
    def variables(self) -> list[str]:
        """The ${VAR}s the YAMLs read (comments aside), in order of appearance."""
        return list(dict.fromkeys(v for text in self.yamls.values() for v in _variables(text)))

    @property
    def settable(self) -> list[str]:
        """What ``--set`` may give: the YAMLs' variables and, with a copied script, the script's own."""
        names = self.variables + (self.script_vars if self.script else [])
        return sorted(set(names) - set(DERIVED))

    def deepspeed_of(self, files: list[str]) -> list[str]:
        """The DeepSpeed configs that these of its YAMLs name."""
        return _deepspeed_names(self.yamls[f] for f in files if f in self.yamls)


def _deepspeed_names(texts: Iterable[str]) -> list[str]:
    return sorted({m for text in texts for m in re.findall(r"\$\{DS_CONFIGS\}/([\w.-]+)", text)})


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _variables(text: str) -> list[str]:
    return [m.group(1) for line in text.splitlines() if not _is_comment(line) for m in VAR.finditer(line)]


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _header(text: str, name: str) -> tuple[str, str]:
    """(description, hardware) from a recipe file's header comment: ``# NAME: description`` (up to a " — " or
    the line's end) and ``# Hardware: ...`` (up to two spaces)."""
    description = hardware = ""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if not description and body.startswith(f"{name}:"):
            description = body[len(name) + 1 :].split(" — ")[0].strip().rstrip(".")
        elif body.startswith("Hardware:"):
            hardware = body[len("Hardware:") :].split("  ")[0].strip().rstrip(".")
    return description, hardware


def _recipe_line(name: str) -> str:
    return f'ruadapt_recipe "$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)/{name}"'


def load_recipe(name: str) -> Recipe:
    """The shipped recipe ``name``; a one-line error listing the recipes for an unknown one."""
    names = recipe_names()
    if name not in names:
        raise RuadaptError(f"recipe {name!r} not found; recipes: {', '.join(names)} (ruadapt recipe ls)")
    root = recipes_dir()
    files = sorted(
        (f for f in (root / name).iterdir() if f.name.endswith(".yaml") and f.name != SPEC_FILE), key=lambda f: f.name
    )
    yamls = {f.name: f.read_text(encoding="utf-8") for f in files}
    ds = _deepspeed_names(yamls.values())
    if not (root / name / SPEC_FILE).is_file():  # the demo: its description is its first YAML's header
        description, hardware = _header(next(iter(yamls.values())), name)
        return Recipe(name, description, hardware, yamls, ds, None)
    spec = read_spec(root / name / SPEC_FILE)
    values = spec.values(name)
    return Recipe(name, spec.description, spec.hardware, yamls, ds, f"{name}.sh", values, list(values), spec)


def recipe_names() -> list[str]:
    """Every folder of ``ruadapt/recipes`` that holds run YAMLs (``deepspeed/`` holds JSON only)."""
    folders = [f for f in recipes_dir().iterdir() if f.is_dir()]
    return sorted((f.name for f in folders if any(g.name.endswith(".yaml") for g in f.iterdir())), key=_natural)


def list_recipes() -> list[Recipe]:
    return [load_recipe(n) for n in recipe_names()]


def parse_settings(items: list[str], recipe: Recipe) -> dict[str, str]:
    """``["CORPUS=/data/ru.txt", ...]`` -> dict; only variables the recipe has."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RuadaptError(f"--set {item}: expected VAR=VALUE, e.g. --set CORPUS=/data/ru_train.txt")
        if key not in recipe.settable:
            what = {
                "DS_CONFIGS": "is DEST/deepspeed, set by ruadapt recipe cp",
                "CPT_FROM": "is RUN/swapped, or RUN/distilled with DISTILL_STEPS > 0, set by ruadapt recipe cp",
            }.get(key, f"recipe {recipe.name} has no such variable")
            raise RuadaptError(
                f"--set {key}: {what}; its variables: {', '.join(recipe.settable)} "
                "(YAML values: edit the copied files, or `ruadapt train --set KEY=VALUE`)"
            )
        out[key] = value
    return out


def resolve_values(recipe: Recipe, dest: Path, settings: dict[str, str]) -> dict[str, str]:
    """Every variable the copy fills in: RUN and DS_CONFIGS, numeric defaults, then ``--set`` over all of them."""
    values = {"RUN": str(dest), "DS_CONFIGS": str(dest / "deepspeed")}
    for var in recipe.variables:
        default = recipe.defaults.get(var, "")
        if var not in FIXED and re.fullmatch(r"\d+", default):
            values[var] = default
    values.update(settings)
    if "RUN" in settings:  # the YAMLs are read from anywhere: a relative RUN would move with the working directory
        values["RUN"] = str(Path(settings["RUN"]).expanduser().resolve())
    if "CPT_FROM" in recipe.variables:  # as lib.sh exports it
        values["CPT_FROM"] = f"{values['RUN']}/{'distilled' if _distill_steps(values) else 'swapped'}"
    return values


def _distill_steps(values: dict[str, str]) -> int | None:
    """``DISTILL_STEPS`` as written into the copy (0 = lib.sh skips the distill step); None when the copy leaves
    it to the environment (the demo, which has no recipe.yaml): its distill.yaml is copied, and its CPT starts
    from RUN/swapped, lib.sh's default."""
    steps = values.get("DISTILL_STEPS", "")
    return int(steps) if steps.isdigit() else None


def _substitute(text: str, values: dict[str, str]) -> str:
    return VAR.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _expanded(value: Any, values: dict[str, str]) -> Any:
    """What ruadapt/train/config.py reads from the original YAML with ``values`` in the environment."""
    if isinstance(value, str):
        return _substitute(value, values)
    if isinstance(value, list):
        return [_expanded(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _expanded(v, values) for k, v in value.items()}
    return value


def _plain(x: Any) -> Any:
    """Scalars as text: ``max_steps: ${CPT_STEPS}`` reads as a string, ``max_steps: 2000`` as a number; both
    are 2000 once the config is built."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x if x is None else str(x)


def _rewrite_paths(text: str, recipe: Recipe, dest: Path) -> str:
    """The comments' paths (``recipes/NAME/x.yaml``, and ``recipes/NAME.sh``, ``recipes/lib.sh`` where the script
    is copied too) as in the copy."""
    text = text.replace(f"recipes/{recipe.name}/", f"{dest}/")
    if recipe.script:
        text = text.replace(f"recipes/{recipe.name}.sh", f"{dest}/{recipe.name}.sh")
        text = text.replace("recipes/lib.sh", f"{dest}/lib.sh")
    return text


def copy_yaml(recipe: Recipe, file: str, dest: Path, values: dict[str, str]) -> str:
    """One run YAML with ``values`` written in and a header saying so. Checked to read back exactly as the
    original reads with those values in the environment: a value that YAML would read otherwise (a ' #' that
    starts a comment, a quote) is refused rather than written."""
    original = recipe.yamls[file]
    body = "".join(
        line if _is_comment(line) else _substitute(line, values)
        for line in original.splitlines(keepends=True)
        if "is read from the environment)" not in line
    )  # the package's note; the header below replaces it
    used = list(dict.fromkeys(_variables(original)))
    filled = [f"{v}={values[v]}" for v in used if v in values]
    left = [v for v in used if v not in values]
    head = f"# copied by `ruadapt recipe cp {recipe.name}` (ruadapt {__version__}); filled in: {', '.join(filled)}\n"
    if left:
        head += (
            f"# read from the environment when ruadapt train runs: {' '.join('${' + v + '}' for v in left)} "
            f"(export, or copy again with --set {left[0]}=...)\n"
        )
    text = head + _rewrite_paths(body, recipe, dest)
    if _plain(yaml.safe_load(text)) != _plain(_expanded(yaml.safe_load(original), values)):
        given = ", ".join(f"{v}={values[v]!r}" for v in used if v in values)
        raise RuadaptError(
            f"recipe {recipe.name}/{file}: a value does not read back as written in YAML ({given}); "
            "avoid quotes, ': ' and ' #' in it"
        )
    return text


def copy_script(recipe: Recipe, dest: Path) -> str:
    """NAME.sh for the copy: it runs the recipe.yaml and run YAMLs beside it."""
    text = (recipes_dir() / f"{recipe.name}.sh").read_text(encoding="utf-8")
    here = 'ruadapt_recipe "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"  # recipe.yaml and the YAMLs beside this'
    text = text.replace(_recipe_line(recipe.name), here)
    note = (
        f"# copied by `ruadapt recipe cp {recipe.name}` (ruadapt {__version__}): recipe.yaml and the run YAMLs "
        "beside this script are the ones it runs.\n"
    )
    first, rest = text.split("\n", 1)
    return _rewrite_paths(f"{first}\n{note}{rest}", recipe, dest)


def copy_spec(recipe: Recipe, values: dict[str, str], own: dict[str, str], used: list[str]) -> str:
    """recipe.yaml for the copy: the variables the copied YAMLs (their ``${VAR}``s: ``used``) now hold are
    ``fixed`` to those values (script and YAMLs cannot disagree on RUN); ``own`` (``--set`` of the recipe's own
    variables, e.g. BASE) become its defaults, still overridable from the environment. Dumped by yaml and read back
    through the schema, so any value survives as written."""
    assert recipe.spec is not None
    held = {v: values[v] for v in recipe.script_vars if v in values and (v in used or v == "RUN")}
    given = {**held, **own}
    data = {
        "description": recipe.spec.description,
        "hardware": recipe.spec.hardware,
        "base": given.pop("BASE", recipe.spec.base),
        "instruct": given.pop("INSTRUCT", recipe.spec.instruct),
        "notes": recipe.spec.notes,
        "defaults": {k: v for k, v in {**recipe.defaults, **given}.items() if k not in ("BASE", "INSTRUCT")},
        "fixed": sorted(held),
    }
    head = (
        f"# copied by `ruadapt recipe cp {recipe.name}` (ruadapt {__version__}); {', '.join(sorted(held))} are "
        "fixed to what the run YAMLs beside it hold (edit them, or copy again with --set)\n"
    )
    text = head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)
    read_spec_text(text, f"recipe {recipe.name}/{SPEC_FILE}")
    return text


def read_spec_text(text: str, where: str) -> RecipeSpec:
    """:func:`read_spec` of text not yet written (the copy's recipe.yaml is checked before it exists)."""
    raw = yaml.safe_load(text)
    try:
        return build(RecipeSpec, raw, "")
    except RuadaptError as e:
        raise RuadaptError(*(f"{where}: {line}" for line in e.lines)) from None


def copy_recipe(name: str, dest: Path, settings: list[str] | tuple[str, ...] = (), *, force: bool = False) -> dict:
    """Copy recipe ``name`` into ``dest`` (see the module docstring); returns what was written and filled in."""
    recipe = load_recipe(name)
    given = parse_settings(list(settings), recipe)
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise RuadaptError(f"{dest}: DEST exists and is not a directory")
    values = resolve_values(recipe, dest, given)
    root = recipes_dir()
    skip = {DISTILL_FILE} if _distill_steps(values) == 0 else set()  # the step is off in this copy
    files = {f: copy_yaml(recipe, f, dest, values) for f in recipe.yamls if f not in skip}
    used = list(dict.fromkeys(v for f in files for v in _variables(recipe.yamls[f])))  # what the copies read
    for ds in recipe.deepspeed_of(list(files)):
        files[f"deepspeed/{ds}"] = (root / "deepspeed" / ds).read_text(encoding="utf-8")
    if recipe.script:
        own = {k: v for k, v in given.items() if k not in used and k != "RUN"}
        files[SPEC_FILE] = copy_spec(recipe, values, own, used)
        files[recipe.script] = copy_script(recipe, dest)
        files["lib.sh"] = _rewrite_paths((root / "lib.sh").read_text(encoding="utf-8"), recipe, dest)
    existing = [f for f in files if (dest / f).exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more of the recipe's files)" if len(existing) > 1 else ""
        raise RuadaptError(
            f"{dest / existing[0]}: exists{more}; ruadapt recipe cp does not overwrite: "
            "choose a new DEST, or --force to replace the recipe's files (other files stay)"
        )
    if dest.is_dir() and any(dest.iterdir()):  # a used directory (its runs' outputs stay): file by file
        target = atomic_files_into(dest, option="DEST")
    else:  # new or empty: all or nothing
        target = atomic_output_dir(dest, option="DEST")
    with target as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
    return {
        "recipe": name,
        "dest": str(dest),
        "files": list(files),
        "script": recipe.script,
        "replaced": existing,
        "filled": {v: values[v] for v in used if v in values},
        "environment": [v for v in used if v not in values],
    }
