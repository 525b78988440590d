"""Characters per token (docs/design.md §5): the one definition every stage uses (tokenizer report, trim, eval,
bench).

chars/token = Σ len(line) / Σ len(encode(line, add_special_tokens=False)) over the non-empty lines of a file.
Encoding uses the raw ``tokenizers`` object (identical ids to transformers ``AutoTokenizer``, checked when a
tokenizer is trained) in batches, so a whole eval file takes about a second. It lives in ``vocab/`` (above io,
below the stages) so that ``eval`` and ``tokenizer`` both import it downward.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from ..io.corpus import read_documents
from ..io.tokdir import load_tokenizer

BATCH = 1024


def as_tokenizer(tok: Tokenizer | Path | str) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from itself or a directory holding ``tokenizer.json``."""
    return tok if isinstance(tok, Tokenizer) else load_tokenizer(Path(tok))


def encode_lines(tok: Tokenizer, lines: list[str]) -> list[list[int]]:
    out: list[list[int]] = []
    for k in range(0, len(lines), BATCH):
        out.extend(e.ids for e in tok.encode_batch(lines[k : k + BATCH], add_special_tokens=False))
    return out


def measure(tok: Tokenizer, lines: list[str], ids: list[list[int]] | None = None) -> dict:
    """The §5 measures of ``tok`` on ``lines`` (already read)."""
    ids = encode_lines(tok, lines) if ids is None else ids
    chars = sum(len(x) for x in lines)
    n_bytes = sum(len(x.encode("utf-8")) for x in lines)
    words = sum(len(x.split()) for x in lines)
    tokens = sum(len(x) for x in ids)
    return {
        "lines": len(lines),
        "chars": chars,
        "bytes": n_bytes,
        "words": words,
        "tokens": tokens,
        "chars_per_token": chars / tokens if tokens else 0.0,
        "bytes_per_token": n_bytes / tokens if tokens else 0.0,
        "tokens_per_word": tokens / words if words else 0.0,
    }


def chars_per_token(tokenizer: Tokenizer | Path | str, file: Path | str) -> dict:
    """chars/token (and bytes/token, tokens/word) of a tokenizer (object or directory) on a UTF-8 text file.

    Returns ``{"lines", "chars", "bytes", "words", "tokens", "chars_per_token", "bytes_per_token",
    "tokens_per_word"}``; words are whitespace-separated.
    """
    return measure(as_tokenizer(tokenizer), read_documents(Path(file), "--text"))
