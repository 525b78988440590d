"""``ruadapt tokenizer report`` and ``chars_per_token``: numbers equal an independent count."""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

import pytest
from tiny import SHARED_DATA, SHARED_TOKENIZERS
from transformers import AutoTokenizer

from ruadapt.cli import main
from ruadapt.io.record import check_record
from ruadapt.vocab.measure import chars_per_token

QWEN = SHARED_TOKENIZERS / "qwen2.5"


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    """Slices of the eval files (with an empty line, which the definition skips)."""
    d = tmp_path_factory.mktemp("texts")
    out = {}
    for lang in ("ru", "en"):
        lines = (SHARED_DATA / f"{lang}_eval.txt").read_text(encoding="utf-8").splitlines()[:300]
        out[lang] = d / f"{lang}.txt"
        out[lang].write_text("\n".join(lines[:100] + [""] + lines[100:]) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("c") / "ru.txt"
    corpus.write_text(
        "\n".join((SHARED_DATA / "ru_train.txt").read_text(encoding="utf-8").splitlines()[::60]) + "\n",
        encoding="utf-8",
    )
    out = tmp_path_factory.mktemp("ext") / "tok"
    assert (
        main(
            [
                "-q",
                "tokenizer",
                "train",
                "--base",
                str(QWEN),
                "--corpus",
                str(corpus),
                "--new-tokens",
                "800",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


@functools.cache
def hf_tokenizer(tok_dir: Path):
    return AutoTokenizer.from_pretrained(str(tok_dir))


@functools.cache
def independent_count(tok_dir: Path, path: Path) -> tuple[int, int, int, int, Counter]:
    """chars, bytes, words, tokens and per-id counts with transformers, one line at a time."""
    hf = hf_tokenizer(tok_dir)
    chars = n_bytes = words = tokens = 0
    seen: Counter = Counter()
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            ids = hf.encode(line, add_special_tokens=False)
            chars += len(line)
            n_bytes += len(line.encode("utf-8"))
            words += len(line.split())
            tokens += len(ids)
            seen.update(ids)
    return chars, n_bytes, words, tokens, seen


def test_chars_per_token_equals_independent_count(texts):
    for _lang, path in texts.items():
        chars, n_bytes, words, tokens, _ = independent_count(QWEN, path)
        got = chars_per_token(QWEN, path)
        assert (got["chars"], got["bytes"], got["words"], got["tokens"]) == (chars, n_bytes, words, tokens)
        assert got["chars_per_token"] == chars / tokens
        assert got["tokens_per_word"] == tokens / words


def test_report_cli(texts, extended, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        [
            "-q",
            "tokenizer",
            "report",
            "--tokenizer",
            f"base={QWEN}",
            "--tokenizer",
            f"ru={extended}",
            "--text",
            f"ru_eval={texts['ru']}",
            "--text",
            f"en_eval={texts['en']}",
            "--top-unused",
            "5",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report) == ["base", "ru"] and all(list(v) == ["ru_eval", "en_eval"] for v in report.values())
    n_base = 151665
    for name, tok_dir in (("base", QWEN), ("ru", extended)):
        for lang, key in (("ru", "ru_eval"), ("en", "en_eval")):
            chars, n_bytes, words, tokens, seen = independent_count(tok_dir, texts[lang])
            r = report[name][key]
            assert set(r) == {"chars", "tokens", "chars_per_token", "bytes_per_token", "tokens_per_word"}
            assert (r["chars"], r["tokens"]) == (chars, tokens)
            assert r["chars_per_token"] == pytest.approx(chars / tokens, rel=1e-12)
            assert r["bytes_per_token"] == pytest.approx(n_bytes / tokens, rel=1e-12)
            assert r["tokens_per_word"] == pytest.approx(tokens / words, rel=1e-12)
            if name == "ru":
                u = json.loads((out / "usage.json").read_text())["ru"][key]
                used = sorted(i for i in seen if i >= n_base)
                assert u["new_tokens"] == 800 and u["new_tokens_used"] == len(used)
                assert u["new_token_occurrences"] == sum(seen[i] for i in used)
                unused = [i for i in range(n_base, n_base + 800) if i not in seen][:5]
                assert [x[0] for x in u["first_unused"]] == unused
    assert report["ru"]["ru_eval"]["chars_per_token"] > report["base"]["ru_eval"]["chars_per_token"]
    md = (out / "report.md").read_text()
    ratio = report["ru"]["ru_eval"]["chars_per_token"] / report["base"]["ru_eval"]["chars_per_token"]
    assert f"{ratio:.3f}×" in md and "| base |" in md
    assert (out / "chars_per_token.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_record(json.loads((out / "ruadapt_tokenizer_report.json").read_text()))
    assert "chars/token" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["bad pair", "duplicate name", "missing text", "non-utf8 text", "no tokenizer.json"])
def test_report_bad_input(case, texts, tmp_path, capsys):
    toks = [f"base={QWEN}"]
    text = [f"ru={texts['ru']}"]
    if case == "bad pair":
        toks = [str(QWEN)]
    elif case == "duplicate name":
        toks = [f"a={QWEN}", f"a={QWEN}"]
    elif case == "missing text":
        text = [f"ru={tmp_path / 'nope.txt'}"]
    elif case == "non-utf8 text":
        bad = tmp_path / "bad.txt"
        bad.write_bytes("Привет\n".encode("cp1251"))
        text = [f"ru={bad}"]
    elif case == "no tokenizer.json":
        (tmp_path / "empty").mkdir()
        toks = [f"base={tmp_path / 'empty'}"]
    argv = ["-q", "tokenizer", "report", "--out", str(tmp_path / "out")]
    for t in toks:
        argv += ["--tokenizer", t]
    for t in text:
        argv += ["--text", t]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ruadapt tokenizer report: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
