"""Training words of a corpus, exactly as the base tokenizer's BPE model will see them.

BPE merges act inside pre-tokens ("words"), so the words a new merge is learned from must be the base
tokenizer's own: its normalizer, then its pre-tokenizer (for byte-level BPE that also maps bytes to the GPT-2
alphabet, so a word string is directly a sequence of vocabulary characters).

SentencePiece-style BPE (Gemma) is the exception: its normalizer turns spaces into ``▁`` and its pre-tokenizer
splits on a space that no longer exists, so each *line* is one word. Learning merges on whole lines would let
merges span words and makes training minutes long; SentencePiece itself starts a new word at every ``▁`` that
follows a non-``▁`` character, and so do we (:func:`split_sentencepiece_words`). No merge learned this way can
match across such a boundary at inference, so the continued BPE applies unchanged to whole lines.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tokenizers import Tokenizer

from ..io.corpus import iter_documents
from ..io.record import sha256_file
from ..vocab.pieces import SENTENCEPIECE, SPACE_MARK

log = logging.getLogger(__name__)

# a run of ▁ (possibly empty) and the non-▁ characters after it; a trailing run of ▁ is a word of its own
_SP_WORD = re.compile(f"{SPACE_MARK}*[^{SPACE_MARK}]+|{SPACE_MARK}+")


@dataclass
class CorpusInfo:
    """Size and fingerprint of one training file (for ``ruadapt_tokenizer.json``)."""

    path: Path
    bytes: int
    lines: int
    chars: int
    sha256: str

    def as_dict(self) -> dict:
        return {
            "path": str(self.path.resolve()),
            "bytes": self.bytes,
            "lines": self.lines,
            "chars": self.chars,
            "sha256": self.sha256,
        }


def split_sentencepiece_words(text: str) -> list[str]:
    """SentencePiece word boundaries in ``▁``-normalized text: ``"a▁b▁▁c▁"`` → ``["a", "▁b", "▁▁c", "▁"]``."""
    return _SP_WORD.findall(text)


class WordSplitter:
    """Normalizer + pre-tokenizer of a base tokenizer as one callable: line → training words."""

    def __init__(self, tokenizer: Tokenizer, family: str):
        self.normalizer = tokenizer.normalizer
        self.pre_tokenizer = tokenizer.pre_tokenizer
        self.sentencepiece = family == SENTENCEPIECE
        # added tokens are cut out of the raw text before normalization, as the tokenizer does at inference
        contents = sorted(
            {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content}, key=len, reverse=True
        )
        self._first_chars = frozenset(c[0] for c in contents)
        self._added = re.compile("|".join(re.escape(c) for c in contents)) if contents else None

    def __call__(self, line: str) -> list[str]:
        if self._added is not None and not self._first_chars.isdisjoint(line):
            parts = [p for p in self._added.split(line) if p]
            if len(parts) != 1 or parts[0] != line:
                return [w for p in parts for w in self._words(p)]
        return self._words(line)

    def _words(self, line: str) -> list[str]:
        text = self.normalizer.normalize_str(line) if self.normalizer is not None else line
        if self.pre_tokenizer is not None:
            words = [w for w, _ in self.pre_tokenizer.pre_tokenize_str(text)]
        else:
            words = [text]
        if self.sentencepiece:
            words = [piece for w in words for piece in split_sentencepiece_words(w)]
        return words


def count_words(
    tokenizer: Tokenizer, family: str, corpora: Iterable[Path], *, progress: bool = True
) -> tuple[Counter[str], list[CorpusInfo]]:
    """Word → count over all corpora (in first-seen order, so everything downstream is deterministic)."""
    split = WordSplitter(tokenizer, family)
    counts: Counter[str] = Counter()
    infos: list[CorpusInfo] = []
    for path in corpora:
        path = Path(path)
        size = path.stat().st_size
        n_lines = n_chars = 0
        with tqdm(desc=f"words {path.name}", unit=" lines", disable=not progress, mininterval=1.0) as bar:
            for line in iter_documents(path):
                counts.update(split(line))
                n_lines += 1
                n_chars += len(line)
                bar.update(1)
        infos.append(CorpusInfo(path, size, n_lines, n_chars, sha256_file(path)))
        log.info("%s: %d lines, %d distinct words so far", path, n_lines, len(counts))
    return counts, infos


_SAME_SCRIPT = {"HIRAGANA": "HAN", "KATAKANA": "HAN", "KATAKANA-HIRAGANA": "HAN", "CJK": "HAN"}  # as SentencePiece


@functools.cache
def _char_class(c: str) -> str:
    """SentencePiece's piece classes, approximated from Unicode names: the script of a letter (first word of its
    name: LATIN, CYRILLIC, ...; Han/Hiragana/Katakana as one), DIGIT for 0-9, MARK (combining marks, ZWJ/ZWNJ:
    take any script), SPACE for ``▁``, COMMON for ASCII/Latin-1/general punctuation and symbols; other
    punctuation belongs to the script its name starts with (ARABIC FULL STOP, TIBETAN MARK ...)."""
    if c == SPACE_MARK:
        return "SPACE"
    if "0" <= c <= "9":
        return "DIGIT"
    cat = unicodedata.category(c)
    if cat[0] == "M" or cat == "Cf":
        return "MARK"
    o = ord(c)
    if cat[0] != "L" and (o < 0x250 or 0x2000 <= o < 0x2C00):
        return "COMMON"
    word = unicodedata.name(c, "UNKNOWN").split(" ")[0]
    return _SAME_SCRIPT.get(word, word)


def sentencepiece_piece_ok(piece: str) -> bool:
    """Would SentencePiece (split_by_unicode_script, split_digits) accept ``piece``? One script (or only
    COMMON characters) after the leading ``▁`` run, and a digit only as a piece of its own."""
    body = piece.lstrip(SPACE_MARK)
    classes = {_char_class(c) for c in body} - {"MARK"}
    if "DIGIT" in classes:
        return piece == body and len(body) == 1
    return len(classes) <= 1 and SPACE_MARK not in body


def follows_sentencepiece_rules(vocab: dict[str, int], tolerance: float = 0.002) -> bool:
    """True when (almost) every normal piece of a base vocabulary obeys :func:`sentencepiece_piece_ok`, i.e. the
    base was trained with those rules and new merges must keep them (Gemma: digits one by one, no ``'s``,
    ``.com`` or ``COVID-19`` pieces). Decided from the data, not from the model's name."""
    pieces = [p for p in vocab if not (p.startswith("<") and p.endswith(">"))]
    bad = sum(not sentencepiece_piece_ok(p) for p in pieces)
    return bool(pieces) and bad <= tolerance * len(pieces)
