"""Tokenizer surgery for ``ruadapt trim``: which tokens must stay, which a corpus selects, and the rewritten
``tokenizer.json`` with compact ids.

Why a token is kept (one reason each, first that applies):

* ``special``  every added/special token (chat tokens included) and the unk token: configs and chat templates
  refer to them by string and id.
* ``alphabet`` the 256 byte tokens of a byte-level BPE, the ``<0xNN>`` pieces of a byte-fallback model, else
  every single-character piece: with them any text the original could encode still encodes and round-trips.
* ``keep_tokens`` tokens the user listed.
* ``used``     tokens the corpus selection keeps (all used ones, ``--min-count`` or ``--keep-top``).
* ``closure``  (BPE) the symbols a kept token is built from. BPE builds a token of a word the same way it
  builds the token's own string in isolation (a merge crossing the token's span would make a symbol the final
  segmentation cannot contain), so the symbols of that one derivation are exactly what must stay for the token
  to stay reachable. Keeping every merge whose parts and result are kept, in the original order, then gives
  the same segmentation for every text whose original tokens were all kept: the lowest-rank applicable merge
  of the original is always present in the subset.

Unigram models drop pieces and keep the scores of the others (the best path over a subset that contains the
original best path is the same path).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from ..errors import RuadaptError
from ..vocab.pieces import BYTE_LEVEL, bytes_to_unicode, detect_family

if TYPE_CHECKING:
    import numpy as np

REASONS = ("special", "alphabet", "keep_tokens", "used", "closure")


def _split_merge(merge: str | Sequence[str]) -> tuple[str, str]:
    if isinstance(merge, str):
        a, _, b = merge.partition(" ")
        return a, b
    return tuple(merge)  # type: ignore[return-value]


class BpeDerivation:
    """Replays BPE merges on one string (the isolated derivation of a vocabulary token)."""

    def __init__(self, model: dict):
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise RuadaptError(
                "tokenizer.json: BPE with continuing_subword_prefix/end_of_word_suffix is not supported by trim"
            )
        merges = model.get("merges", [])
        # the first occurrence of a pair wins, as in tokenizers: build from the end so earlier ranks overwrite
        self.ranks: dict[tuple[str, str], int] = {
            _split_merge(m): r for r, m in zip(range(len(merges) - 1, -1, -1), reversed(merges))
        }

    def symbols(self, piece: str) -> list[str]:
        """Every symbol that appears while BPE turns ``piece``'s characters into tokens (start, middle, end)."""
        symbols = list(piece)
        seen = list(symbols)
        ranks = self.ranks
        while len(symbols) > 1:
            best_rank, best_i = None, -1
            for i in range(len(symbols) - 1):
                r = ranks.get((symbols[i], symbols[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best_i = r, i
            if best_rank is None:
                break
            merged = symbols[best_i] + symbols[best_i + 1]
            symbols[best_i : best_i + 2] = [merged]
            seen.append(merged)
        return seen


@dataclass
class Selection:
    """Old ids to keep (ascending) and why each one is kept."""

    reasons: dict[int, str]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> list[int]:
        return sorted(self.reasons)

    def summary(self) -> dict[str, int]:
        out = {r: 0 for r in REASONS}
        for r in self.reasons.values():
            out[r] += 1
        return out


class VocabSurgeon:
    """Knows a tokenizer's model type, its must-keep tokens and how to rebuild it on a subset of ids."""

    def __init__(self, tok: Tokenizer, source: str = "tokenizer.json", spec: dict | None = None):
        """``spec`` is the parsed tokenizer.json of ``tok`` when the caller has it (saves re-serialising a
        33 MB Gemma tokenizer)."""
        self.tok = tok
        self.source = source
        self.spec = spec if spec is not None else json.loads(tok.to_str())
        self.model = self.spec.get("model", {})
        self.type = self.model.get("type")
        if self.type not in ("BPE", "Unigram"):
            raise RuadaptError(f"{source}: model type {self.type!r} cannot be trimmed (BPE and Unigram can)")
        self.family = detect_family(tok)
        if self.type == "BPE":
            self.id_of: dict[str, int] = dict(self.model["vocab"])
        else:
            self.id_of = {p[0]: i for i, p in enumerate(self.model["vocab"])}
        self.piece_of: dict[int, str] = {i: p for p, i in self.id_of.items()}
        self.added: dict[int, str] = {i: t.content for i, t in tok.get_added_tokens_decoder().items()}
        self.size = max([*self.piece_of, *self.added], default=-1) + 1  # = len(tokenizer)
        self._derivation: BpeDerivation | None = None

    # ------------------------------------------------------------------ what must stay
    def must_keep(self) -> dict[int, str]:
        """Special/added tokens, the unk token and the alphabet, with their reason."""
        keep: dict[int, str] = {}
        for i in self.added:
            keep[i] = "special"
        unk = self._unk_id()
        if unk is not None:
            keep.setdefault(unk, "special")
        for i in self.alphabet():
            keep.setdefault(i, "alphabet")
        return keep

    def _unk_id(self) -> int | None:
        if self.type == "Unigram":
            return self.model.get("unk_id")
        unk = self.model.get("unk_token")
        return self.id_of.get(unk) if unk else None

    def alphabet(self) -> list[int]:
        """Ids that let every text still encode: byte tokens, byte-fallback pieces, else single characters."""
        if self.family == BYTE_LEVEL and self.type == "BPE":
            pieces: Iterable[str] = bytes_to_unicode().values()
        elif self.model.get("byte_fallback"):
            pieces = (f"<0x{b:02X}>" for b in range(256))
        else:
            pieces = (p for p in self.id_of if len(p) == 1)
        return sorted(self.id_of[p] for p in pieces if p in self.id_of)

    # ------------------------------------------------------------------ closure
    def closure_of(self, token_id: int) -> list[int]:
        """(BPE) ids of every symbol the isolated derivation of ``token_id`` passes through, itself included."""
        piece = self.piece_of.get(token_id)
        if self.type != "BPE" or piece is None:
            return [token_id]
        if self._derivation is None:
            self._derivation = BpeDerivation(self.model)
        out = [token_id]
        for sym in self._derivation.symbols(piece):
            i = self.id_of.get(sym)
            if i is not None and i != token_id:
                out.append(i)
        return out

    # ------------------------------------------------------------------ selection
    def select(
        self,
        counts: Sequence[int] | np.ndarray,
        *,
        keep_top: int | None = None,
        min_count: int | None = None,
        keep_tokens: Iterable[int] = (),
    ) -> Selection:
        """Must-keep tokens + ``keep_tokens`` + corpus tokens (all used, ``min_count``+ or the most frequent up to a
        vocabulary of ``keep_top``), each with its BPE closure."""
        reasons = self.must_keep()
        for i in keep_tokens:
            for j in self.closure_of(i):
                reasons.setdefault(j, "keep_tokens" if j == i else "closure")
        base = len(reasons)
        if keep_top is not None and keep_top < base:
            s = Selection(reasons).summary()
            raise RuadaptError(
                f"--keep-top {keep_top} is smaller than the {base} tokens that must be kept "
                f"({s['special']} special/added, {s['alphabet']} alphabet, "
                f"{s['keep_tokens'] + s['closure']} from --keep-tokens); use --keep-top {base} or more"
            )
        order = sorted((i for i, c in enumerate(counts) if c > 0), key=lambda i: (-counts[i], i))
        threshold = max(min_count or 1, 1)
        for i in order:
            if counts[i] < threshold:
                break
            if i in reasons:
                continue
            new = [j for j in self.closure_of(i) if j not in reasons]
            if keep_top is not None and len(reasons) + len(new) > keep_top:
                continue  # a rarer token with a shorter closure may still fit
            reasons[i] = "used"
            for j in new[1:]:  # new[0] is i itself
                reasons[j] = "closure"
        # a used token that was first pulled in as another token's closure is reported as used
        for i in order:
            if reasons.get(i) == "closure" and counts[i] >= threshold:
                reasons[i] = "used"
        return Selection(reasons)

    # ------------------------------------------------------------------ rebuild
    def rebuild(self, kept: Sequence[int]) -> tuple[Tokenizer, dict[int, int]]:
        """The tokenizer restricted to ``kept`` old ids, renumbered compactly in the old order, and old → new."""
        kept = sorted(kept)
        old_to_new = {old: new for new, old in enumerate(kept)}
        spec = dict(self.spec)
        model = dict(self.model)
        if self.type == "BPE":
            vocab = {p: old_to_new[i] for p, i in self.model["vocab"].items() if i in old_to_new}
            model["vocab"] = vocab
            model["merges"] = [m for m in self.model.get("merges", []) if _merge_kept(m, vocab)]
        else:
            pieces = self.model["vocab"]
            model["vocab"] = [pieces[i] for i in kept if i < len(pieces)]  # scores kept; index = new id
            if self.model.get("unk_id") is not None:
                model["unk_id"] = old_to_new[self.model["unk_id"]]
        spec["model"] = model
        spec["added_tokens"] = [dict(t, id=old_to_new[t["id"]]) for t in self.spec.get("added_tokens", [])]
        new_ids = _content_ids(spec)
        if spec.get("post_processor") is not None:
            spec["post_processor"] = _remap_processor(spec["post_processor"], new_ids, self.source)
        if spec.get("padding"):
            pad = dict(spec["padding"])
            if pad.get("pad_token") in new_ids:
                pad["pad_id"] = new_ids[pad["pad_token"]]
            spec["padding"] = pad
        try:
            new_tok = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
        except Exception as e:  # tokenizers reports its own exception type
            raise RuadaptError(f"{self.source}: the trimmed tokenizer does not load ({e})") from None
        self._verify(new_tok, old_to_new)
        return new_tok, old_to_new

    def _verify(self, new_tok: Tokenizer, old_to_new: dict[int, int]) -> None:
        """Every kept token must have its new id under its old string (docs/design.md §2: verify ids after
        rebuilding)."""
        for old, new in old_to_new.items():
            want = self.tok.id_to_token(old)
            got = new_tok.id_to_token(new)
            if want != got:
                raise RuadaptError(
                    f"{self.source}: after trimming, id {new} is {got!r} instead of {want!r} (old id {old}); "
                    "this id layout is not supported by trim"
                )


def _merge_kept(merge: str | Sequence[str], vocab: dict[str, int]) -> bool:
    a, b = _split_merge(merge)
    return a in vocab and b in vocab and (a + b) in vocab


def _content_ids(spec: dict) -> dict[str, int]:
    model = spec["model"]
    if model["type"] == "BPE":
        ids = dict(model["vocab"])
    else:
        ids = {p[0]: i for i, p in enumerate(model["vocab"])}
    for t in spec.get("added_tokens", []):
        ids[t["content"]] = t["id"]
    return ids


def _remap_processor(node, ids: dict[str, int], source: str):
    """Copy of a post-processor with the ids of its special tokens looked up again by string."""
    if isinstance(node, list):
        return [_remap_processor(x, ids, source) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "special_tokens" and isinstance(value, dict):  # TemplateProcessing
            out[key] = {
                name: dict(entry, ids=[_lookup(t, ids, source) for t in entry.get("tokens", [])])
                for name, entry in value.items()
            }
        elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:  # Bert/Roberta processing
            out[key] = [value[0], _lookup(value[0], ids, source)]
        else:
            out[key] = _remap_processor(value, ids, source)
    return out


def _lookup(token: str, ids: dict[str, int], source: str) -> int:
    if token not in ids:
        raise RuadaptError(f"{source}: post-processor token {token!r} would be dropped by trim")
    return ids[token]
