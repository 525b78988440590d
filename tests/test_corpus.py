"""The one corpus reader (issue 14): the same documents from plain text, JSONL, Parquet, gzip and Zstandard files;
every kind of bad input is a one-line error naming the file and the line (or row); and `ruadapt train` /
`ruadapt data prepare` refuse bad data with exit 2 before any rank starts."""

from __future__ import annotations

import functools
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import ROOT, SHARED_DATA, SHARED_TOKENIZERS, make_tiny_model

from ruadapt.errors import RuadaptError
from ruadapt.io.corpus import iter_document_blocks, iter_documents, read_documents


@functools.cache
def docs() -> list[str]:
    """The first 200 documents of ru_train (read on first use: collection works without the test data)."""
    lines = (SHARED_DATA / "ru_train.txt").open(encoding="utf-8").readlines()[:200]
    return [l.rstrip("\n") for l in lines if l.strip()]


def write_all_formats(d: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    text = "\n".join(docs()) + "\n"
    jsonl = "".join(json.dumps({"id": k, "body": t}, ensure_ascii=False) + "\n" for k, t in enumerate(docs()))
    files = {
        "txt": d / "a.txt",
        "crlf": d / "crlf.txt",
        "jsonl": d / "a.jsonl",
        "txt.gz": d / "a.txt.gz",
        "jsonl.zst": d / "a.jsonl.zst",
        "parquet": d / "a.parquet",
    }
    files["txt"].write_text("\ufeff" + text.replace("\n", "\n\n", 3), encoding="utf-8")  # BOM and empty lines
    files["crlf"].write_bytes(text.replace("\n", "\r\n").encode())
    files["jsonl"].write_text(jsonl, encoding="utf-8")
    files["txt.gz"].write_bytes(gzip.compress(text.encode()))
    # two frames: a file made by concatenating .zst files must read as one
    half = len(jsonl) // 2
    cut = jsonl.index("\n", half) + 1
    z = zstandard.ZstdCompressor()
    files["jsonl.zst"].write_bytes(z.compress(jsonl[:cut].encode()) + z.compress(jsonl[cut:].encode()))
    pq.write_table(pa.table({"body": docs()}), files["parquet"], row_group_size=50)
    return files


def test_every_format_gives_the_same_documents(tmp_path):
    files = write_all_formats(tmp_path)
    for name, path in files.items():
        field = "body" if name in ("jsonl", "jsonl.zst", "parquet") else "text"
        assert list(iter_documents(path, text_field=field)) == docs(), name
    assert read_documents(files["jsonl"], text_field="body", limit=7) == docs()[:7]


def test_blocks_stream_a_big_file_in_bounded_pieces(tmp_path, monkeypatch):
    import ruadapt.io.corpus as corpus

    monkeypatch.setattr(corpus, "BLOCK_BYTES", 4096)  # a line may straddle blocks
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress(("\n".join(docs()) + "\n").encode()))
    blocks = list(iter_document_blocks(path))
    assert len(blocks) >= sum(len(d.encode()) + 1 for d in docs()) // 4096 and [d for b in blocks for d in b] == docs()


def bad(path: Path, match: str, **kw) -> None:
    with pytest.raises(RuadaptError, match=match) as e:
        list(iter_documents(path, "data.train", **kw))
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_bad_input_is_one_line_naming_file_and_line(tmp_path):
    files = write_all_formats(tmp_path)
    p = tmp_path / "latin1.txt"
    p.write_bytes("первая строка\nвторая\n".encode() + "caf\xe9\n".encode("latin-1"))
    bad(p, r"not UTF-8 text \(invalid byte 0xe9 on line 3\)")
    p = tmp_path / "broken.jsonl"
    p.write_text('{"text": "a"}\n\n{"text": "b"\n', encoding="utf-8")
    bad(p, r"line 3 is not valid JSON")
    p = tmp_path / "nofield.jsonl"
    p.write_text('{"text": "a"}\n{"content": "b"}\n', encoding="utf-8")
    bad(p, r"line 2 has no string 'text' \(no such key\)")
    for name in ("txt.gz", "jsonl.zst"):
        data = files[name].read_bytes()
        cut = tmp_path / f"cut.{name}"
        cut.write_bytes(data[: len(data) * 2 // 3])
        bad(cut, r"stream is damaged or truncated after line \d+", text_field="body")
    p = tmp_path / "notgzip.txt.gz"
    p.write_text("plain text\n")
    bad(p, r"gzip stream is damaged")
    p = tmp_path / "empty.txt"
    p.write_text("\n\n  \n")
    bad(p, r"holds no text")
    p = tmp_path / "zero.txt"
    p.write_bytes(b"")
    bad(p, r"file is empty")
    bad(files["parquet"], r"no column 'text'")
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(files["parquet"].read_bytes()[:500])
    bad(cut, r"not a readable Parquet file", text_field="body")


def ruadapt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    return subprocess.run(
        [sys.executable, "-m", "ruadapt.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_train_refuses_bad_data_before_any_rank_starts(tmp_path):
    model = make_tiny_model(tmp_path / "m", "qwen2")
    good = tmp_path / "ru.txt"
    good.write_text("\n".join(docs()[:50]) + "\n", encoding="utf-8")
    broken = tmp_path / "en.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "not closed\n', encoding="utf-8")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {
                "task": "cpt",
                "model": str(model),
                "out": str(tmp_path / "out"),
                "deepspeed": str(ROOT / "recipes/deepspeed/zero2.json"),
                "block_size": 32,
                "data": {"train": [{"path": str(good), "weight": 0.9}, {"path": str(broken), "weight": 0.1}]},
            }
        )
    )
    for cmd in (["train", "--config", str(cfg), "--num-gpus", "2"], ["data", "prepare", "--config", str(cfg)]):
        p = ruadapt(*cmd, cwd=tmp_path)
        assert p.returncode == 2, p.stderr[-2000:]
        last = p.stderr.strip().splitlines()[-1]
        assert last.startswith(f"ruadapt {cmd[0]}") and f"{broken}: data.train: line 2 is not valid JSON" in last, (
            p.stderr
        )
        assert "Traceback" not in p.stderr and "deepspeed" not in p.stderr.lower(), p.stderr  # no launcher, no rank
    assert not (tmp_path / "out").exists()
    cache = tmp_path / ".ruadapt-cache" / "tokens"
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")][0].startswith(
        "cpt-ru.txt-"
    )  # the good one is kept
    assert not any(p.name.startswith(".cpt-en.jsonl") and ".tmp-" in p.name for p in cache.iterdir())


def test_tokenizer_training_and_trim_read_compressed_jsonl_like_text(tmp_path):
    """tokenizer train and trim read corpora through the same reader: a .jsonl.zst gives the words and token counts
    of the plain text it holds (and not merges of its JSON syntax such as `."}`)."""
    import zstandard

    from ruadapt.tokenizer.words import count_words
    from ruadapt.trim.corpus import count_tokens
    from ruadapt.vocab.pieces import BYTE_LEVEL
    from tokenizers import Tokenizer

    txt = tmp_path / "ru.txt"
    txt.write_text("\n".join(docs()) + "\n", encoding="utf-8")
    zst = tmp_path / "ru.jsonl.zst"
    zst.write_bytes(
        zstandard.ZstdCompressor().compress(
            "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs()).encode()
        )
    )
    tok = Tokenizer.from_file(str(SHARED_TOKENIZERS / "qwen2.5" / "tokenizer.json"))
    words_txt, _ = count_words(tok, BYTE_LEVEL, [txt], progress=False)
    words_zst, _ = count_words(tok, BYTE_LEVEL, [zst], progress=False)
    assert words_txt == words_zst and not any('"}' in w for w in words_zst)
    a, b = count_tokens(tok, [txt], tok.get_vocab_size()), count_tokens(tok, [zst], tok.get_vocab_size())
    assert (a.counts == b.counts).all() and a.tokens == b.tokens > 0


@pytest.mark.parametrize("suffix", ["txt.gz", "txt.zst"])
def test_truncated_stream_names_the_last_complete_line(tmp_path, suffix):
    """A cut-short .gz/.zst of a few hundred lines (one read block) names the line where the damage starts: the
    reference count comes from decompressing the same bytes with zlib/zstandard directly."""
    import zlib

    import zstandard

    text = "".join(f"{k} {d}\n" for k, d in enumerate(docs() * 20)).encode()  # 1.4 MB: under one 4 MB block
    packed = gzip.compress(text) if suffix.endswith("gz") else zstandard.ZstdCompressor().compress(text)
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(packed[: len(packed) * 3 // 4])
    if suffix.endswith("gz"):
        readable = zlib.decompressobj(wbits=31).decompress(cut.read_bytes())
    else:
        readable = zstandard.ZstdDecompressor().decompressobj().decompress(cut.read_bytes())
    good = readable.count(b"\n")
    assert 100 < good < text.count(b"\n")  # neither the first line nor the whole file
    bad(cut, rf"stream is damaged or truncated after line {good} ")


def test_json_lines_saved_as_txt_are_refused_by_training_and_the_report(tmp_path):
    """The check tokenizer train and trim have: a .txt whose lines are JSON objects would train (or be measured)
    on `{"id": …, "text": …}`. One line, exit 2, before anything is tokenized; data.allow / --allow go on."""
    from ruadapt.cli import main
    from ruadapt.train.config import load_config
    from ruadapt.train.prepare import prepare_run

    model = make_tiny_model(tmp_path / "m", "qwen2")
    jsonish = tmp_path / "ru.txt"
    jsonish.write_text(
        "".join(json.dumps({"id": k, "text": d}, ensure_ascii=False) + "\n" for k, d in enumerate(docs())),
        encoding="utf-8",
    )
    data = {"train": [str(jsonish)], "eval_blocks": 0}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {
                "task": "cpt",
                "model": str(model),
                "out": str(tmp_path / "out"),
                "deepspeed": str(ROOT / "recipes/deepspeed/zero2.json"),
                "block_size": 32,
                "data": data,
            }
        )
    )
    p = ruadapt("data", "prepare", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert f"{jsonish}: data.train is read as plain text, but its first 20 lines are JSON objects" in last, last
    assert "name it .jsonl" in last and "add `allow: [json-text]` under data" in last
    assert not (tmp_path / ".ruadapt-cache").exists()  # nothing tokenized
    cfg.write_text(cfg.read_text().replace('"eval_blocks": 0', '"eval_blocks": 0, "allow": ["json-text"]'))
    entry = Path(prepare_run(load_config(cfg), progress=False)["train"][0]["entry"])
    assert (entry / "tokens.bin").stat().st_size > 0  # allowed: trained as the text it is

    args = ["tokenizer", "report", "--tokenizer", f"base={model}", "--text", f"ru={jsonish}"]
    assert main([*args, "--out", str(tmp_path / "rep")]) == 2 and not (tmp_path / "rep").exists()
    assert main([*args, "--out", str(tmp_path / "rep"), "--allow", "json-text"]) == 0
