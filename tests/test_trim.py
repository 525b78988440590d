"""``ruadapt trim``: segmentation kept, rows copied by the id map, logits permuted exactly, errors are one line.

Checks are made another way than the code computes them: token strings through transformers' AutoTokenizer
(the code uses raw ``tokenizers`` ids), logits of the loaded models, tensor hashes of the files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import SHARED_DATA, SHARED_TOKENIZERS, copy_tokenizer, dir_hash, make_tiny_model, tensor_hashes

from ruadapt.cli import main
from ruadapt.io.record import check_record
from ruadapt.trim import trim_tokenizer
from ruadapt.vocab.measure import chars_per_token

RU_EVAL = SHARED_DATA / "ru_eval.txt"
EN_EVAL = SHARED_DATA / "en_eval.txt"
VOCAB_NAMES = {
    "model.embed_tokens.weight",
    "lm_head.weight",
    "shared.weight",
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
}


def _head(path: Path, n: int, skip: int = 0) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f):
            if k >= skip + n:
                break
            if k >= skip:
                out.append(line.rstrip("\n"))
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trim")


@pytest.fixture(scope="module")
def corpus(work) -> Path:
    """A slice of ru_train + en_train."""
    path = work / "slice.txt"
    path.write_text(
        "\n".join(_head(SHARED_DATA / "ru_train.txt", 1500) + _head(SHARED_DATA / "en_train.txt", 500)) + "\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def small_corpus(work) -> Path:
    path = work / "small.txt"
    path.write_text(
        "\n".join(_head(SHARED_DATA / "ru_train.txt", 150) + _head(SHARED_DATA / "en_train.txt", 50)) + "\n",
        encoding="utf-8",
    )
    return path


def _record(out: Path) -> dict:
    return check_record(json.loads((out / "ruadapt_trim.json").read_text()))


def _id_map(out: Path) -> tuple[dict[int, int], list[int]]:
    data = json.loads((out / "id_map.json").read_text())
    return {int(k): v for k, v in data["old_to_new"].items()}, data["new_to_old"]


# --------------------------------------------------------------------------- 1. Qwen2.5 real tokenizer
@pytest.fixture(scope="module")
def qwen_trimmed(work, corpus) -> tuple[Path, Path]:
    src = copy_tokenizer("qwen2.5", work / "qwen_tok")
    out = work / "qwen_tok_trim"
    assert (
        main(
            [
                "-q",
                "trim",
                "--tokenizer",
                str(src),
                "--corpus",
                str(corpus),
                "--out",
                str(out),
                "--eval-text",
                str(RU_EVAL),
                str(EN_EVAL),
            ]
        )
        == 0
    )
    return src, out


def test_qwen_keeps_every_used_token_and_segmentation(qwen_trimmed, corpus):
    from transformers import AutoTokenizer

    src, out = qwen_trimmed
    old, new = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    assert len(new) < len(old) // 3  # the vocabulary really shrank
    lines = corpus.read_text(encoding="utf-8").splitlines()
    old_ids = old(lines, add_special_tokens=False)["input_ids"]
    new_ids = new(lines, add_special_tokens=False)["input_ids"]
    for line, o, n in zip(lines, old_ids, new_ids):
        assert old.convert_ids_to_tokens(o) == new.convert_ids_to_tokens(n), line
    # every kept token keeps its string under its new id, ids are compact and in the old order
    old_to_new, new_to_old = _id_map(out)
    assert new_to_old == sorted(new_to_old) and list(old_to_new.values()) == list(range(len(new)))
    assert all(old.convert_ids_to_tokens(o) == new.convert_ids_to_tokens(n) for o, n in old_to_new.items())
    # specials: same strings, ids remapped, tokenizer_config in sync; chat template renders the same string
    for tok_str in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert new.convert_ids_to_tokens(old_to_new[old.convert_tokens_to_ids(tok_str)]) == tok_str
    decoder = json.loads((out / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {int(i): t["content"] for i, t in decoder.items()} == {
        i: t.content for i, t in new.added_tokens_decoder.items()
    }
    chat = [{"role": "system", "content": "Ты помощник."}, {"role": "user", "content": "Привет, как дела?"}]
    assert old.apply_chat_template(chat, tokenize=False) == new.apply_chat_template(chat, tokenize=False)


def test_qwen_eval_round_trip_and_changed_lines_count(qwen_trimmed):
    from transformers import AutoTokenizer

    src, out = qwen_trimmed
    old, new = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    record = _record(out)
    for path in (RU_EVAL, EN_EVAL):
        lines = [x for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]
        new_ids = new(lines, add_special_tokens=False)["input_ids"]
        assert new.batch_decode(new_ids) == lines  # round trip, though many of their tokens were dropped
        old_ids = old(lines, add_special_tokens=False)["input_ids"]
        changed = sum(old.convert_ids_to_tokens(o) != new.convert_ids_to_tokens(n) for o, n in zip(old_ids, new_ids))
        reported = record["result"]["segmentation"]["eval"][str(path)]
        assert changed > 0 and reported["lines_segmentation_changed"] == changed
        assert reported["lines_not_round_trip"] == 0
        if path == RU_EVAL:  # chars/token as the tokenizer report computes it (once: 4 encodes of the file)
            assert reported["chars_per_token_before"] == round(chars_per_token(src, path)["chars_per_token"], 4)
            assert reported["chars_per_token_after"] == round(chars_per_token(out, path)["chars_per_token"], 4)
        assert reported["tokens_before"] == sum(map(len, old_ids)) and reported["tokens_after"] == sum(
            map(len, new_ids)
        )
    assert record["result"]["segmentation"]["corpus"]["lines_segmentation_changed"] == 0
    assert (
        record["result"]["vocabulary"]["kept_by_reason"]["alphabet"]
        + record["result"]["vocabulary"]["kept_by_reason"]["special"]
        == 256 + 22
    )


def test_keep_top_drops_used_tokens_but_text_round_trips(work, corpus):
    from transformers import AutoTokenizer

    from tokenizers import Tokenizer

    src = SHARED_TOKENIZERS / "qwen2.5"
    out = work / "qwen_top"
    extra = ["ĠKubernetes", "Ġquaternion"]  # whole tokens of the original, absent from the slice
    raw_old = Tokenizer.from_file(str(src / "tokenizer.json"))
    assert all(raw_old.token_to_id(t) is not None for t in extra)
    assert "Kubernetes" not in corpus.read_text(encoding="utf-8")
    keep = work / "keep.txt"
    keep.write_text("\n".join(extra) + "\n", encoding="utf-8")
    data = trim_tokenizer(src, [corpus], out, keep_top=2500, keep_tokens=keep, progress=False)
    old, new = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    assert 2400 <= len(new) <= 2500
    # closure: every kept token that the original BPE builds from its own string is still built by the new one
    raw_new = Tokenizer.from_file(str(out / "tokenizer.json"))
    for t in extra:
        assert raw_new.encode(" " + t[1:], add_special_tokens=False).tokens == [t]
    reachable = 0
    for piece, _i in raw_new.get_vocab(with_added_tokens=False).items():
        if [x.value for x in raw_old.model.tokenize(piece)] == [piece]:
            assert [x.value for x in raw_new.model.tokenize(piece)] == [piece], piece
            reachable += 1
    assert reachable > 2000
    lines = corpus.read_text(encoding="utf-8").splitlines()
    ids = new(lines, add_special_tokens=False)["input_ids"]
    assert new.batch_decode(ids) == lines
    # coverage reported = share of the corpus's original token occurrences whose token survived
    kept = {old.convert_ids_to_tokens(o) for o in _id_map(out)[1]}
    occ = [t for o in old(lines, add_special_tokens=False)["input_ids"] for t in old.convert_ids_to_tokens(o)]
    cover = sum(t in kept for t in occ) / len(occ)
    assert abs(data["result"]["segmentation"]["corpus"]["coverage_of_token_occurrences"] - cover) < 1e-6
    assert 0.9 < cover < 1.0


# --------------------------------------------------------------------------- 2. tiny models
def _check_tensors(src: Path, out: Path, kept: list[int], n_new: int) -> None:
    """Non-vocabulary tensors bit-identical; vocabulary rows = old rows by the id map; padding = mean token row."""
    from safetensors import safe_open

    a, b = tensor_hashes(src), tensor_hashes(out)
    assert set(a) == set(b)
    for name in a:
        if name not in VOCAB_NAMES:
            assert a[name] == b[name], name

    def load(d: Path, name: str) -> torch.Tensor:
        for f in d.glob("*.safetensors"):
            with safe_open(f, "pt") as h:
                if name in h.keys():
                    return h.get_tensor(name)
        raise KeyError(name)

    for name in VOCAB_NAMES & set(a):
        old, new = load(src, name), load(out, name)
        assert torch.equal(new[:n_new], old[torch.tensor(kept)]), name
        if new.shape[0] > n_new:
            n_old_tokens = max(kept) + 1
            ref = old[:n_old_tokens].double().mean(0).to(old.dtype)
            assert torch.allclose(new[n_new:], ref.expand_as(new[n_new:]), atol=1e-6), name


@pytest.mark.parametrize(
    "model_type,tied",
    [("qwen2", True), ("qwen2", False), ("llama", False), ("gemma3_text", None)],
)
def test_tiny_causal_lm_logits_permuted_exactly(work, small_corpus, model_type, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = make_tiny_model(work / f"{model_type}-{tied}", model_type, tied=tied)
    before = dir_hash(src)
    out = work / f"{model_type}-{tied}-trim"
    assert main(["-q", "trim", "--model", str(src), "--corpus", str(small_corpus), "--out", str(out)]) == 0
    assert dir_hash(src) == before
    old_to_new, kept = _id_map(out)
    new_tok = AutoTokenizer.from_pretrained(out)
    _check_tensors(src, out, kept, len(new_tok))

    old_m = AutoModelForCausalLM.from_pretrained(src).eval()
    new_m = AutoModelForCausalLM.from_pretrained(out).eval()
    old_tok = AutoTokenizer.from_pretrained(src)
    text = small_corpus.read_text(encoding="utf-8").splitlines()[3][:200]
    old_ids = old_tok(text, add_special_tokens=False)["input_ids"][:24]
    new_ids = [old_to_new[i] for i in old_ids]  # every token of the corpus was kept
    assert new_tok(text, add_special_tokens=False)["input_ids"][:24] == new_ids
    with torch.no_grad():
        lo = old_m(torch.tensor([old_ids])).logits[0]
        ln = new_m(torch.tensor([new_ids])).logits[0]
    assert ln.shape[-1] == json.loads((out / "config.json").read_text())["vocab_size"]
    assert torch.equal(ln[:, : len(kept)], lo[:, torch.tensor(kept)])

    cfg_old = json.loads((src / "config.json").read_text())
    cfg_new = json.loads((out / "config.json").read_text())
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if cfg_old.get(key) is not None:
            assert new_tok.convert_ids_to_tokens(cfg_new[key]) == old_tok.convert_ids_to_tokens(cfg_old[key]), key
    assert cfg_new.get("tie_word_embeddings") == cfg_old.get("tie_word_embeddings")
    gen = new_m.generate(torch.tensor([new_ids[:5]]), max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 9)
    record = _record(out)
    assert record["result"]["model"]["parameters_after"] < record["result"]["model"]["parameters_before"]


@pytest.fixture(scope="module")
def unigram_dir(work) -> Path:
    """A Unigram tokenizer trained here with ``tokenizers`` (mT5-style: </s> appended, extra_ids on top)."""
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    d = work / "unigram"
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(  # small seed and fast shrinking: seconds instead of ~15 s of EM on 2 cores
        vocab_size=800,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
        seed_size=20000,
        shrinking_factor=0.3,
        n_sub_iterations=1,
    )
    tok.train_from_iterator(
        _head(SHARED_DATA / "ru_train.txt", 900) + _head(SHARED_DATA / "en_train.txt", 200), trainer
    )
    tok.add_special_tokens([f"<extra_id_{i}>" for i in range(9, -1, -1)])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    ).save_pretrained(d)
    return d


def _t5(work: Path, tok_dir: Path, model_type: str) -> Path:
    """A tiny T5-family model. ``mt5``: untied lm_head as mt5-small's config says (transformers 5.24 then also saves
    the tied encoder/decoder copies); ``t5``: tied, and only ``shared.weight`` is saved."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    d = work / model_type
    shutil.copytree(tok_dir, d)
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=896,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    if model_type == "mt5":
        cfg.tie_word_embeddings = False  # the config forces True in __post_init__; set it after, as a loaded mT5 has it
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(d)
    return d


@pytest.mark.parametrize("model_type", ["mt5", "t5"])
def test_tiny_t5_unigram_logits_permuted_exactly(work, unigram_dir, model_type):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    src = _t5(work, unigram_dir, model_type)
    saved = set(tensor_hashes(src)) & VOCAB_NAMES
    assert saved == (
        {"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
        if model_type == "mt5"
        else {"shared.weight"}
    )
    corpus = work / "t5_corpus.txt"
    corpus.write_text("\n".join(_head(SHARED_DATA / "ru_train.txt", 60, skip=900)) + "\n", encoding="utf-8")
    out = work / f"{model_type}-trim"
    assert (
        main(
            ["-q", "trim", "--model", str(src), "--corpus", str(corpus), "--out", str(out), "--eval-text", str(corpus)]
        )
        == 0
    )
    old_to_new, kept = _id_map(out)
    old_tok, new_tok = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    assert len(new_tok) < len(old_tok)
    _check_tensors(src, out, kept, len(new_tok))
    lines = corpus.read_text(encoding="utf-8").splitlines()
    for line in lines:  # same pieces (Unigram best path over a superset of its pieces)
        assert old_tok.convert_ids_to_tokens(old_tok(line)["input_ids"]) == new_tok.convert_ids_to_tokens(
            new_tok(line)["input_ids"]
        )
    assert _record(out)["result"]["segmentation"]["eval"][str(corpus)]["lines_segmentation_changed"] == 0

    old_m = AutoModelForSeq2SeqLM.from_pretrained(src).eval()
    new_m = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    tied = new_m.lm_head.weight.data_ptr() == new_m.shared.weight.data_ptr()
    assert tied == (model_type == "t5")
    enc_old = old_tok(lines[0][:120])["input_ids"]
    dec_old = [0] + old_tok(lines[1][:60], add_special_tokens=False)["input_ids"]
    enc_new, dec_new = [old_to_new[i] for i in enc_old], [old_to_new[i] for i in dec_old]
    with torch.no_grad():
        lo = old_m(input_ids=torch.tensor([enc_old]), decoder_input_ids=torch.tensor([dec_old])).logits[0]
        ln = new_m(input_ids=torch.tensor([enc_new]), decoder_input_ids=torch.tensor([dec_new])).logits[0]
    assert torch.equal(ln[:, : len(kept)], lo[:, torch.tensor(kept)])
    cfg = json.loads((out / "config.json").read_text())
    assert new_tok.convert_ids_to_tokens([cfg["eos_token_id"], cfg["decoder_start_token_id"]]) == ["</s>", "<pad>"]
    gen = new_m.generate(torch.tensor([enc_new]), max_new_tokens=4, do_sample=False)
    assert gen.shape[0] == 1 and gen.shape[1] >= 2


# --------------------------------------------------------------------------- 3. errors
def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_keep_tokens_unknown_token_names_file_and_line(work, small_corpus, capsys):
    bad = work / "bad_keep.txt"
    bad.write_text("Ġthe\nno-such-token-xyz\n", encoding="utf-8")
    out = work / "err_keep"
    _fails(
        capsys,
        [
            "-q",
            "trim",
            "--tokenizer",
            str(SHARED_TOKENIZERS / "qwen2.5"),
            "--corpus",
            str(small_corpus),
            "--out",
            str(out),
            "--keep-tokens",
            str(bad),
        ],
        f"{bad}:2",
        "no-such-token-xyz",
    )
    assert not out.exists()


def test_keep_top_below_must_keep_names_both_numbers(work, small_corpus, capsys):
    src = SHARED_TOKENIZERS / "qwen2.5"
    must = len(json.loads((src / "tokenizer.json").read_text())["added_tokens"]) + 256  # specials + byte alphabet
    out = work / "err_top"
    _fails(
        capsys,
        ["-q", "trim", "--tokenizer", str(src), "--corpus", str(small_corpus), "--out", str(out), "--keep-top", "100"],
        "100",
        str(must),
    )
    assert not out.exists()


def test_bad_inputs_are_one_line_errors_and_write_nothing(work, small_corpus, capsys):
    src = make_tiny_model(work / "err_model", "qwen2", tied=True)
    before = dir_hash(src)
    empty = work / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    out = work / "err_out"
    _fails(
        capsys, ["-q", "trim", "--model", str(src), "--corpus", str(empty), "--out", str(out)], str(empty), "no text"
    )
    assert not out.exists()

    no_tok = work / "no_tok"
    shutil.copytree(src, no_tok)
    (no_tok / "tokenizer.json").unlink()
    _fails(
        capsys,
        ["-q", "trim", "--model", str(no_tok), "--corpus", str(small_corpus), "--out", str(out)],
        "tokenizer.json",
    )
    assert not out.exists()

    busy = work / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    _fails(
        capsys,
        ["-q", "trim", "--model", str(src), "--corpus", str(small_corpus), "--out", str(busy)],
        str(busy),
        "not empty",
    )
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert dir_hash(src) == before
    assert not any(p.name.startswith(".err_out") or p.name.startswith(".busy") for p in work.iterdir())
