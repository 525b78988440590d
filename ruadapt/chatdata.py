"""Chat JSONL, the one reader: ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line.

SFT (``ruadapt train``, task sft) trains on these files and ``ruadapt eval --chat`` scores them, so both must accept
and refuse exactly the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import RuadaptError
from .tokenizer.words import read_lines

ROLES = ("system", "user", "assistant", "tool")


def read_chats(path: Path | str, *, max_lines: int | None = None, what: str = "--chat") -> list[list[dict[str, str]]]:
    """Conversations of a chat JSONL file: one ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line,
    each with at least one assistant turn (the turns that get scored)."""
    path = Path(path)
    chats: list[list[dict[str, str]]] = []
    for n, line in enumerate(read_lines(path, what)[:max_lines], 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RuadaptError(f"{path}: line {n} is not JSON ({e.msg})") from None
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            raise RuadaptError(f"{path}: line {n} has no \"messages\" list; expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}]}}")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise RuadaptError(f"{path}: line {n}: every message needs a role ({'/'.join(ROLES)}) and a string content")
        if not any(m["role"] == "assistant" and m["content"] for m in messages):
            raise RuadaptError(f"{path}: line {n} has no non-empty assistant message to score")
        chats.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return chats
