"""Evaluation inputs: plain-text files (one document per line) and chat JSONL (``{"messages": [...]}``).

Both the bits-per-byte scorer and the shipped lm-eval tasks read text through :func:`read_lines`, so the two
always see exactly the same lines (same newline handling, same empty-line skipping) and their numbers can be
compared to the last digit.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RuadaptError
from ..io.corpus import read_documents


def parse_named(items: list[str] | None, option: str) -> dict[str, Path]:
    """``["ru=a.txt", "en=b.txt"]`` -> ``{"ru": Path("a.txt"), ...}``; names must be unique and non-empty."""
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise RuadaptError(f"{option} {item!r}: expected NAME=PATH, e.g. {option} ru=./ru_eval.txt")
        if name in out:
            raise RuadaptError(f"{option} {name}: given twice")
        out[name] = Path(path).expanduser()
    return out


def read_lines(path: Path | str, *, max_lines: int | None = None, what: str = "--text") -> list[str]:
    """Documents of a corpus file (the project's one reader, :func:`ruadapt.io.corpus.read_documents`, so chars/token
    here equals ``ruadapt tokenizer report``'s), at most ``max_lines`` of them.

    Raises a one-line error for a missing, non-UTF-8 or empty file."""
    return read_documents(Path(path), what, limit=max_lines or 0)
