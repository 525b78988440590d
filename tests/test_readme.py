"""The command examples of README.md and docs/*.md work as written.

Every ``ruadapt ...`` line of a ```bash/```sh block of README.md and of every docs/*.md must parse with the real
argument parser, docs/commands.md has an example of every command the parser knows, and every bench script
docs/benchmarks.md names exists (fast). The
Quickstart section runs end to end (slow): its blocks, in order, as one bash script in an empty directory, with
tiny random models stored in an offline hub cache under the repo ids it names, small files in the
variables it reads, DeepSpeed on 2 CPU processes. A block preceded by ``<!-- readme-test: skip (why) -->``
(GPU-only, e.g. the whole 8-GPU recipe) is parsed but not run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny import ROOT, SHARED_DATA, fill_hub_cache, make_tiny_model

README = ROOT / "README.md"
DOCS = ROOT / "docs"
QUICKSTART = "## Quickstart from a Hugging Face model"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
SHELL_VAR = re.compile(r"\$\{(?P<braced>[A-Za-z_]\w*)(?::-(?P<default>[^}]*))?\}|\$(?P<plain>[A-Za-z_]\w*)")
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "2>&1", "(", ")"}


@dataclass
class Block:
    section: str  # the "## " heading it is under
    line: int  # README line of its first command line
    text: str
    skip: str | None  # the reason given in a skip marker, or None


def bash_blocks(text: str, name: str = "README.md") -> list[Block]:
    """The ```bash / ```sh blocks of a Markdown text, with the section they are in and their skip marker."""
    blocks, section, last, fence = [], "", "", None
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip() == "```":
                blocks.append(Block(section, fence[0], "\n".join(fence[2]), fence[1]))
                fence = None
            else:
                fence[2].append(line)
            continue
        if line.startswith("## "):
            section = line.strip()
        if line.strip() in ("```bash", "```sh"):
            marker = SKIP.search(last)
            fence = (i + 1, marker.group(1).strip(" ()") if marker else None, [])
        if line.strip():
            last = line
    assert fence is None, f"{name}:{fence[0]}: a code block is not closed"
    return blocks


def commands(block: Block) -> list[tuple[int, str]]:
    """(README line, command) for each shell command of a block, backslash continuations joined."""
    out, start, parts = [], None, []
    for n, line in enumerate(block.text.splitlines(), block.line):
        if start is None:
            start = n
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        out.append((start, " ".join(p.strip() for p in parts)))
        start, parts = None, []
    return [(n, c) for n, c in out if c]


def ruadapt_argv(command: str) -> list[str] | None:
    """The arguments after ``ruadapt`` when ``command`` runs ruadapt (after any ``VAR=value`` prefixes), up to
    the first shell operator (``|``, ``>``, ``&&`` ...); None for other commands."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    words = list(lex)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    if not words or words[0] != "ruadapt":
        return None
    argv = []
    for w in words[1:]:
        if w in SHELL_OPERATORS:
            break
        argv.append(w)
    return argv


def exported_defaults(blocks: list[Block]) -> dict[str, str]:
    """``export NAME=${NAME:-default}`` (or ``NAME=value``) of the blocks: the values a reader's shell would have."""
    values = {}
    for b in blocks:
        for _, c in commands(b):
            words = shlex.split(c, comments=True)
            if words[:1] != ["export"]:
                continue
            for w in words[1:]:
                name, _, value = w.partition("=")
                default = re.fullmatch(r"\$\{%s:-(.*)\}" % re.escape(name), value)
                values[name] = default.group(1) if default else value
    return values


def expand(command: str, values: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` / ``${NAME:-x}`` replaced by ``values`` (an unknown name keeps its default or stays)."""

    def sub(m: re.Match) -> str:
        name = m.group("braced") or m.group("plain")
        if name in values:
            return values[name]
        return m.group("default") if m.group("default") is not None else m.group(0)

    return SHELL_VAR.sub(sub, command)


def doc_files() -> list[Path]:
    """README.md and every docs/*.md: the files whose command examples are checked."""
    return [README, *sorted(DOCS.glob("*.md"))]


def readme_commands(path: Path = README) -> list[tuple[int, str, list[str]]]:
    """(line, command, argv after ``ruadapt``) of every ruadapt command in the bash blocks of ``path``, with the
    variables the README's quickstart exports (and the file's own exports) expanded."""
    blocks = bash_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    values = exported_defaults(bash_blocks(README.read_text(encoding="utf-8")) + blocks)
    return [
        (n, c, argv) for b in blocks for n, c in commands(b) if (argv := ruadapt_argv(expand(c, values))) is not None
    ]


def test_every_readme_command_parses(capsys):
    from ruadapt.cli import build_parser

    parser = build_parser()
    found = {path.relative_to(ROOT).as_posix(): readme_commands(path) for path in doc_files()}
    assert {"README.md", "docs/commands.md", "docs/benchmarks.md"} <= set(found), sorted(found)
    assert len(found["README.md"]) >= 8, "README.md lost its quickstart commands?"
    assert len(found["docs/commands.md"]) >= 30, "docs/commands.md lost its command examples?"
    failures = []
    for name, cmds in found.items():
        for line, command, argv in cmds:
            try:
                parser.parse_args(argv)
            except SystemExit as e:
                if e.code == 0:  # --help, --version
                    continue
                err = capsys.readouterr().err.strip().splitlines()
                failures.append(f"{name}:{line}: {command}\n    {err[-1] if err else ''}")
    assert not failures, "examples that fail as written:\n" + "\n".join(failures)


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command path of the real parser: ("swap",), ("tokenizer", "train"), ..."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix]
    return [p for a in subs for name, sub in a.choices.items() for p in _subcommands(sub, prefix + (name,))]


def test_commands_doc_has_an_example_of_every_command():
    from ruadapt.cli import build_parser

    every = _subcommands(build_parser())
    assert ("tokenizer", "report") in every and ("recipe", "ls") in every and len(every) >= 12
    examples = [tuple(a for a in argv if not a.startswith("-")) for _, _, argv in readme_commands(DOCS / "commands.md")]
    missing = [" ".join(path) for path in every if not any(words[: len(path)] == path for words in examples)]
    assert not missing, f"docs/commands.md has no example of: {', '.join(missing)}"


def test_every_bench_script_the_benchmarks_name_exists():
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    scripts = set(re.findall(r"\bbench/[\w-]+\.py\b", text))
    assert len(scripts) >= 8, scripts
    assert not [s for s in sorted(scripts) if not (ROOT / s).is_file()]


def test_block_and_command_extraction():
    text = (
        "## A\n```bash\nruadapt x --a 1 \\\n    --b 2   # note\n```\n## B\n<!-- readme-test: skip (GPU) -->\n"
        "```sh\nFOO=1 ruadapt y | head\necho hi\n```\n```python\nruadapt z\n```\n"
    )
    a, b = bash_blocks(text)
    assert (a.section, a.skip, b.section, b.skip) == ("## A", None, "## B", "GPU")
    assert commands(a) == [(3, "ruadapt x --a 1 --b 2   # note")]
    assert [ruadapt_argv(c) for _, c in commands(a) + commands(b)] == [["x", "--a", "1", "--b", "2"], ["y"], None]
    values = exported_defaults(bash_blocks("```bash\nexport N=${N:-8} OUT=runs\n```\n"))
    assert values == {"N": "8", "OUT": "runs"}
    assert (
        expand('ruadapt x --n "$N" --out "${OUT}/a" --m ${M:-3} $UNSET', values)
        == 'ruadapt x --n "8" --out "runs/a" --m 3 $UNSET'
    )


def quickstart() -> tuple[str, list[Block]]:
    """The Quickstart's blocks that run (as one script) and the ones marked to skip."""
    blocks = [b for b in bash_blocks(README.read_text(encoding="utf-8")) if b.section == QUICKSTART]
    run = [b for b in blocks if b.skip is None]
    return "\n".join(b.text for b in run), [b for b in blocks if b.skip is not None]


def test_quickstart_starts_from_the_hub_and_skips_little():
    script, skipped = quickstart()
    for step in (
        "ruadapt inspect Qwen/Qwen2.5-7B",
        "ruadapt tokenizer train --base Qwen/Qwen2.5-7B",
        "ruadapt swap --model Qwen/Qwen2.5-7B",
        "ruadapt recipe cp",
        "ruadapt train --config",
        "--instruct Qwen/Qwen2.5-7B-Instruct",
        "ruadapt eval --model instruct=Qwen/Qwen2.5-7B-Instruct",
    ):
        assert step in script, step
    assert len(skipped) <= 1 and all("bash " in b.text for b in skipped)  # only the whole 8-GPU recipe


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path):
    script, _ = quickstart()
    cache = tmp_path / "hf"
    for repo, seed in (("Qwen/Qwen2.5-7B", 0), ("Qwen/Qwen2.5-7B-Instruct", 1)):  # untied, like the real ones
        model = make_tiny_model(tmp_path / "src" / repo, "qwen2", tied=False, seed=seed, max_shard_size="2MB")
        fill_hub_cache(cache, repo, model)
    files = {}
    for var, name, n in (
        ("CORPUS", "ru_train", 200),
        ("REPLAY_CORPUS", "en_train", 100),
        ("EVAL_RU", "ru_eval", 3),
        ("EVAL_EN", "en_eval", 3),
    ):
        with open(SHARED_DATA / f"{name}.txt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(n)]
        files[var] = tmp_path / f"{name}.txt"
        files[var].write_text("".join(lines), encoding="utf-8")
    bin_dir = tmp_path / "bin"  # `ruadapt` = this checkout, whichever one the venv has installed
    bin_dir.mkdir()
    (bin_dir / "ruadapt").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ruadapt.cli "$@"\n')
    (bin_dir / "ruadapt").chmod(0o755)
    run = tmp_path / "run"
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(bin_dir), os.environ["PATH"]]),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_CACHE=str(cache),
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        TQDM_DISABLE="1",
        RUN=str(run),
        NEW_TOKENS="100",
        RECIPE="cpu-tiny",
        CPT_STEPS="2",
        NUM_GPUS="2",
        **{k: str(v) for k, v in files.items()},
    )
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    work = tmp_path / "work"  # any directory: the recipes come from the package
    work.mkdir()
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    tok = json.loads((run / "tokenizer" / "ruadapt_tokenizer.json").read_text())
    assert tok["result"]["new_tokens"] == 100
    assert (run / "tokenizer-report" / "report.md").is_file()
    swap = json.loads((run / "swapped" / "ruadapt_swap.json").read_text())
    assert "models--Qwen--Qwen2.5-7B/snapshots/" in swap["inputs"]["model"]["path"]
    assert (run / "cpt-embeddings.yaml").is_file()  # the recipe copy it trained from
    assert json.loads((run / "cpt1" / "ruadapt_train.json").read_text())["result"]["steps"] == 2
    lep = json.loads((run / "lep" / "ruadapt_lep.json").read_text())
    assert "models--Qwen--Qwen2.5-7B-Instruct/snapshots/" in json.dumps(lep["inputs"])
    report = (run / "eval" / "report.md").read_text()
    assert "| instruct |" in report and "| ru |" in report
    assert report in proc.stdout  # eval prints its report
