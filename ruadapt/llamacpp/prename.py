"""Which llama.cpp pre-tokenizer name (``tokenizer.ggml.pre``) a tokenizer gets, without llama.cpp's hash.

llama.cpp's converter recognises a BPE tokenizer by the ids of a check text (:mod:`ruadapt.vocab.checktext`); any
renumbered vocabulary (replace, trim) changes them although the text is cut exactly as before. What decides how
llama.cpp cuts text is the normalizer and pre-tokenizer, which every ruadapt mode keeps identical to the base's. So the
name is looked up by a hash of those two (:func:`pipeline_sha256`) in ``pre_names.yaml``, which lists each
base family with the name llama.cpp's converter gives the base itself, and the BPE flags llama.cpp hard-codes for
that name (``ignore_merges``, byte fallback): a tokenizer whose flags differ is refused, because llama.cpp would
tokenize it differently from transformers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tokenizers import Tokenizer

from ..errors import RuadaptError
from ..schema import build

TABLE = Path(__file__).with_name("pre_names.yaml")


@dataclass
class PreName:
    """One base tokenizer family in ``pre_names.yaml``."""

    base: str  # the base family, for people and error messages
    pipeline_sha256: str  # :func:`pipeline_sha256` of its tokenizer.json
    pre: str  # tokenizer.ggml.pre that llama.cpp's converter gives the base
    check_text_sha256: str  # llama.cpp's chkhsh of the base (the table entry the name comes from)
    ignore_merges: bool = False
    byte_fallback: bool = False


@dataclass
class PreTable:
    tokenizers: list[PreName] = field(default_factory=list)


@cache
def load_table(path: Path = TABLE) -> tuple[PreName, ...]:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return tuple(build(PreTable, raw, str(path)).tokenizers)


def pipeline_sha256(spec: dict) -> str:
    """sha256 of a tokenizer.json's normalizer and pre-tokenizer, as ``tokenizers`` writes them back (so default
    fields a re-saved file spells out, or leaves out, hash the same)."""
    mini: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": spec.get("normalizer"),
        "pre_tokenizer": spec.get("pre_tokenizer"),
        "post_processor": None,
        "decoder": None,
        "model": {"type": "BPE", "vocab": {}, "merges": []},
    }
    canon = json.loads(Tokenizer.from_str(json.dumps(mini)).to_str())
    key = {"normalizer": canon.get("normalizer"), "pre_tokenizer": canon.get("pre_tokenizer")}
    return hashlib.sha256(
        json.dumps(key, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()


def lookup(spec: dict, where: str) -> PreName:
    """The table entry for tokenizer.json ``spec`` (read from ``where``); a tokenizer llama.cpp would cut or merge
    differently from transformers is a one-line error."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise RuadaptError(f"{where}: a {model.get('type')} tokenizer; ruadapt gguf converts BPE vocabularies only")
    digest = pipeline_sha256(spec)
    entry = next((e for e in load_table() if e.pipeline_sha256 == digest), None)
    if entry is None:
        known = ", ".join(f"{e.base} ({e.pre})" for e in load_table())
        raise RuadaptError(
            f"{where}: normalizer + pre-tokenizer (sha256 {digest[:12]}) match no base ruadapt knows for llama.cpp "
            f"({known}); pass --pre NAME if you know llama.cpp's name for them"
        )
    for flag in ("ignore_merges", "byte_fallback"):
        have = bool(model.get(flag))
        if have != getattr(entry, flag):
            raise RuadaptError(
                f"{where}: model.{flag} is {str(have).lower()}, but llama.cpp's {entry.pre!r} pre-tokenizer (the "
                f"{entry.base} family) assumes {str(getattr(entry, flag)).lower()}; llama.cpp would tokenize this "
                "vocabulary differently from transformers"
            )
    return entry
