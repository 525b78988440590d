"""The recipes that ship inside the package (``ruadapt/recipes``): list them, and copy one into a directory of
its own with the ``${VAR}`` values its run YAMLs read filled in, so that the copies run as written.

A recipe NAME is ``recipes/NAME/*.yaml`` (the run YAMLs of its training stages) and, where there is one,
``recipes/NAME.sh``: the whole pipeline (tokenizer → swap → CPT → LEP → SFT → eval) as variables plus
``recipes/lib.sh``'s ``ruadapt_pipeline``. Its header comment gives the one-line description and the hardware
(``# Hardware: ...``). In the package the YAMLs read paths and step counts from the environment, which the
script exports; a copy has them written in:

- ``RUN`` (where every output goes) = DEST, and ``DS_CONFIGS`` = DEST/deepspeed, where the DeepSpeed configs
  the YAMLs name are copied;
- a variable whose default in the script (or in lib.sh) is a number (step counts, document caps) = that number;
- ``--set VAR=VALUE`` = VALUE (also for the script's own variables: BASE, INSTRUCT, NUM_GPUS, ...);
- data the user brings (``CORPUS``, ``SFT_DATA``, ...) stays ``${VAR}``: ``ruadapt train`` reads it from the
  environment and names file, key and variable in one line when it is not set.

The script is copied too (beside lib.sh) when it is such a pipeline; there the filled-in variables are fixed to
the values in the YAMLs, so script and YAMLs cannot disagree about where the outputs are. ``cpu-tiny.sh`` (the
repository's demo, ``make demo``) drives the repository's data and helper scripts and is not copied.

Files are read through :mod:`importlib.resources`, never relative to a checkout, so an installed ruadapt finds
them. Existing files are not overwritten without ``force``; the copy is written into a temporary folder first
(:mod:`ruadapt.io.outdir`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .errors import RuadaptError
from .io.outdir import atomic_files_into, atomic_output_dir

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # as ruadapt/train/config.py expands them
SCRIPT_DEFAULT = re.compile(r'(?<![\w$])([A-Z_][A-Z0-9_]*)="\$\{\1:-([^"}]*)\}"')  # NAME="${NAME:-default}"
LIB_DEFAULT = re.compile(r'"\$\{([A-Z_][A-Z0-9_]*):=([^"}]*)\}"')  # lib.sh: : "${NAME:=default}"
FIXED = ("RUN", "DS_CONFIGS")  # written by recipe cp itself
SHELL_UNSAFE = set('"$`\\}\n')  # cannot stand inside "${NAME:-...}" as they are


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
    script: str | None  # NAME.sh, when it is a lib.sh pipeline that can run from a copy
    defaults: dict[str, str] = field(default_factory=dict)  # VAR -> default in NAME.sh (or lib.sh)
    script_vars: list[str] = field(default_factory=list)  # VARs NAME.sh itself gives a default: VAR="${VAR:-x}"

    @property
    def variables(self) -> list[str]:
        """The ${VAR}s the YAMLs read (comments aside), in order of appearance."""
        return list(dict.fromkeys(v for text in self.yamls.values() for v in _variables(text)))

    @property
    def settable(self) -> list[str]:
        """What ``--set`` may give: the YAMLs' variables and, with a copied script, the script's own."""
        names = self.variables + (self.script_vars if self.script else [])
        return sorted(set(names) - {"DS_CONFIGS"})


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
            description = body[len(name) + 1:].split(" — ")[0].strip().rstrip(".")
        elif body.startswith("Hardware:"):
            hardware = body[len("Hardware:"):].split("  ")[0].strip().rstrip(".")
    return description, hardware


def _defaults(script: str, lib: str) -> dict[str, str]:
    """VAR -> default: lib.sh's ``: "${VAR:=x}"``, then the script's own ``VAR="${VAR:-x}"`` over them."""
    out = {m.group(1): m.group(2) for m in LIB_DEFAULT.finditer(lib)}
    out.update({m.group(1): m.group(2) for m in SCRIPT_DEFAULT.finditer(script)})
    return out


def _recipe_line(name: str) -> str:
    return f'RECIPE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)/{name}"'


def load_recipe(name: str) -> Recipe:
    """The shipped recipe ``name``; a one-line error listing the recipes for an unknown one."""
    names = recipe_names()
    if name not in names:
        raise RuadaptError(f"recipe {name!r} not found; recipes: {', '.join(names)} (ruadapt recipe ls)")
    root = recipes_dir()
    files = sorted((f for f in (root / name).iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    yamls = {f.name: f.read_text(encoding="utf-8") for f in files}
    script_file = root / f"{name}.sh"
    script_text = script_file.read_text(encoding="utf-8") if script_file.is_file() else ""
    description, hardware = _header(script_text or next(iter(yamls.values())), name)
    ds = sorted({m for text in yamls.values() for m in re.findall(r"\$\{DS_CONFIGS\}/([\w.-]+)", text)})
    pipeline = _recipe_line(name) in script_text.splitlines()
    lib = (root / "lib.sh").read_text(encoding="utf-8")
    defaults = _defaults(script_text, lib) if script_text else {}
    script_vars = list(dict.fromkeys(m.group(1) for m in SCRIPT_DEFAULT.finditer(script_text)))
    return Recipe(name, description, hardware, yamls, ds, f"{name}.sh" if pipeline else None, defaults, script_vars)


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
            what = "is DEST/deepspeed, set by ruadapt recipe cp" if key == "DS_CONFIGS" else \
                f"recipe {recipe.name} has no such variable"
            raise RuadaptError(f"--set {key}: {what}; its variables: {', '.join(recipe.settable)} "
                               "(YAML values: edit the copied files, or `ruadapt train --set KEY=VALUE`)")
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
    return values


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
    body = "".join(line if _is_comment(line) else _substitute(line, values)
                   for line in original.splitlines(keepends=True)
                   if "is read from the environment)" not in line)  # the package's note; the header below replaces it
    used = list(dict.fromkeys(_variables(original)))
    filled = [f"{v}={values[v]}" for v in used if v in values]
    left = [v for v in used if v not in values]
    head = f"# copied by `ruadapt recipe cp {recipe.name}` (ruadapt {__version__}); filled in: {', '.join(filled)}\n"
    if left:
        head += (f"# read from the environment when ruadapt train runs: {' '.join('${' + v + '}' for v in left)} "
                 f"(export, or copy again with --set {left[0]}=...)\n")
    text = head + _rewrite_paths(body, recipe, dest)
    if _plain(yaml.safe_load(text)) != _plain(_expanded(yaml.safe_load(original), values)):
        given = ", ".join(f"{v}={values[v]!r}" for v in used if v in values)
        raise RuadaptError(f"recipe {recipe.name}/{file}: a value does not read back as written in YAML ({given}); "
                           "avoid quotes, ': ' and ' #' in it")
    return text


def copy_script(recipe: Recipe, dest: Path, values: dict[str, str], own: dict[str, str]) -> str:
    """NAME.sh for the copy: its YAMLs are the ones beside it; the variables the YAMLs now hold are fixed to those
    values (script and YAMLs cannot disagree on RUN); ``own`` (``--set`` of the script's own variables, e.g.
    BASE) become the script's defaults, still overridable from the environment."""
    text = (recipes_dir() / f"{recipe.name}.sh").read_text(encoding="utf-8")
    here = 'RECIPE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"  # the YAMLs beside this script'
    text = text.replace(_recipe_line(recipe.name), here)
    held = {v: values[v] for v in recipe.script_vars if v in values and (v in recipe.variables or v == "RUN")}
    fixed = []
    for var, value in {**held, **own}.items():
        bad = sorted(set(value) & SHELL_UNSAFE)
        if bad:
            raise RuadaptError(f"--set {var}={value!r}: the character {bad[0]!r} cannot be written into "
                               f"{recipe.name}.sh as it is")
        new = f'{var}="{value}"' if var in held else f'{var}="${{{var}:-{value}}}"'
        text, n = re.subn(rf'(?<![\w$]){var}="\$\{{{var}:-[^"}}]*\}}"', lambda m: new, text)
        if n and var in held:
            fixed.append(var)
    note = (f"# copied by `ruadapt recipe cp {recipe.name}` (ruadapt {__version__}): the run YAMLs are the ones "
            f"beside this script;\n# {', '.join(fixed)} below are fixed to what they hold (edit the YAMLs, or copy "
            "again with --set).\n")
    first, rest = text.split("\n", 1)
    return _rewrite_paths(f"{first}\n{note}{rest}", recipe, dest)


def copy_recipe(name: str, dest: Path, settings: list[str] | tuple[str, ...] = (), *, force: bool = False) -> dict:
    """Copy recipe ``name`` into ``dest`` (see the module docstring); returns what was written and filled in."""
    recipe = load_recipe(name)
    given = parse_settings(list(settings), recipe)
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise RuadaptError(f"{dest}: DEST exists and is not a directory")
    values = resolve_values(recipe, dest, given)
    root = recipes_dir()
    files = {f: copy_yaml(recipe, f, dest, values) for f in recipe.yamls}
    for ds in recipe.deepspeed:
        files[f"deepspeed/{ds}"] = (root / "deepspeed" / ds).read_text(encoding="utf-8")
    if recipe.script:
        own = {k: v for k, v in given.items() if k not in recipe.variables and k != "RUN"}
        files[recipe.script] = copy_script(recipe, dest, values, own)
        files["lib.sh"] = _rewrite_paths((root / "lib.sh").read_text(encoding="utf-8"), recipe, dest)
    existing = [f for f in files if (dest / f).exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more of the recipe's files)" if len(existing) > 1 else ""
        raise RuadaptError(f"{dest / existing[0]}: exists{more}; ruadapt recipe cp does not overwrite: "
                           "choose a new DEST, or --force to replace the recipe's files (other files stay)")
    if dest.is_dir() and any(dest.iterdir()):  # a used directory (its runs' outputs stay): file by file
        target = atomic_files_into(dest, option="DEST")
    else:  # new or empty: all or nothing
        target = atomic_output_dir(dest, option="DEST")
    with target as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
    return {"recipe": name, "dest": str(dest), "files": list(files), "script": recipe.script, "replaced": existing,
            "filled": {v: values[v] for v in recipe.variables if v in values},
            "environment": [v for v in recipe.variables if v not in values]}
