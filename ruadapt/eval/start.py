"""Where a swapped model starts (docs/init.md): diagnostics of the new rows next to the bits per byte.

"New" tokens of a model are the ids of its tokenizer that the base tokenizer (``--start-base NAME``, another
``--model`` of the same run) does not have: ids whose row :func:`ruadapt.vocab.pieces.build_vocab_map` builds from
pieces rather than copying (the map ``ruadapt swap`` itself uses, so it holds for an extension and a replacement,
and for the model after CPT or LEP as well, whose tokenizer is the swapped one). Per text and model:

- ``new_byte_share``: share of the scored bytes that new tokens cover (bytes of a token: its raw bytes);
- ``bpb_new`` / ``bpb_old``: bits per byte at the positions whose target is a new / an old token (the two, weighted
  by their bytes, give the text's bits per byte);
- ``new_prediction_share``: share of positions where the model's greedy prediction is a new token;
- ``new_never_predicted``: new tokens that are never the greedy prediction on the text (count and share of the new
  tokens), with ``new_in_text_never_predicted``: of the new tokens the text contains, how many are never predicted.

A new token that takes too much of its first piece's probability shows as a high ``new_prediction_share`` and a high
``bpb_old``; new rows that the body cannot read show as a high ``bpb_new``.
"""

from __future__ import annotations

import math
from typing import Any

from tokenizers import Tokenizer

from ..vocab.pieces import ROW_COPY, ROW_PAD, ROW_SPECIAL, TokenCodec, build_vocab_map
from .bpb import BpbResult


def new_token_ids(base: Tokenizer, model: Tokenizer) -> set[int]:
    """Ids of ``model``'s tokenizer whose row a swap from ``base`` builds from pieces (not a copy, not padding)."""
    vmap = build_vocab_map(TokenCodec(base), TokenCodec(model))
    return {i for i, k in enumerate(vmap.kinds) if k not in (ROW_COPY, ROW_SPECIAL, ROW_PAD)}


def start_diagnostics(result: BpbResult, new_ids: set[int], codec: TokenCodec) -> dict[str, Any]:
    """The diagnostics above from a :func:`ruadapt.eval.bpb.text_bpb` result scored with ``per_token=True``."""
    if result.token_targets is None or result.token_nll is None or result.token_argmax is None:
        raise ValueError("start diagnostics need a bpb result scored with per_token=True")
    size: dict[int, int] = {}

    def nbytes(t: int) -> int:
        if t not in size:
            size[t] = len(codec.token_bytes(t)) if t < len(codec) else 0
        return size[t]

    bytes_new = bytes_old = 0
    nll_new: list[float] = []
    nll_old: list[float] = []
    positions = predicted_new = 0
    predicted: set[int] = set()
    in_text: set[int] = set()
    for targets, nll, argmax in zip(result.token_targets, result.token_nll, result.token_argmax):
        for t, x, g in zip(targets, nll, argmax):
            positions += 1
            predicted.add(g)
            predicted_new += g in new_ids
            if t in new_ids:
                in_text.add(t)
                bytes_new += nbytes(t)
                nll_new.append(x)
            else:
                bytes_old += nbytes(t)
                nll_old.append(x)
    never = new_ids - predicted
    ln2 = math.log(2)
    return {
        "new_tokens": len(new_ids),
        "positions": positions,
        "new_positions": len(nll_new),
        "new_byte_share": bytes_new / max(bytes_new + bytes_old, 1),
        "bpb_new": math.fsum(nll_new) / (ln2 * bytes_new) if bytes_new else None,
        "bpb_old": math.fsum(nll_old) / (ln2 * bytes_old) if bytes_old else None,
        "new_prediction_share": predicted_new / max(positions, 1),
        "new_never_predicted": len(never),
        "new_never_predicted_share": len(never) / max(len(new_ids), 1),
        "new_in_text": len(in_text),
        "new_in_text_never_predicted": len(in_text - predicted),
    }
