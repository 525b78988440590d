"""Token → raw bytes → base pieces (docs/design.md §3), checked against an independent naive BPE."""

import json

import pytest
import torch
from reference import reference_pieces
from tiny import SHARED_TOKENIZERS

from ruadapt.vocab.pieces import (
    ROW_COPY,
    ROW_MEAN,
    TokenCodec,
    build_matrix,
    build_vocab_map,
    bytes_to_unicode,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

BASES = ["qwen2.5", "llama-3", "mistral-nemo", "gemma-3"]


@pytest.fixture(scope="module")
def codecs():
    return {name: TokenCodec(Tokenizer.from_file(str(SHARED_TOKENIZERS / name / "tokenizer.json"))) for name in BASES}


def byte_level(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@pytest.mark.parametrize("name", BASES)
def test_segment_matches_naive_bpe(codecs, name):
    spec = json.loads((SHARED_TOKENIZERS / name / "tokenizer.json").read_text())
    codec = codecs[name]
    words = [" программирование", "Достопримечательности", " нейросетевой", "ёжик", " 12345", " co-operation"]
    for w in words:
        assert codec.segment(w.encode()) == reference_pieces(spec, w.encode()), (name, w)


def test_partial_utf8_token_gets_its_byte_pieces(codecs):
    """A byte-level token made of two Cyrillic lead bytes must map to those two byte tokens, not to '�'."""
    codec = codecs["qwen2.5"]
    lead = bytes_to_unicode()[0xD0]  # 'Ð'
    assert codec.token_bytes(codec.vocab[lead]) == b"\xd0"
    assert codec.segment(b"\xd0\xd0") == [codec.vocab[lead]] * 2
    replacement = codec.tokenizer.encode("\ufffd\ufffd", add_special_tokens=False).ids
    assert replacement != [codec.vocab[lead]] * 2  # what decoding to str and re-encoding would give instead

    # a new vocabulary holding the byte alphabet plus that partial token and a whole word
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    vocab[lead + lead] = 256
    word = "".join(table[b] for b in " мир".encode())  # a single Qwen2.5 token
    vocab[word] = 257
    new = byte_level(vocab)
    vmap = build_vocab_map(codec, new)
    assert vmap.kinds[vocab[lead]] == ROW_COPY and vmap.sources[vocab[lead]] == (codec.vocab[lead],)
    assert vmap.kinds[256] == ROW_MEAN and vmap.sources[256] == (codec.vocab[lead], codec.vocab[lead])
    assert vmap.kinds[257] == ROW_COPY and vmap.sources[257] == (codec.vocab[word],)


def test_gemma_byte_fallback_and_space_mark(codecs):
    codec = codecs["gemma-3"]
    assert codec.token_bytes(codec.vocab["<0xD0>"]) == b"\xd0"
    assert codec.token_bytes(codec.vocab["\u2581\u043c\u0438\u0440"]) == " мир".encode()
    assert codec.id_of_bytes(" мир".encode()) == codec.vocab["\u2581\u043c\u0438\u0440"]


def test_build_matrix_copies_bit_identically_and_means_new_rows(codecs):
    codec = codecs["qwen2.5"]
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    pieces_word = "".join(table[b] for b in " нейросетевой".encode())
    vocab[pieces_word] = 256
    new = byte_level(vocab)
    vmap = build_vocab_map(codec, new).with_rows(260)
    old = torch.randn(codec.size + 7, 8, dtype=torch.bfloat16)
    for init in ("mean", "weighted"):
        m = build_matrix(vmap, old, init=init)
        for b in range(256):
            assert torch.equal(m[b], old[codec.vocab[table[b]]])
        src = list(vmap.sources[256])
        assert len(src) > 1
        raw = [1.0] * len(src) if init == "mean" else [2.0**-k for k in range(len(src))]  # written out, not imported
        w = torch.tensor(raw, dtype=torch.float32) / sum(raw)
        expect = (old[src].float() * w[:, None]).sum(0).to(torch.bfloat16)
        assert torch.allclose(m[256].float(), expect.float(), atol=1e-2, rtol=0)
        pad = old[: codec.size].double().mean(0).to(torch.bfloat16)
        assert all(torch.equal(m[r], pad) for r in range(257, 260))


def reference_rule(
    rule: str,
    old: torch.Tensor,
    t_mean: torch.Tensor,
    t_weighted: torch.Tensor,
    t_first: torch.Tensor,
    t_last: torch.Tensor,
    n_base: int,
) -> torch.Tensor:
    """A new-row rule on the full matrix in float64, written from its definition (docs/init.md): dense maps
    T (new rows × old rows) times the whole old matrix; ō = the mean of all old token rows."""
    x = old.double()
    o_bar = x[:n_base].mean(0)
    piece = {"mean": t_mean, "weighted": t_weighted, "first": t_first, "last": t_last}
    if rule in piece:
        return piece[rule] @ x
    if rule == "mean-norm":
        m = t_mean @ x
        target = t_mean @ x.norm(dim=1)  # the pieces' mean row norm
        return m * (target / m.norm(dim=1))[:, None]
    if rule == "all":
        return o_bar.expand(t_mean.shape[0], -1)
    base = rule[: -len("-all")]
    return 0.5 * (piece[base] @ x) + 0.5 * o_bar


def test_every_init_rule_equals_the_full_matrix_reference(codecs):
    """The streaming rows of matrix_blocks (chunked, pieces' rows only) against dense T @ old in float64."""
    from ruadapt.vocab.init_rules import RULES

    codec = codecs["qwen2.5"]
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    words = [" нейросетевой", "Достопримечательности", " программирование", " ёжик"]
    for w in words:
        vocab["".join(table[b] for b in w.encode())] = len(vocab)
    vmap = build_vocab_map(codec, byte_level(vocab))
    n_old = codec.size + 7
    torch.manual_seed(0)
    old = torch.randn(n_old, 8) * torch.rand(n_old, 1) * 3  # rows of different norms: mean-norm matters
    new_rows = list(range(256, 256 + len(words)))
    maps = {k: torch.zeros(len(words), n_old, dtype=torch.float64) for k in ("mean", "weighted", "first", "last")}
    for r, w in zip(range(len(words)), words):
        src = reference_pieces(json.loads((SHARED_TOKENIZERS / "qwen2.5" / "tokenizer.json").read_text()), w.encode())
        assert len(src) > 1 and list(vmap.sources[256 + r]) == src
        for k, piece in enumerate(src):
            maps["mean"][r, piece] += 1 / len(src)
            maps["weighted"][r, piece] += 2.0**-k / sum(2.0**-j for j in range(len(src)))
        maps["first"][r, src[0]] = 1.0
        maps["last"][r, src[-1]] = 1.0
    for rule in RULES:
        m = build_matrix(vmap, old, init=rule, chunk_rows=3)  # chunks smaller than the new rows
        expect = reference_rule(rule, old, maps["mean"], maps["weighted"], maps["first"], maps["last"], codec.size)
        assert torch.allclose(m[new_rows].double(), expect, atol=1e-5, rtol=1e-5), rule
        for b in range(256):  # old rows untouched by every rule
            assert torch.equal(m[b], old[codec.vocab[table[b]]])
