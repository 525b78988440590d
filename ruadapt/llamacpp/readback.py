"""Read a written GGUF back (with the ``gguf`` package) and check its vocabulary against the model directory.

The converter builds the GGUF vocabulary from transformers' view of the tokenizer; a vocabulary whose ids moved
(replace, trim) is exactly where a silent mismatch would hurt, so before the file is renamed into place every
part llama.cpp tokenizes with is compared with ``tokenizer.json``: the pre-tokenizer name, the token string of
every id (padding rows included), the merges in rank order, the number of rows, and the special-token ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from tokenizers import Tokenizer

from ..errors import RuadaptError

SPACE_MARK = "\u2581"  # the converter writes "▁" of user-defined added tokens as " "
# GGUF key suffix -> tokenizer_config.json key naming the same token
SPECIAL_KEYS = {"bos": "bos_token", "eos": "eos_token", "padding": "pad_token", "unknown": "unk_token"}


def _reader(path: Path):
    """``gguf.GGUFReader`` over a plain ndarray view of its memory map: the reader slices its data once per
    string, and ``np.memmap``'s per-slice bookkeeping makes a 150k-token vocabulary take ~4x longer to read."""
    from gguf import GGUFReader

    class Reader(GGUFReader):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    try:
        return Reader(str(path))
    except (ValueError, OSError) as e:
        raise RuadaptError(f"{path}: not a readable GGUF file ({e})") from None


def _field(reader, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def _token_string(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value or None


def _merge_strings(merges: list) -> list[str]:
    """tokenizer.json merges as the converter writes them: "a b" (a space inside a piece becomes U+0120+256)."""
    if merges and not isinstance(merges[0], str):
        return [
            " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair) for pair in merges
        ]
    return list(merges)


def check_gguf(path: Path, model_dir: Path, pre: str) -> dict[str, Any]:
    """Compare the GGUF at ``path`` with ``model_dir`` (the converter's input); a difference is a one-line
    :class:`RuadaptError`. Returns the counts for the record."""
    from gguf import TokenType

    model_dir = Path(model_dir)
    reader = _reader(path)
    where = f"{path} (from {model_dir})"

    def fail(what: str) -> NoReturn:
        raise RuadaptError(f"{where}: {what}; output not written")

    got_model, got_pre = _field(reader, "tokenizer.ggml.model"), _field(reader, "tokenizer.ggml.pre")
    if got_model != "gpt2":
        fail(
            f"tokenizer.ggml.model is {got_model!r}, expected 'gpt2' (BPE from tokenizer.json); a tokenizer.model "
            "or another vocabulary file in the model directory may have been used instead"
        )
    if got_pre != pre:
        fail(f"tokenizer.ggml.pre is {got_pre!r}, not the {pre!r} asked for (this converter class picks its own name)")

    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_str(json.dumps(spec))
    by_id = {i: s for s, i in tok.get_vocab(with_added_tokens=True).items()}
    added = {i: t for i, t in tok.get_added_tokens_decoder().items()}
    n_tokens = max(by_id) + 1

    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens") or []
    types: list[int] = _field(reader, "tokenizer.ggml.token_type") or []
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        fail("no token_embd.weight tensor")
    rows = int(embd.shape[-1])  # GGUF shapes are (n_embd, n_rows)
    if len(tokens) != rows or len(types) != rows:
        fail(f"{len(tokens)} tokens and {len(types)} token types for {rows} embedding rows")
    if rows < n_tokens:
        fail(f"{rows} embedding rows for {n_tokens} tokens")

    for i in range(rows):
        got, typ = tokens[i], types[i]
        want = by_id.get(i)
        if want is None:
            ok = got == f"[PAD{i}]" and typ == TokenType.UNUSED
            want = f"[PAD{i}] (unused)"
        elif i in added:
            ok = got in (want, want.replace(SPACE_MARK, " ")) and typ in (TokenType.CONTROL, TokenType.USER_DEFINED)
            if added[i].special and typ != TokenType.CONTROL:
                ok = False
        else:
            ok = got == want and typ == TokenType.NORMAL
        if not ok:
            fail(f"token {i} is {got!r} (type {typ}), tokenizer.json has {want!r}")

    want_merges = _merge_strings(spec["model"].get("merges") or [])
    got_merges = _field(reader, "tokenizer.ggml.merges") or []
    if got_merges != want_merges:
        k = next(
            (k for k, (a, b) in enumerate(zip(got_merges, want_merges)) if a != b),
            min(len(got_merges), len(want_merges)),
        )
        fail(f"{len(got_merges)} merges, tokenizer.json has {len(want_merges)}; first difference at rank {k}")

    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    vocab = tok.get_vocab(with_added_tokens=True)
    specials: dict[str, int] = {}
    for suffix, cfg_key in SPECIAL_KEYS.items():
        got_id = _field(reader, f"tokenizer.ggml.{suffix}_token_id")
        name = _token_string(cfg.get(cfg_key))
        want_id = vocab.get(name) if name else None
        if got_id is not None:
            specials[suffix] = int(got_id)
            if int(got_id) >= n_tokens:
                fail(f"tokenizer.ggml.{suffix}_token_id {got_id} is past the {n_tokens} tokens")
        if want_id is not None and got_id is not None and int(got_id) != want_id:
            fail(
                f"tokenizer.ggml.{suffix}_token_id is {got_id}, tokenizer_config.json's {cfg_key} {name!r} is id "
                f"{want_id}"
            )
        if suffix in ("bos", "eos") and want_id is not None and got_id is None:
            fail(f"no tokenizer.ggml.{suffix}_token_id, tokenizer_config.json's {cfg_key} is {name!r}")
    return {
        "tokenizer_model": got_model,
        "pre": got_pre,
        "tokens": n_tokens,
        "rows": rows,
        "padding_rows": rows - len(by_id),
        "added_tokens": len(added),
        "merges": len(got_merges),
        "special_ids": specials,
        "architecture": _field(reader, "general.architecture"),
        "tensors": len(reader.tensors),
    }
