"""``ruadapt gguf`` and the check-text guard of ``tokenizer train``, with llama.cpp's real converter.

The converter is the ``vendor/llama.cpp`` of the llama-cpp-python sdist that ``make test`` downloads (no build)
into ``.cache/`` and names in ``$RUADAPT_LLAMA_CPP``; run outside make without it, these tests skip and say how
to fetch it. Models are tiny (tests/tiny.py) with the real tokenizers; vocabularies are small but show each
property: an extension whose corpus makes the check text's Bulgarian pairs frequent (so the guard has work to
do), a replaced Qwen2 and Llama-3 vocabulary, a trimmed model. Logits and ids in llama.cpp itself need a C++ build
of llama_cpp: ``bench/gguf_llama_cpp.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import ROOT, SHARED_DATA, SHARED_TOKENIZERS, make_tiny_model

from ruadapt.cli import main
from ruadapt.errors import RuadaptError
from ruadapt.io.record import check_record
from ruadapt.llamacpp.export import record_path
from ruadapt.llamacpp.prename import load_table, lookup
from ruadapt.llamacpp.readback import check_gguf
from ruadapt.llamacpp.source import find_converter
from ruadapt.llamacpp.verify import have_llama_cpp
from ruadapt.tokenizer.train import train_tokenizer
from ruadapt.vocab.checktext import CHECK_TEXT, check_text_hash, check_text_ids
from tokenizers import Tokenizer

UNRECOGNISED = "BPE pre-tokenizer was not recognized"  # the stock converter's error for an unknown check-text hash
BASES = {"qwen2.5": "Qwen2.5", "llama-3": "Llama-3", "mistral-nemo": "Mistral-Nemo", "gemma-3": "Gemma-3"}
BULGARIAN = "Говорим нещо на Български и болгарски: нещо хорошее, нещо новое, на Български языке."


def _llama_cpp() -> Path | None:
    given = os.environ.get("RUADAPT_LLAMA_CPP")
    if given:  # make test names it: missing is then a failure, not a skip
        return Path(given)
    default = ROOT / ".cache" / "llama-cpp-python-0.3.36"
    return default if default.is_dir() else None


LLAMA_CPP = _llama_cpp()
pytestmark = pytest.mark.skipif(
    LLAMA_CPP is None, reason="llama.cpp's converter not fetched: run `make llama-cpp` (or set RUADAPT_LLAMA_CPP)"
)


@pytest.fixture(scope="module")
def converter():
    return find_converter(LLAMA_CPP)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def corpus(work) -> Path:
    """1500 lines of ru_train and 150 of a sentence with the check text's Bulgarian words."""
    lines = (SHARED_DATA / "ru_train.txt").read_text(encoding="utf-8").splitlines()[:1500]
    path = work / "corpus.txt"
    path.write_text("\n".join(lines + [BULGARIAN] * 150) + "\n", encoding="utf-8")
    return path


def _extend(work: Path, corpus: Path, keep: bool) -> Path:
    out = work / f"ext-keep{int(keep)}"
    if not out.exists():
        train_tokenizer(
            SHARED_TOKENIZERS / "qwen2.5",
            [corpus],
            out,
            mode="extend",
            new_tokens=300,
            keep_check_text=keep,
            progress=False,
        )
    return out


def _vocab_dir(work: Path, tok_dir: Path, model_type: str = "qwen2") -> Path:
    """config.json + tokenizer files: what the stock converter reads with --vocab-only."""
    out = work / f"vocab-{tok_dir.name}"
    if not out.exists():
        out.mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(tok_dir / f, out / f)
        n = max(Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab(with_added_tokens=True).values()) + 1
        arch = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[model_type]
        (out / "config.json").write_text(
            json.dumps(
                {
                    "architectures": [arch],
                    "model_type": model_type,
                    "vocab_size": n,
                    "hidden_size": 16,
                    "intermediate_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 1,
                    "max_position_embeddings": 256,
                    "rms_norm_eps": 1e-6,
                }
            )
        )
    return out


def _stock(converter, model_dir: Path, out: Path) -> subprocess.CompletedProcess:
    """llama.cpp's converter as people run it: no name given."""
    return subprocess.run(
        [sys.executable, str(converter.script), str(model_dir), "--vocab-only", "--outfile", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )


# ------------------------------------------------------------------------------------------ the name table
def test_check_text_and_name_table_are_the_converters(converter):
    """ruadapt's copy of the check text is the converter's, and each table entry is what the converter itself
    says for the genuine base tokenizer (hash -> name), with the flags llama.cpp assumes for that name."""
    assert converter.check_text() == CHECK_TEXT
    stock = converter.stock_names()
    assert len(load_table()) == len(BASES)
    for folder, base in BASES.items():
        path = SHARED_TOKENIZERS / folder / "tokenizer.json"
        spec = json.loads(path.read_text(encoding="utf-8"))
        entry = lookup(spec, str(path))
        assert entry.base == base
        chk = check_text_hash(check_text_ids(Tokenizer.from_file(str(path))))
        assert chk == entry.check_text_sha256 and stock[chk] == entry.pre, folder
        assert bool(spec["model"].get("ignore_merges")) == entry.ignore_merges


def test_table_refuses_what_llama_cpp_cannot_reproduce():
    path = SHARED_TOKENIZERS / "llama-3" / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    spec["model"]["ignore_merges"] = False  # llama.cpp's llama-bpe always ignores merges for whole-word tokens
    with pytest.raises(RuadaptError, match="model.ignore_merges is false.*'llama-bpe'"):
        lookup(spec, "x/tokenizer.json")
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+|."
    with pytest.raises(RuadaptError, match="match no base.*--pre NAME"):
        lookup(spec, "x/tokenizer.json")


# ------------------------------------------------------------------------------------------ the guard (train)
@pytest.mark.slow
def test_extend_guard_keeps_the_stock_conversion_working(work, corpus, converter):
    """Without the guard, merges learned from the Bulgarian words change the check text's ids and the stock
    converter stops recognising Qwen2; with it, the same training skips those merges and the stock converter
    names the result 'qwen2'."""
    plain = json.loads((_extend(work, corpus, keep=False) / "ruadapt_tokenizer.json").read_text())["result"]
    guarded = check_record(json.loads((_extend(work, corpus, keep=True) / "ruadapt_tokenizer.json").read_text()))[
        "result"
    ]
    assert plain["llama_cpp_check_text"] == {"segmentation_kept": False}
    assert guarded["llama_cpp_check_text"]["pairs_forbidden"] == 54
    assert guarded["llama_cpp_check_text"]["merges_skipped"] > 0
    assert guarded["llama_cpp_check_text"]["segmentation_kept"] is True
    assert guarded["new_tokens"] == plain["new_tokens"] == 300

    failed = _stock(converter, _vocab_dir(work, _extend(work, corpus, keep=False)), work / "plain.gguf")
    assert failed.returncode != 0 and UNRECOGNISED in failed.stdout
    ok = _stock(converter, _vocab_dir(work, _extend(work, corpus, keep=True)), work / "guarded.gguf")
    assert ok.returncode == 0, ok.stdout[-2000:]
    from gguf import GGUFReader

    fields = GGUFReader(str(work / "guarded.gguf")).fields
    assert fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert len(fields["tokenizer.ggml.tokens"].contents()) == guarded["tokens"]


# ------------------------------------------------------------------------------------------ ruadapt gguf
@pytest.fixture(scope="module")
def models(work, corpus):
    """name -> (model dir, pre-tokenizer name, does the stock converter know its check-text hash)."""
    built: dict[str, tuple[Path, str, bool]] = {}

    def get(name: str) -> tuple[Path, str, bool]:
        if name in built:
            return built[name]
        base_type = "llama" if name.startswith("llama") else "qwen2"
        base = work / f"tiny-{base_type}"
        if not base.exists():
            make_tiny_model(base, base_type)
        out = work / f"model-{name}"
        if name == "qwen-extend":
            tok = _extend(work, corpus, keep=True)
            assert main(["-q", "swap", "--model", str(base), "--tokenizer", str(tok), "--out", str(out)]) == 0
        elif name in ("qwen-replace", "llama-replace"):
            tok = work / f"tok-{name}"
            family = "llama-3" if base_type == "llama" else "qwen2.5"
            assert (
                main(
                    [
                        "-q",
                        "tokenizer",
                        "train",
                        "--base",
                        str(SHARED_TOKENIZERS / family),
                        "--corpus",
                        str(corpus),
                        "--mode",
                        "replace",
                        "--vocab-size",
                        "2000",
                        "--out",
                        str(tok),
                    ]
                )
                == 0
            )
            assert main(["-q", "swap", "--model", str(base), "--tokenizer", str(tok), "--out", str(out)]) == 0
        elif name == "qwen-trim":
            assert main(["-q", "trim", "--model", str(base), "--corpus", str(corpus), "--out", str(out)]) == 0
        pre = "llama-bpe" if base_type == "llama" else "qwen2"
        built[name] = (out, pre, name == "qwen-extend")
        return built[name]

    return get


@pytest.mark.parametrize(
    "name",
    [
        "qwen-extend",
        pytest.param("qwen-replace", marks=pytest.mark.slow),
        pytest.param("qwen-trim", marks=pytest.mark.slow),
        pytest.param("llama-replace", marks=pytest.mark.slow),
    ],
)
def test_convert_reads_back_every_token(name, models, work, capsys):
    model_dir, pre, stock_knows = models(name)
    out = work / "gguf" / f"{name}.gguf"
    argv = [
        "-q",
        "gguf",
        "--model",
        str(model_dir),
        "--llama-cpp",
        str(LLAMA_CPP),
        "--out",
        str(out),
        "--outtype",
        "f32",
    ]
    capsys.readouterr()
    assert main(argv + ["--dry-run"]) == 0  # the plan: nothing written, the rows the real run's record gives
    plan = capsys.readouterr().out
    assert not out.exists() and not record_path(out).exists() and not list(out.parent.glob(f".{name}*"))
    assert main(argv) == 0
    assert f"pre-tokenizer {pre!r}" in capsys.readouterr().out
    assert sorted(
        p.name for p in out.parent.iterdir() if p.name.startswith(f"{name}.") or p.name.startswith(f".{name}")
    ) == [f"{name}.gguf", f"{name}.gguf.ruadapt_gguf.json"]  # no temporary left
    record = check_record(json.loads(record_path(out).read_text()))
    r = record["result"]
    config = json.loads((model_dir / "config.json").read_text())
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    n = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    assert r["gguf"]["pre"] == r["pre"]["name"] == pre and r["pre"]["source"] == "table"
    assert r["gguf"]["tokens"] == n and r["gguf"]["rows"] == config["vocab_size"]
    assert r["gguf"]["merges"] == len(json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"])
    eos = json.loads((model_dir / "tokenizer_config.json").read_text())["eos_token"]
    assert r["gguf"]["special_ids"]["eos"] == tok.token_to_id(eos if isinstance(eos, str) else eos["content"])
    # the stock converter would have found the name itself only for the extension (same check-text ids as the base)
    assert (r["pre"]["stock_converter_name"] == pre) is stock_knows
    assert record["inputs"]["converter"]["gguf_py_version"] == "0.19.0"
    assert r["file"]["bytes"] == out.stat().st_size
    tensor_bytes = int(re.search(r"^tensor bytes +([\d,]+)", plan, re.M).group(1).replace(",", ""))
    assert f"rows            {r['gguf']['rows']:,} (tokens {r['gguf']['tokens']:,}, " in plan
    assert 0 < tensor_bytes <= out.stat().st_size  # the f32 tensors; the file adds the vocabulary and metadata


@pytest.mark.slow
def test_stock_converter_still_fails_on_a_replaced_vocabulary(models, work, converter):
    """What `ruadapt gguf` is for: if upstream ever recognised renumbered vocabularies, this would notice."""
    model_dir, _, _ = models("qwen-replace")
    p = _stock(converter, model_dir, work / "stock-replace.gguf")
    assert p.returncode != 0 and UNRECOGNISED in p.stdout


def test_read_back_catches_a_wrong_vocabulary(models, work, converter):
    """The structural check is not vacuous: the extension's GGUF against the base model's directory (the same
    Qwen2 pre-tokenizer and ids up to len(base)) fails on the first new token, and on another name."""
    model_dir, _, _ = models("qwen-extend")
    gguf = work / "gguf" / "qwen-extend.gguf"
    if not gguf.exists():
        assert main(["-q", "gguf", "--model", str(model_dir), "--llama-cpp", str(LLAMA_CPP), "--out", str(gguf)]) == 0
    base = work / "tiny-qwen2"
    with pytest.raises(RuadaptError, match=r"token 151665 is .*tokenizer.json has '\[PAD151665\] \(unused\)'"):
        check_gguf(gguf, base, "qwen2")
    with pytest.raises(RuadaptError, match="tokenizer.ggml.pre is 'qwen2', not the 'llama-bpe' asked for"):
        check_gguf(gguf, model_dir, "llama-bpe")


@pytest.mark.slow
@pytest.mark.skipif(
    not have_llama_cpp(),
    reason="llama_cpp (llama-cpp-python, a C++ build) is not importable; bench/gguf_llama_cpp.py says how to build it",
)
def test_verify_text_runs_the_file_in_llama_cpp(models, work):
    """Opt-in (needs a llama_cpp build): llama.cpp tokenizes every line as transformers does and its logits
    agree within 1e-2, for a replaced vocabulary whose name came from the table."""
    model_dir, _, _ = models("qwen-replace")
    lines = [
        x
        for f in ("ru_eval.txt", "en_eval.txt")
        for x in (SHARED_DATA / f).read_text(encoding="utf-8").splitlines()[:300]
        if x.strip()
    ]
    text = work / "verify.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = work / "gguf" / "verified.gguf"
    assert (
        main(
            [
                "-q",
                "gguf",
                "--model",
                str(model_dir),
                "--llama-cpp",
                str(LLAMA_CPP),
                "--out",
                str(out),
                "--outtype",
                "f32",
                "--verify-text",
                str(text),
            ]
        )
        == 0
    )
    r = check_record(json.loads(record_path(out).read_text()))["result"]
    assert r["verify_ids"]["lines"] == len(lines) and r["verify_ids"]["lines_differing"] == 0
    assert r["verify_logits"]["max_abs_diff"] < 1e-2 and r["verify_logits"]["argmax_agreement"] == 1.0


# ------------------------------------------------------------------------------------------ refusals
def _fails(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_bad_input_is_one_line_and_writes_nothing(models, work, capsys):
    model_dir, _, _ = models("qwen-extend")
    d = work / "refusals"
    d.mkdir(exist_ok=True)
    args = ["gguf", "--model", str(model_dir), "--llama-cpp", str(LLAMA_CPP)]
    (d / "taken.gguf").write_bytes(b"old")
    _fails(capsys, [*args, "--out", str(d / "taken.gguf")], "exists", "--overwrite")
    assert (d / "taken.gguf").read_bytes() == b"old"
    _fails(capsys, [*args, "--out", str(model_dir / "x.gguf")], "must not be an input")
    _fails(
        capsys,
        ["gguf", "--model", str(model_dir), "--llama-cpp", str(d), "--out", str(d / "a.gguf")],
        "no convert_hf_to_gguf.py",
    )
    _fails(capsys, [*args, "--out", str(d / "a.gguf"), "--verify-text", str(d / "missing.txt")], "--verify-text")
    # a converter failure (an architecture it does not know) is one line with the converter's reason
    odd = work / "odd-arch"
    if not odd.exists():
        shutil.copytree(model_dir, odd)
        cfg = json.loads((odd / "config.json").read_text())
        cfg["architectures"] = ["NoSuchModelForCausalLM"]
        (odd / "config.json").write_text(json.dumps(cfg))
    _fails(
        capsys,
        ["gguf", "--model", str(odd), "--llama-cpp", str(LLAMA_CPP), "--out", str(d / "b.gguf")],
        "llama.cpp's converter failed",
    )
    assert sorted(p.name for p in d.iterdir()) == ["taken.gguf"]
