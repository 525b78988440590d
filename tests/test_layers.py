"""The package's layers, enforced: every import points down (docs/layout.md).

Each module of ``ruadapt`` is parsed (never imported), each ``import`` resolved to the module it names, and the
test fails naming ``file:line`` for an import that points up the table below, for a stage that imports another
stage, and for a function-local import of a package module that is cheap to import (function-local imports are
for heavy or optional dependencies only: there they keep ``ruadapt --help`` from loading torch; elsewhere they hide
a cycle or an upward import from the reader).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ruadapt"

# The layer table, lowest first: a module may import its own layer's modules (stages: only its own stage) and
# any lower layer's. Longest prefix wins. The one place this order is written down; docs/layout.md explains it.
LAYERS: dict[str, int] = {
    "ruadapt": 0,  # ruadapt/__init__.py: __version__
    "ruadapt.errors": 0,
    "ruadapt.schema": 0,
    "ruadapt.mistakes": 0,
    "ruadapt.io": 1,
    "ruadapt.vocab": 2,
    "ruadapt.options": 2,  # every stage's options (dataclasses, Literal choices): read by the stages and the parser
    "ruadapt.tokenizer": 3,
    "ruadapt.swap": 3,
    "ruadapt.lep": 3,
    "ruadapt.trim": 3,
    "ruadapt.inspect": 3,
    "ruadapt.train": 3,
    "ruadapt.eval": 3,
    "ruadapt.llamacpp": 3,
    "ruadapt.recipe": 3,
    "ruadapt.commands": 4,
    "ruadapt.cli": 5,
    "ruadapt.__main__": 5,
}
LAYER_NAMES = {0: "core", 1: "io", 2: "vocab", 3: "stage", 4: "commands", 5: "cli"}
STAGE = 3

# Third-party modules slow to import or not always installed: a package module that imports one of them at its
# top (directly or through another package module) is heavy, and may be imported inside a function.
HEAVY = {
    "torch",
    "transformers",
    "deepspeed",
    "lm_eval",
    "peft",
    "accelerate",
    "datasets",
    "matplotlib",
    "scipy",
    "safetensors",
    "gguf",
    "llama_cpp",
    "huggingface_hub",
    "pyarrow",
    "zstandard",
    "wandb",
    "tensorboard",
    "psutil",
    "requests",
    "convert_hf_to_gguf",
    "conversion",
}


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package."""

    file: Path
    line: int
    source: str  # importing module
    target: str  # imported module (the deepest existing module the statement names)
    local: bool  # inside a function body


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name → (file, is package) of every module of the package (the data folder recipes/ excluded)."""
    out: dict[str, tuple[Path, bool]] = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE.parent)
        if rel.parts[1] == "recipes":  # example scripts shipped as data, not modules of the package
            continue
        parts = list(rel.with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


MODULES = _modules()


def _owner(name: str) -> str:
    """The deepest module of the package that ``name`` lies in (``ruadapt.io.hub.resolve`` → ``ruadapt.io.hub``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> tuple[list[Import], list[tuple[int, str, bool]]]:
    """The package imports of ``module`` and its third-party ones (line, top-level name, inside a function)."""
    path, is_pkg = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    local: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    inner: list[Import] = []
    outer: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names]
        else:
            continue
        for name in names:
            if name == "ruadapt" or name.startswith("ruadapt."):
                inner.append(Import(path, node.lineno, module, _owner(name), id(node) in local))
            else:
                outer.append((node.lineno, name.split(".")[0], id(node) in local))
    return inner, outer


IMPORTS = {m: _imports(m) for m in MODULES}


def layer(module: str) -> tuple[int, str]:
    """(layer number, unit): the unit is the stage package a stage module belongs to (``ruadapt.eval``)."""
    key = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[key], key


def _parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first."""
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _heavy_modules() -> set[str]:
    """Package modules whose import loads a heavy third-party module (their own top-level imports, their
    parents', and those of the package modules they import at the top, transitively)."""
    heavy: set[str] = set()
    direct = {m: any(top in HEAVY for _, top, loc in IMPORTS[m][1] if not loc) for m in MODULES}
    deps = {m: {i.target for i in IMPORTS[m][0] if not i.local} | set(_parents(m)) for m in MODULES}
    changed = True
    heavy = {m for m, h in direct.items() if h}
    while changed:
        changed = False
        for m in MODULES:
            if m not in heavy and deps[m] & heavy:
                heavy.add(m)
                changed = True
    return heavy


def _where(i: Import) -> str:
    return f"{i.file.relative_to(PACKAGE.parent)}:{i.line}"


def upward_imports() -> list[str]:
    """Every import that points up the layer table, or from one stage into another."""
    bad = []
    for imports, _ in IMPORTS.values():
        for i in imports:
            (src, src_unit), (dst, dst_unit) = layer(i.source), layer(i.target)
            if dst > src:
                bad.append(f"{_where(i)}: {i.source} ({LAYER_NAMES[src]}) imports {i.target} ({LAYER_NAMES[dst]})")
            elif dst == src == STAGE and src_unit != dst_unit:
                bad.append(f"{_where(i)}: stage {src_unit} imports stage {dst_unit}; move what both use below them")
    return bad


def needless_local_imports() -> list[str]:
    """Function-local imports of package modules that load nothing heavy."""
    heavy = _heavy_modules()
    found = {
        f"{_where(i)}: {i.source} imports {i.target} inside a function; it is cheap to import, so import it at the top"
        for imports, _ in IMPORTS.values()
        for i in imports
        if i.local and i.target not in heavy and i.target != i.source
    }
    return sorted(found)


def test_every_module_has_a_layer():
    """A new top-level module must be placed in the table (else the other checks would not see its direction)."""
    placed = [k for k in LAYERS if k != "ruadapt"]
    missing = [m for m in MODULES if m != "ruadapt" and not any(m == k or m.startswith(k + ".") for k in placed)]
    assert not missing, f"add to LAYERS in tests/test_layers.py: {missing}"


def test_imports_point_down():
    bad = upward_imports()
    assert not bad, "imports pointing up the layers (tests/test_layers.py LAYERS):\n" + "\n".join(bad)


def test_function_local_imports_only_for_heavy_modules():
    bad = needless_local_imports()
    assert not bad, "function-local imports of cheap modules:\n" + "\n".join(bad)


def test_the_checks_see_what_they_must(tmp_path, monkeypatch):
    """The checks fire on the mistakes they exist for: an upward import, a stage importing a stage, a cheap
    function-local import; and the heavy rule knows a torch-importing module from a light one."""
    heavy = _heavy_modules()
    assert "ruadapt.io.checkpoint" in heavy and "ruadapt.errors" not in heavy and "ruadapt.io.hub" not in heavy
    pkg = tmp_path / "ruadapt"
    for rel, text in {
        "__init__.py": "",
        "errors.py": "",
        "io/__init__.py": "",
        "io/bad.py": "from ..vocab import arch\n",
        "vocab/__init__.py": "",
        "vocab/arch.py": "import torch\n",
        "eval/__init__.py": "",
        "eval/bpb.py": "def f():\n    from ..errors import x\n    from ..vocab.arch import y\n",
        "tokenizer/__init__.py": "",
        "tokenizer/report.py": "from ..eval.bpb import f\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    here = sys.modules[__name__]
    monkeypatch.setattr(here, "PACKAGE", pkg)
    monkeypatch.setattr(here, "MODULES", _modules())
    monkeypatch.setattr(here, "IMPORTS", {m: _imports(m) for m in MODULES})
    assert upward_imports() == [
        "ruadapt/io/bad.py:1: ruadapt.io.bad (io) imports ruadapt.vocab.arch (vocab)",
        "ruadapt/tokenizer/report.py:1: stage ruadapt.tokenizer imports stage ruadapt.eval; move what both use below "
        "them",
    ]
    assert [line.split(":")[:2] for line in needless_local_imports()] == [["ruadapt/eval/bpb.py", "2"]]


if __name__ == "__main__":  # python tests/test_layers.py: print every finding
    print("\n".join(upward_imports() + needless_local_imports()) or "clean")
    pytest.main([__file__, "-q"])
