"""``ruadapt tokenizer train``: extend every base family, replace, determinism, bad input.

Each family is extended once per session (module fixture, through the real CLI) by a few thousand merges on a
slice of ru_train, and the result is checked against the base tokenizer, the llama.cpp test vectors and
transformers' AutoTokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from tiny import SHARED_DATA, SHARED_TOKENIZERS
from transformers import AutoTokenizer

from ruadapt.cli import main
from ruadapt.io.record import check_record
from ruadapt.io.tokdir import chat_template
from ruadapt.tokenizer.bpe import learn_merges, merge_word
from ruadapt.tokenizer.words import WordSplitter, split_sentencepiece_words
from ruadapt.vocab.checktext import CHECK_TEXT
from ruadapt.vocab.measure import encode_lines
from tokenizers import Tokenizer

FAMILIES = ["qwen2.5", "llama-3", "mistral-nemo", "gemma-3"]
N_NEW = 2000
VECTORS = {  # llama.cpp test vectors made by each base tokenizer (mistral-nemo has none)
    "qwen2.5": "ggml-vocab-qwen2.gguf",
    "llama-3": "ggml-vocab-llama-bpe.gguf",
    "gemma-3": "ggml-vocab-gemma-4.gguf",
}
TESTVECTORS = SHARED_TOKENIZERS / "testvectors" / "llama.cpp"


def lines_of(path: Path) -> list[str]:
    return [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Every 40th line of ru_train: ~4.5k lines of every genre in it (never ru_eval)."""
    lines = lines_of(SHARED_DATA / "ru_train.txt")[::40]
    path = tmp_path_factory.mktemp("corpus") / "ru_slice.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def eval_lines() -> dict[str, list[str]]:
    return {"ru": lines_of(SHARED_DATA / "ru_eval.txt"), "en": lines_of(SHARED_DATA / "en_eval.txt")}


_built: dict[str, Path] = {}


@functools.cache
def base_tok(family: str) -> Tokenizer:
    return Tokenizer.from_file(str(SHARED_TOKENIZERS / family / "tokenizer.json"))


@functools.cache
def base_ids(family: str, lang: str) -> list[list[int]]:
    return encode_lines(base_tok(family), lines_of(SHARED_DATA / f"{lang}_eval.txt"))


@pytest.fixture(scope="module")
def extended(tmp_path_factory, corpus):
    """family → directory of the base extended by N_NEW merges (built on first use, through the CLI)."""

    def get(family: str) -> Path:
        if family not in _built:
            out = tmp_path_factory.mktemp(f"ext-{family}") / "tok"
            rc = main(
                [
                    "-q",
                    "tokenizer",
                    "train",
                    "--base",
                    str(SHARED_TOKENIZERS / family),
                    "--corpus",
                    str(corpus),
                    "--mode",
                    "extend",
                    "--new-tokens",
                    str(N_NEW),
                    "--out",
                    str(out),
                ]
            )
            assert rc == 0
            _built[family] = out
        return _built[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_extend_keeps_base_and_compresses_russian(family, extended, eval_lines):
    out = extended(family)
    base = base_tok(family)
    new = Tokenizer.from_file(str(out / "tokenizer.json"))
    base_vocab = base.get_vocab(with_added_tokens=True)
    new_vocab = new.get_vocab(with_added_tokens=True)
    n_base = max(base_vocab.values()) + 1

    # every base token string keeps its id; new ids are exactly len(base) .. len(base)+N-1
    assert all(new_vocab[s] == i for s, i in base_vocab.items())
    assert sorted(i for s, i in new_vocab.items() if s not in base_vocab) == list(range(n_base, n_base + N_NEW))
    if family == "gemma-3":  # Gemma's SentencePiece rules hold for new pieces too: digits one by one, no "л," or "-то"
        new_strings = [s for s in new_vocab if s not in base_vocab]
        assert not [s for s in new_strings if any("0" <= c <= "9" for c in s)]
        assert not [s for s in new_strings if any(c in ",.-;:!?" for c in s) and any(c.isalpha() for c in s)]
    assert {i: t.content for i, t in new.get_added_tokens_decoder().items()} == {
        i: t.content for i, t in base.get_added_tokens_decoder().items()
    }
    # everything but the model is the base's
    bj, nj = (json.loads(Path(d, "tokenizer.json").read_text()) for d in (SHARED_TOKENIZERS / family, out))
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert nj[key] == bj[key], key
    for key in ("ignore_merges", "byte_fallback", "unk_token", "fuse_unk"):
        assert (nj["model"].get(key) or None) == (bj["model"].get(key) or None), key
    as_pairs = lambda ms: [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in ms]  # noqa: E731
    assert as_pairs(nj["model"]["merges"][: len(bj["model"]["merges"])]) == as_pairs(bj["model"]["merges"])
    assert len(nj["model"]["merges"]) >= len(bj["model"]["merges"]) + N_NEW

    cpt = {}
    for lang, lines in eval_lines.items():
        old_ids = base_ids(family, lang)
        new_ids = encode_lines(new, lines)
        # round trip on every line
        assert new.decode_batch(new_ids, skip_special_tokens=False) == lines, lang
        # continued BPE only merges: a line is never longer, and a line without new ids is the base's
        for b, n in zip(old_ids, new_ids):
            assert len(n) <= len(b)
            if all(i < n_base for i in n):
                assert n == b
        chars = sum(len(x) for x in lines)
        cpt[lang] = (chars / sum(map(len, old_ids)), chars / sum(map(len, new_ids)))
    assert cpt["ru"][1] > cpt["ru"][0] * 1.02
    assert cpt["en"][1] >= 0.995 * cpt["en"][0]

    # transformers gives the same ids as tokenizers, and the chat template's special ids are unchanged
    hf_new = AutoTokenizer.from_pretrained(str(out))
    assert len(hf_new) == n_base + N_NEW
    sample = eval_lines["ru"][:150] + eval_lines["en"][:150]
    assert hf_new(sample, add_special_tokens=False)["input_ids"] == encode_lines(new, sample)
    assert hf_new("Привет, мир!")["input_ids"] == new.encode("Привет, мир!").ids  # with the post-processor
    assert chat_template(out) == chat_template(SHARED_TOKENIZERS / family)
    chat = [{"role": "user", "content": "Как дела?"}, {"role": "assistant", "content": "Хорошо, спасибо."}]
    text = hf_new.apply_chat_template(chat, tokenize=False)
    special = set(base.get_added_tokens_decoder())
    ids_base = base.encode(text, add_special_tokens=False).ids
    ids_new = hf_new.encode(text, add_special_tokens=False)
    assert [i for i in ids_new if i in special] == [i for i in ids_base if i in special] != []
    assert hf_new.decode(ids_new) == text

    record = check_record(json.loads((out / "ruadapt_tokenizer.json").read_text()))
    assert record["result"]["new_tokens"] == N_NEW and record["options"]["mode"] == "extend"
    # llama.cpp's converter still recognises the tokenizer: its check text keeps the base's ids
    guard = record["result"]["llama_cpp_check_text"]
    assert guard["pairs_forbidden"] > 0 and guard["segmentation_kept"] is True
    assert new.encode(CHECK_TEXT).ids == base.encode(CHECK_TEXT).ids
    assert (
        record["result"]["corpora"][0]["sha256"]
        == hashlib.sha256(Path(record["result"]["corpora"][0]["path"]).read_bytes()).hexdigest()
    )


@pytest.mark.parametrize("family", sorted(VECTORS))
def test_untouched_words_match_llama_cpp_vectors(family, extended):
    """Strings whose tokenization uses no new token give exactly llama.cpp's expected base ids."""
    new = Tokenizer.from_file(str(extended(family) / "tokenizer.json"))  # read once per family
    n_base = max(base_tok(family).get_vocab(with_added_tokens=True).values()) + 1
    name = VECTORS[family]
    texts = (TESTVECTORS / f"{name}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    expected = [
        [int(x) for x in line.split()] for line in (TESTVECTORS / f"{name}.out").read_text(encoding="utf-8").split("\n")
    ]
    assert len(texts) > 30
    untouched = 0
    for text, want in zip(texts, expected):
        got = new.encode(text, add_special_tokens=False).ids
        assert new.decode(got) == text
        assert len(got) <= len(want)
        if all(i < n_base for i in got):
            assert got == want, text
            untouched += 1
    assert untouched >= len(texts) - 10


def test_extend_is_deterministic(extended, corpus, tmp_path):
    first = extended("qwen2.5")
    again = tmp_path / "again"
    assert (
        main(
            [
                "-q",
                "tokenizer",
                "train",
                "--base",
                str(SHARED_TOKENIZERS / "qwen2.5"),
                "--corpus",
                str(corpus),
                "--new-tokens",
                str(N_NEW),
                "--out",
                str(again),
            ]
        )
        == 0
    )
    assert (again / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()


def naive_continued_bpe(words: list[list[int]], counts: list[int], pieces: dict[int, str], n_new: int, first_id: int):
    """Reference: recount every pair after every merge; most frequent pair, ties to the smallest (left, right)."""
    words = [list(w) for w in words]
    pieces = dict(pieces)
    merges = []
    for k in range(n_new):
        pc: Counter = Counter()
        for w, c in zip(words, counts):
            for p in zip(w, w[1:]):
                pc[p] += c
        if not pc:
            break
        (a, b), c = min(pc.items(), key=lambda kv: (-kv[1], kv[0]))
        if c < 2:
            break
        tid = first_id + k
        pieces[tid] = pieces[a] + pieces[b]
        merges.append((pieces[a], pieces[b]))
        words = [merge_word(w, a, b, tid) for w in words]
    return merges, words


def test_heap_learner_equals_naive_bpe():
    base = base_tok("qwen2.5")
    lines = lines_of(SHARED_DATA / "ru_train.txt")[1000:1150]
    counts_by_word = Counter(w for line in lines for w, _ in base.pre_tokenizer.pre_tokenize_str(line))
    words = list(counts_by_word)
    segs = [[t.id for t in base.model.tokenize(w)] for w in words]
    pieces = {i: p for p, i in base.get_vocab(with_added_tokens=False).items()}
    counts = [counts_by_word[w] for w in words]
    n0 = len(base.get_vocab(with_added_tokens=True))
    want_merges, want_words = naive_continued_bpe(segs, counts, pieces, 80, n0)
    got = learn_merges([list(s) for s in segs], counts, pieces, first_id=n0, n_new=80, progress=False)
    assert got.merges == want_merges
    assert got.words == want_words


def test_forbidden_pairs_and_results_are_never_merged():
    """The llama.cpp guard's mechanism: a forbidden pair stays apart, a forbidden string never becomes a token,
    and the rest is learned as without them."""
    pieces = {0: "a", 1: "b", 2: "c"}
    words, counts = [[0, 1, 2], [0, 1], [1, 2]], [10, 5, 3]
    free = learn_merges([list(w) for w in words], counts, pieces, first_id=3, n_new=2, progress=False)
    assert free.merges == [("a", "b"), ("ab", "c")]
    got = learn_merges(
        [list(w) for w in words],
        counts,
        pieces,
        first_id=3,
        n_new=2,
        forbidden_pairs={(0, 1)},
        forbidden_results={"abc"},
        progress=False,
    )
    assert got.merges == [("b", "c")] and got.skipped_forbidden == 2
    assert got.words == [[0, 3], [0, 1], [3]] and got.stopped


def test_added_tokens_are_cut_out_of_training_words():
    """Added tokens in a corpus are split off before pre-tokenization, as the tokenizer does at inference."""
    base = base_tok("qwen2.5")
    split = WordSplitter(base, "byte_level")
    line = "<|im_start|>user Привет<|im_end|>!"
    words = split(line)
    assert "".join(words) == "".join(w for p in ("user Привет", "!") for w, _ in base.pre_tokenizer.pre_tokenize_str(p))
    ids = base.encode(line, add_special_tokens=False).ids
    assert [t.id for w in words for t in base.model.tokenize(w)] == [i for i in ids if i < 151643]


def test_sentencepiece_word_split():
    assert split_sentencepiece_words("Привет,▁мир▁▁и▁всё▁") == ["Привет,", "▁мир", "▁▁и", "▁всё", "▁"]
    assert "".join(split_sentencepiece_words("▁a▁▁b")) == "▁a▁▁b"


@pytest.mark.parametrize("family,vocab", [("llama-3", 3000), ("gemma-3", 9000)])
def test_replace_remaps_special_tokens(family, vocab, corpus, tmp_path, eval_lines):
    out = tmp_path / "rep"
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
                str(vocab),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    base = base_tok(family)
    new = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert (
        len(new.get_vocab(with_added_tokens=True)) == max(new.get_vocab(with_added_tokens=True).values()) + 1 <= vocab
    )
    id_map = json.loads((out / "token_id_map.json").read_text())["added_tokens"]
    base_added = {t.content: i for i, t in base.get_added_tokens_decoder().items()}
    assert {c: v[0] for c, v in id_map.items()} == base_added
    assert {c: v[1] for c, v in id_map.items()} == {t.content: i for i, t in new.get_added_tokens_decoder().items()}
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert {v["content"]: int(i) for i, v in cfg["added_tokens_decoder"].items()} == {
        c: v[1] for c, v in id_map.items()
    }
    for lang in ("ru", "en"):
        lines = eval_lines[lang][:400]
        assert [new.decode(x) for x in encode_lines(new, lines)] == lines
    # the post-processor adds the (moved) bos; transformers agrees
    hf = AutoTokenizer.from_pretrained(str(out))
    bos = hf.bos_token
    assert hf.bos_token_id == id_map[bos][1]
    ids = new.encode("Привет").ids
    assert ids[0] == id_map[bos][1] and hf("Привет")["input_ids"] == ids
    chat = [{"role": "user", "content": "Как дела?"}]
    text = hf.apply_chat_template(chat, tokenize=False)
    new_added = {i: t.content for i, t in new.get_added_tokens_decoder().items()}
    base_by_id = {i: c for c, i in base_added.items()}
    in_new = [new_added[i] for i in hf.encode(text, add_special_tokens=False) if i in new_added]
    in_base = [base_by_id[i] for i in base.encode(text, add_special_tokens=False).ids if i in base_by_id]
    assert in_new and in_new == in_base


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    [
        "missing corpus",
        "empty corpus",
        "non-utf8 corpus",
        "no tokenizer.json",
        "zero new tokens",
        "non-empty out",
        "vocab below alphabet",
    ],
)
def test_bad_input_one_line_error_nothing_written(case, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Привет мир\nЕщё строка\n" * 20, encoding="utf-8")
    base = SHARED_TOKENIZERS / "qwen2.5"
    out = tmp_path / "out"
    n = "100"
    if case == "missing corpus":
        corpus = tmp_path / "nope.txt"
    elif case == "empty corpus":
        corpus.write_text("")
    elif case == "non-utf8 corpus":
        corpus.write_bytes("Привет мир\n".encode("cp1251"))
    elif case == "no tokenizer.json":
        base = tmp_path / "emptybase"
        base.mkdir()
    elif case == "zero new tokens":
        n = "0"
    elif case == "non-empty out":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    size = ["--new-tokens", n]
    if case == "vocab below alphabet":  # 22 added tokens + 256 byte symbols > 270
        size = ["--mode", "replace", "--vocab-size", "270"]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, err = run_cli(
        ["-q", "tokenizer", "train", "--base", str(base), "--corpus", str(corpus), *size, "--out", str(out)], capsys
    )
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("ruadapt tokenizer train: error: ")
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "non-empty out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


@pytest.mark.parametrize("mode", ["extend", "replace"])
def test_dry_run_prints_the_plan_and_writes_nothing(mode, tmp_path, capsys):
    """``--dry-run`` checks the inputs, prints mode, base size, each corpus with its size, the target and the
    output, exits 0 and leaves no output folder (nor a temporary one beside it)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("Привет мир\nЕщё строка\n" * 20, encoding="utf-8")
    out = tmp_path / "out"
    size = ["--new-tokens", "100"] if mode == "extend" else ["--mode", "replace", "--vocab-size", "5000"]
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["tokenizer", "train", "--base", str(SHARED_TOKENIZERS / "qwen2.5"), "--corpus", str(corpus), *size]
    rc = main(["-q", *argv, "--out", str(out), "--dry-run"])
    printed = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not out.exists()
    assert printed[0] == "ruadapt tokenizer train --dry-run: checked the inputs; nothing was written"
    fields = {line[:16].strip(): line[16:] for line in printed[1:]}
    assert fields["mode"] == mode
    assert fields["base"].endswith("(byte_level, 151,665 tokens)")
    assert fields["corpus"] == f"{corpus} ({corpus.stat().st_size:,} bytes, text)"
    target = "100 new tokens → at most 151,765 tokens" if mode == "extend" else "a new BPE of 5,000 tokens"
    assert fields["target"].startswith(target)
    assert fields["out"] == f"{out} (not created)"


def test_jsonl_read_as_text_is_refused_and_jsonl_reads_the_text_field(tmp_path, capsys):
    """JSON Lines under a .txt name would teach the tokenizer merges like '."}'; refused with the flag that
    overrides it. The same lines named .jsonl train on the "text" field: no merge holds JSON syntax."""
    import json as _json

    docs = [
        line for line in (SHARED_DATA / "ru_train.txt").read_text(encoding="utf-8").splitlines()[:400] if line.strip()
    ]
    rows = "".join(_json.dumps({"text": d, "id": k}, ensure_ascii=False) + "\n" for k, d in enumerate(docs))
    as_txt, as_jsonl = tmp_path / "docs.txt", tmp_path / "docs.jsonl"
    as_txt.write_text(rows, encoding="utf-8")
    as_jsonl.write_text(rows, encoding="utf-8")
    base = SHARED_TOKENIZERS / "qwen2.5"
    argv = ["-q", "tokenizer", "train", "--base", str(base), "--new-tokens", "60"]
    rc, err = run_cli([*argv, "--corpus", str(as_txt), "--out", str(tmp_path / "o1")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "JSON objects" in err and "--allow json-text" in err and ".jsonl" in err
    assert not (tmp_path / "o1").exists()
    rc, _ = run_cli([*argv, "--corpus", str(as_jsonl), "--out", str(tmp_path / "o2")], capsys)
    assert rc == 0
    merges = _json.loads((tmp_path / "o2" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"][-60:]
    assert not any('"' in "".join(m) or "{" in "".join(m) for m in merges), merges
    rc, err = run_cli([*argv, "--corpus", str(as_txt), "--out", str(tmp_path / "o3"), "--allow", "json-text"], capsys)
    assert rc == 0 and (tmp_path / "o3" / "tokenizer.json").is_file()
