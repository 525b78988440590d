"""The ``ruadapt`` command itself (issue 17): a closed pipe is not an error, ``eval``'s exit status says whether
every measure produced a number, every option's ``--help`` shows its default once, ``--version``, and
``eval --device auto``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import ROOT, SHARED_DATA, make_tiny_model

import ruadapt
from ruadapt.cli import build_parser, main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny qwen2 model, a copy whose final norm is NaN (every logit NaN), and a few Russian lines."""
    root = tmp_path_factory.mktemp("cli")
    model = make_tiny_model(root / "m", "qwen2")
    broken = root / "nan"
    broken.mkdir()
    for f in model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    shard = broken / index["weight_map"]["model.norm.weight"]
    tensors = load_file(shard)
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], float("nan"))
    save_file(tensors, shard, metadata={"format": "pt"})
    lines = [x for x in (SHARED_DATA / "ru_eval.txt").read_text(encoding="utf-8").splitlines() if 20 <= len(x) <= 120][
        :3
    ]
    text = root / "ru.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"root": root, "model": model, "nan": broken, "text": text}


def ruadapt_process(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    """``python -m ruadapt`` of this checkout (``-m`` puts the working directory first on sys.path: not a checkout)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "ruadapt", *args], env=env, cwd=cwd, **kw)


# ------------------------------------------------------------------------------------------ closed pipe
@pytest.mark.parametrize("args", [["inspect", "{model}"], ["--version"], ["recipe", "ls"]], ids=" ".join)
def test_closed_pipe_is_not_an_error(tiny, args):
    """`ruadapt inspect M | head -c 10`: the reader is gone before ruadapt writes. Exit 0, nothing on stderr
    (neither ruadapt's error line nor the interpreter's "Exception ignored ... BrokenPipeError" at exit)."""
    p = ruadapt_process(
        *[a.format(model=tiny["model"]) for a in args], cwd=tiny["root"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # the reader exits at once: every write of ruadapt's gets EPIPE
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert err == ""


# ------------------------------------------------------------------------------------------ eval exit status
def test_eval_exit_status_0_and_resolved_device_recorded(tiny, tmp_path):
    out = tmp_path / "ok"
    rc = main(
        [
            "-q",
            "eval",
            "--model",
            f"m={tiny['model']}",
            "--text",
            f"ru={tiny['text']}",
            "--speed-prompts",
            "0",
            "--window",
            "64",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    record = json.loads((out / "ruadapt_eval.json").read_text())
    assert report["failures"] == [] and record["result"]["failures"] == []
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert record["options"]["device"] == "auto"  # what was asked ...
    assert (
        record["result"]["device"] == report["device"] == report["models"]["m"]["device"] == expect
    )  # ... and what ran


def test_eval_exit_status_1_when_a_measure_has_no_number(tiny, tmp_path, capsys):
    """A model whose logits are NaN (fp16 overflow, broken weights) gets bits per byte NaN: the report is written,
    the failure is named in report.json, the record and on stderr, and the exit status is 1 (2 = bad input)."""
    out = tmp_path / "nan"
    rc = main(
        [
            "-q",
            "eval",
            "--model",
            f"ok={tiny['model']}",
            "--model",
            f"bad={tiny['nan']}",
            "--text",
            f"ru={tiny['text']}",
            "--speed-prompts",
            "0",
            "--window",
            "64",
            "--out",
            str(out),
        ]
    )
    assert rc == 1
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert len(report["failures"]) == 1 and "bad" in report["failures"][0] and "ru" in report["failures"][0]
    assert json.loads((out / "ruadapt_eval.json").read_text())["result"]["failures"] == report["failures"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ruadapt eval: failed: {report['failures'][0]}"]


def test_failed_measures_names_every_missing_number():
    from ruadapt.eval.run import failed_measures

    nan = float("nan")
    report = {
        "bpb": {"a": {"ru": {"bpb": 1.2}, "en": {"bpb": nan}}, "b": {"ru": {"bpb": float("inf")}}},
        "speed": {
            "models": {
                "a": {"chars_per_s": 10.0, "tokens_per_s": 3.0, "decode_tokens_per_s": 3.5},
                "b": {"chars_per_s": nan, "tokens_per_s": 1.0, "decode_tokens_per_s": 1.2},
            }
        },
        "lm_eval": {
            "a": {"bpb_ru": {"docs": 0, "metrics": {"bits_per_byte": 1.0}}, "copy_ru": {"docs": 2, "metrics": {}}},
            "b": {"bpb_ru": {"docs": 3, "metrics": {"bits_per_byte": nan}}},
        },
    }
    failures = failed_measures(report)
    assert len(failures) == 6, failures
    for want in (
        "bits per byte of model a on en",
        "bits per byte of model b on ru",
        "speed of model b",
        "lm-eval task bpb_ru of model a scored no documents",
        "lm-eval task copy_ru of model a",
        "lm-eval task bpb_ru of model b",
    ):
        assert any(f.startswith(want) for f in failures), (want, failures)
    assert failed_measures({"bpb": {"a": {"ru": {"bpb": 1.0}}}}) == []
    no_decode = failed_measures({"speed": {"models": {"a": {"chars_per_s": 1.0, "tokens_per_s": 1.0}}}})
    assert no_decode == ["speed of model a: decode_tokens_per_s is None"]  # the per-step rate is a measure too


# ------------------------------------------------------------------------------------------ --help
def all_parsers(parser: argparse.ArgumentParser, prog: str = "ruadapt"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, f"{prog} {name}")


def test_help_shows_each_default_once_and_no_empty_defaults():
    parsers = dict(all_parsers(build_parser()))
    assert {
        "ruadapt tokenizer train",
        "ruadapt tokenizer report",
        "ruadapt data prepare",
        "ruadapt recipe cp",
        "ruadapt eval",
        "ruadapt train",
    } <= set(parsers)
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


# ------------------------------------------------------------------------------------------ --device auto
def test_eval_device_auto_resolves_to_cuda_only_when_available(monkeypatch):
    from ruadapt.eval import load

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert load.resolve_device("auto") == "cuda" and load.check_device("auto") == "cuda"
    assert load.check_device("cuda:1") == "cuda:1" and load.check_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load.resolve_device("auto") == "cpu" and load.check_device("auto") == "cpu"
    assert build_parser().parse_args(["eval", "--model", "a=b", "--out", "o"]).device == "auto"
