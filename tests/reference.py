"""Independent reference implementations, written without ruadapt and without the tokenizers library's
BPE, so that tests (and benches) can check ruadapt's results against something computed another way."""

from __future__ import annotations


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → character table, as published with GPT-2 (written out again on purpose)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def naive_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Textbook BPE: repeatedly merge the adjacent pair with the lowest merge rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        best = min(range(len(symbols) - 1), key=lambda i: ranks.get((symbols[i], symbols[i + 1]), 1 << 60))
        if (symbols[best], symbols[best + 1]) not in ranks:
            break
        symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
    return symbols


_RANKS: dict[int, dict[tuple[str, str], int]] = {}


def merge_ranks(model: dict) -> dict[tuple[str, str], int]:
    key = id(model["merges"])
    if key not in _RANKS:
        _RANKS[key] = {
            tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m): i for i, m in enumerate(model["merges"])
        }
    return _RANKS[key]


def reference_pieces(tokenizer_json: dict, data: bytes) -> list[int]:
    """Base pieces of raw bytes, computed without ruadapt and without the tokenizers library's BPE."""
    model = tokenizer_json["model"]
    vocab = model["vocab"]
    ranks = merge_ranks(model)
    if model.get("byte_fallback"):  # SentencePiece-style: chars, ▁ for space, <0xNN> for unknown chars
        text = data.decode("utf-8").replace(" ", "\u2581")
        out = []
        for piece in naive_bpe(list(text), ranks):
            if piece in vocab:
                out.append(vocab[piece])
            else:
                out.extend(vocab[f"<0x{b:02X}>"] for b in piece.encode("utf-8"))
        return out
    table = bytes_to_unicode()
    word = "".join(table[b] for b in data)
    if model.get("ignore_merges") and word in vocab:  # Llama-3 / Mistral-Nemo: a known word stays whole
        return [vocab[word]]
    return [vocab[p] for p in naive_bpe(list(word), ranks)]


def piece_bytes(tokenizer_json: dict, piece: str) -> bytes:
    """Raw bytes of a model-vocabulary string of a byte-level or SentencePiece-style BPE."""
    if tokenizer_json["model"].get("byte_fallback"):
        return piece.replace("\u2581", " ").encode("utf-8")
    inv = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(inv[c] for c in piece)
