"""Token → raw bytes → base pieces (docs/design.md §3), checked against an independent naive BPE."""

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from ruadapt.vocab.pieces import (
    ROW_COPY,
    ROW_MEAN,
    TokenCodec,
    build_matrix,
    build_vocab_map,
    bytes_to_unicode,
)
from reference import reference_pieces
from tiny import SHARED_TOKENIZERS

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
