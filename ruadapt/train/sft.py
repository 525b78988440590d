"""SFT / calibration data: chat JSONL (``{"messages": [...]}``) rendered with the model's own chat template.

Only assistant tokens are trained: every other token (system, user, the template's role headers) gets label
-100. Which characters belong to an assistant turn is found by rendering the conversation twice per turn —
up to the turn with the generation prompt, and through the turn — so whatever the template writes around a
message, the difference is exactly what the model must produce (the reply and its end-of-turn token).
Trailing whitespace after the end-of-turn token is not trained (it is template formatting, not output).
A token is trained when its characters lie entirely inside an assistant span.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import RuadaptError
from .data import IGNORE
from .tokenfile import TokenFile, TokenFileWriter

CHAT_BATCH = 512  # conversations rendered and tokenized together


def load_chat_tokenizer(model_dir: Path):
    """The transformers tokenizer (for the Jinja chat template and offsets); a one-line error without a template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if not tok.chat_template:
        raise RuadaptError(f"{model_dir}: the tokenizer has no chat template (SFT renders conversations with it)")
    return tok


def assistant_spans(tok, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn in it."""
    full = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(through) or not through.startswith(before):
            raise RuadaptError(
                "the chat template does not render conversations incrementally; cannot locate assistant turns"
            )
        end = len(through.rstrip())
        spans.append((len(before), end))
    return full, spans


def render_example(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: labels are the ids on assistant tokens, -100 elsewhere."""
    return render_examples(tok, [messages])[0]


def render_examples(tok, conversations: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
    """:func:`render_example` for a batch: the templates render one by one, the texts tokenize in one parallel call."""
    rendered = [assistant_spans(tok, m) for m in conversations]
    enc = tok([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for (_, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        labels = []
        for tid, (a, b) in zip(ids, offsets):
            inside = any(s <= a and b <= e for s, e in spans) and b > a
            labels.append(tid if inside else IGNORE)
        out.append((list(ids), labels))
    return out


class ChatSource:
    """Conversations of one SFT token file (already truncated to block_size at preparation), with their masks."""

    def __init__(self, tf: TokenFile):
        self.tf = tf

    def __len__(self) -> int:
        return self.tf.n_docs

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.tf.offsets[i]), int(self.tf.offsets[i + 1])
        assert self.tf.mask is not None
        return np.asarray(self.tf.tokens[a:b]), np.asarray(self.tf.mask[a:b])


def write_chats(
    tok, chats: Iterator[list[dict]], writer: TokenFileWriter, *, block_size: int, limit: int = 0, desc: str = ""
) -> dict:
    """Render, tokenize and store conversations (ids + trained mask), ``CHAT_BATCH`` at a time; conversations that
    truncation to ``block_size`` leaves with nothing to learn are dropped (counted in the returned statistics)."""
    t0 = time.perf_counter()
    dropped = 0
    if limit:
        chats = itertools.islice(chats, limit)
    with tqdm(desc=desc, unit=" chats", mininterval=2.0, disable=not desc) as bar:
        while batch := list(itertools.islice(chats, CHAT_BATCH)):
            docs, masks = [], []
            for ids, labels in render_examples(tok, batch):
                ids, labels = ids[:block_size], labels[:block_size]
                if all(x == IGNORE for x in labels[1:]):
                    dropped += 1  # truncation left nothing to learn
                    continue
                docs.append(np.asarray(ids, dtype=np.int64))
                masks.append(np.asarray([x != IGNORE for x in labels], dtype=np.uint8))
            writer.add(docs, masks)
            bar.update(len(batch))
    seconds = time.perf_counter() - t0
    return {"dropped_conversations": dropped, "seconds": round(seconds, 3)}
