"""Model cards and lineage (issue 18 point 4): every model-writing stage leaves README.md with Hugging Face
metadata and ruadapt_lineage.json; lineage and licence carry across stages."""

import json
import shutil

from tiny import SHARED_DATA, SHARED_TOKENIZERS, make_tiny_model

from ruadapt.cli import main
from ruadapt.io.model_card import model_name, read_front_matter
from ruadapt.tokenizer.train import train_tokenizer


def test_swap_then_trim_cards_carry_lineage_licence_and_chars_per_token(tmp_path):
    # a base as it sits in a hub cache, with a licence in its card
    base = make_tiny_model(tmp_path / "hub" / "models--Qwen--Qwen2.5-7B" / "snapshots" / ("a" * 40), "qwen2")
    (base / "README.md").write_text(
        "---\nlicense: apache-2.0\nlicense_link: https://example.org/LICENSE\n---\n# Qwen\n"
    )
    corpus = tmp_path / "ru.txt"
    corpus.write_text(
        "".join((SHARED_DATA / "ru_train.txt").read_text(encoding="utf-8").splitlines(True)[:1500]), encoding="utf-8"
    )
    tok = tmp_path / "tok"
    train_tokenizer(SHARED_TOKENIZERS / "qwen2.5", [corpus], tok, new_tokens=100, progress=False)
    swapped, trimmed = tmp_path / "swapped", tmp_path / "trimmed"
    assert main(["-q", "swap", "--model", str(base), "--tokenizer", str(tok), "--out", str(swapped)]) == 0
    meta = read_front_matter(swapped / "README.md")
    assert meta["base_model"] == "Qwen/Qwen2.5-7B" == model_name(base)
    assert meta["license"] == "apache-2.0" and meta["license_link"] == "https://example.org/LICENSE"
    assert "ruadapt" in meta["tags"] and meta["library_name"] == "transformers"
    lineage = json.loads((swapped / "ruadapt_lineage.json").read_text())
    (stage,) = lineage["stages"]
    rec = json.loads((tok / "ruadapt_tokenizer.json").read_text())["result"]
    chars = sum(c["chars"] for c in rec["corpora"])
    assert stage["stage"] == "swap" and stage["tokenizer"]["chars_per_token"] == round(
        chars / rec["training_tokens_after"], 3
    )
    assert stage["figures"]["tokens"] == rec["tokens"]
    card = (swapped / "README.md").read_text()
    assert f"{stage['tokenizer']['chars_per_token']:.2f} chars/token" in card and "| 1 | swap |" in card

    assert main(["-q", "trim", "--model", str(swapped), "--corpus", str(corpus), "--out", str(trimmed)]) == 0
    lineage = json.loads((trimmed / "ruadapt_lineage.json").read_text())
    assert [s["stage"] for s in lineage["stages"]] == ["swap", "trim"]
    meta = read_front_matter(trimmed / "README.md")
    assert meta["base_model"] == "Qwen/Qwen2.5-7B" and meta["license"] == "apache-2.0"
    assert "| 2 | trim |" in (trimmed / "README.md").read_text()


def test_card_without_licence_says_so(tmp_path):
    base = make_tiny_model(tmp_path / "base", "llama")
    shutil.rmtree(tmp_path / "base" / "README.md", ignore_errors=True)
    out = tmp_path / "out"
    assert (
        main(
            [
                "-q",
                "swap",
                "--model",
                str(base),
                "--tokenizer",
                str(base),
                "--out",
                str(out),
                "--allow",
                "same-tokenizer",
            ]
        )
        == 0
    )
    meta = read_front_matter(out / "README.md")
    # the card names a local base by its folder, not by this machine's absolute path; the lineage keeps the path
    assert "license" not in meta and meta["base_model"] == "base"
    assert str(tmp_path) not in (out / "README.md").read_text()
    assert json.loads((out / "ruadapt_lineage.json").read_text())["roots"] == [str(base.resolve())]
    assert "states none" in (out / "README.md").read_text()
