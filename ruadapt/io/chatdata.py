"""Chat JSONL, the one reader: ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line.

SFT (``ruadapt train``, task sft) trains on these files and ``ruadapt eval --chat`` scores them, so both must accept
and refuse exactly the same files.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import RuadaptError
from .corpus import iter_line_blocks

ROLES = ("system", "user", "assistant", "tool")


def iter_chats(path: Path | str, *, what: str = "--chat") -> Iterator[list[dict[str, str]]]:
    """Conversations of a chat JSONL file (plain, .gz or .zst), streamed: one ``{"messages": [{"role": ...,
    "content": ...}, ...]}`` per line, each with at least one assistant turn (the turns that get scored)."""
    path = Path(path)
    for block in iter_line_blocks(path, what):
        for n, line in block:
            yield _conversation(line, path, n)


def read_chats(path: Path | str, *, max_lines: int | None = None, what: str = "--chat") -> list[list[dict[str, str]]]:
    """The first ``max_lines`` conversations (all when None) of a chat JSONL file, as a list."""
    return list(itertools.islice(iter_chats(path, what=what), max_lines))


def _conversation(line: str, path: Path, n: int) -> list[dict[str, str]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise RuadaptError(f"{path}: line {n} is not JSON ({e.msg})") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise RuadaptError(
            f'{path}: line {n} has no "messages" list; expected {{"messages": [{{"role": ..., "content": ...}}]}}'
        )
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RuadaptError(f"{path}: line {n}: every message needs a role ({'/'.join(ROLES)}) and a string content")
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise RuadaptError(f"{path}: line {n} has no non-empty assistant message to score")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
