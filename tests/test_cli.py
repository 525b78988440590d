"""The ``ruadapt`` command itself (issue 17): a closed pipe is not an error, every option's ``--help`` shows its
default once, ``--version``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ruadapt
from ruadapt.cli import build_parser, main
from tiny import ROOT, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny qwen2 model."""
    root = tmp_path_factory.mktemp("cli")
    model = make_tiny_model(root / "m", "qwen2")
    return {"root": root, "model": model}


def ruadapt_process(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "ruadapt", *args], env=env, **kw)


# ------------------------------------------------------------------------------------------ closed pipe
def test_closed_pipe_is_not_an_error(tiny):
    """`ruadapt inspect M | head -c 10`: the reader is gone before ruadapt writes. Exit 0, nothing on stderr
    (neither ruadapt's error line nor the interpreter's "Exception ignored ... BrokenPipeError" at exit)."""
    p = ruadapt_process("inspect", str(tiny["model"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader exits at once: every write of ruadapt's gets EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert err == ""


# ------------------------------------------------------------------------------------------ --help
def all_parsers(parser: argparse.ArgumentParser, prog: str = "ruadapt"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, f"{prog} {name}")


def test_help_shows_each_default_once_and_no_empty_defaults():
    parsers = dict(all_parsers(build_parser()))
    assert {"ruadapt tokenizer train", "ruadapt tokenizer report", "ruadapt data prepare",
            "ruadapt eval", "ruadapt train"} <= set(parsers)
    for prog, parser in parsers.items():
        text = " ".join(parser.format_help().split())  # wrapping may split "(default:" from its value
        for noise in ("(default: None)", "(default: False)", "(default: )", "(default: [])"):
            assert noise not in text, (prog, noise)
        for action in parser._actions:
            formatter = parser._get_formatter()
            formatter.add_argument(action)
            entry = " ".join(formatter.format_help().split())
            assert entry.count("(default") <= 1, (prog, entry)
    entries = {" ".join(line.split()) for line in parsers["ruadapt eval"].format_help().splitlines()}
    assert any("(default: 1024)" in e for e in entries) and any("(default: auto)" in e for e in entries)


def test_every_help_exits_0(capsys):
    for prog in dict(all_parsers(build_parser())):
        with pytest.raises(SystemExit) as e:
            main(prog.split()[1:] + ["--help"])
        assert e.value.code == 0, prog
        assert capsys.readouterr().out.startswith(f"usage: {prog}")


# ------------------------------------------------------------------------------------------ --version
def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and out.startswith(f"ruadapt {ruadapt.__version__} ")
    assert f"torch {torch.__version__}" in out and "transformers " in out
