"""llama.cpp's check text, and what a tokenizer must keep for llama.cpp's converter to recognise it.

``convert_hf_to_gguf.py`` names a BPE model's pre-tokenizer (``tokenizer.ggml.pre``) by encoding
:data:`CHECK_TEXT` with the model's tokenizer, hashing the ids (``sha256(str(ids))``) and looking the hash up in a
table of known tokenizers. A vocabulary that keeps every base id *and* segments the check text as the base does
gets the base's hash, so a stock conversion works. The text holds Bulgarian ("нещо на Български"), so Russian
merges would change its segmentation: ``tokenizer train --mode extend`` forbids new merges of the adjacent
base-token pairs of the check text's own segmentation (:func:`adjacent_pairs`; 54 pairs for Qwen2.5), which
costs nothing measurable and keeps the hash.

The text is copied from llama.cpp (``convert_hf_to_gguf_update.py``, ``CHK_TXT``; MIT licence, Copyright (c)
2023-2026 The ggml authors), as vendored in llama-cpp-python 0.3.36; the tests compare it with the converter
they run, so a change upstream is noticed.
"""

from __future__ import annotations

import hashlib

from tokenizers import Tokenizer

CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


def check_text_words(tok: Tokenizer) -> list[str]:
    """The check text as ``tok`` normalizes and pre-tokenizes it: the pieces BPE merges work inside."""
    text = tok.normalizer.normalize_str(CHECK_TEXT) if tok.normalizer is not None else CHECK_TEXT
    if tok.pre_tokenizer is None:
        return [text]
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(text)]


def adjacent_pairs(tok: Tokenizer) -> set[tuple[int, int]]:
    """Every pair of ids that stand next to each other inside one pre-token of the check text under ``tok``.

    A new merge ranks after all base merges, so it can only change the check text's segmentation by merging one
    of these pairs first; forbidding them keeps the segmentation (and llama.cpp's hash) of the base."""
    pairs: set[tuple[int, int]] = set()
    for word in check_text_words(tok):
        ids = [t.id for t in tok.model.tokenize(word)]
        pairs.update(zip(ids, ids[1:]))
    return pairs


def check_text_ids(tok: Tokenizer) -> list[int]:
    """The ids of the check text under ``tok``, with the special tokens the tokenizer adds (as the converter,
    which calls ``AutoTokenizer.encode(chktxt)``, sees them)."""
    return tok.encode(CHECK_TEXT, add_special_tokens=True).ids


def check_text_hash(ids: list[int]) -> str:
    """llama.cpp's ``chkhsh`` of a check-text encoding: ``sha256(str(ids))``."""
    return hashlib.sha256(str(ids).encode()).hexdigest()
