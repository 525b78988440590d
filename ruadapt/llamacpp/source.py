"""A llama.cpp converter on disk: where ``convert_hf_to_gguf.py`` is, what it is (hashes for the record), and what
its own pre-tokenizer table says (to report whether the stock converter would have recognised a tokenizer).

``--llama-cpp SRC`` is a llama.cpp checkout or an unpacked llama-cpp-python sdist (its ``vendor/llama.cpp``): the
converter is run from there with the ``gguf-py`` next to it, so ruadapt keeps no tensor logic of its own.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import get_args

from ..errors import RuadaptError
from ..options import GgufOutType

SCRIPT = "convert_hf_to_gguf.py"
OUTTYPES: tuple[str, ...] = get_args(GgufOutType)  # the converter's --outtype values ruadapt passes on (not ternary)
_TABLE_ENTRY = re.compile(r'if chkhsh == "([0-9a-f]{64})":\n(?:[ \t]*#.*\n)*[ \t]*res = "([^"]+)"')
_CHECK_TEXT = re.compile(r"^[ \t]*chktxt = (.+)$", re.M)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Converter:
    """llama.cpp's ``convert_hf_to_gguf.py`` in ``root``."""

    root: Path

    @property
    def script(self) -> Path:
        return self.root / SCRIPT

    @cached_property
    def _table_file(self) -> Path:
        """The file defining ``get_vocab_base_pre`` (``conversion/base.py`` since the converter was split up)."""
        for path in (self.root / "conversion" / "base.py", self.script):
            if path.is_file() and "def get_vocab_base_pre" in path.read_text(encoding="utf-8"):
                return path
        raise RuadaptError(
            f"{self.root}: {SCRIPT} defines no get_vocab_base_pre(); not a llama.cpp converter ruadapt knows"
        )

    def stock_names(self) -> dict[str, str]:
        """The converter's own table: check-text hash (chkhsh) -> pre-tokenizer name."""
        return dict(_TABLE_ENTRY.findall(self._table_file.read_text(encoding="utf-8")))

    def check_text(self) -> str | None:
        """The check text the converter hashes, or None if it cannot be read."""
        m = _CHECK_TEXT.search(self._table_file.read_text(encoding="utf-8"))
        try:
            return ast.literal_eval(m.group(1)) if m else None
        except (ValueError, SyntaxError):
            return None

    def gguf_py_version(self) -> str | None:
        pyproject = self.root / "gguf-py" / "pyproject.toml"
        if not pyproject.is_file():
            return None
        m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
        return m.group(1) if m else None

    def fingerprint(self) -> dict[str, str | None]:
        """What identifies this converter in a record: its script, the file with the name table, gguf-py."""
        return {
            "script_sha256": _sha256(self.script),
            "table_file": str(self._table_file.relative_to(self.root)),
            "table_file_sha256": _sha256(self._table_file),
            "gguf_py_version": self.gguf_py_version(),
        }


def find_converter(src: Path, option: str = "--llama-cpp") -> Converter:
    """The converter in ``src`` (a llama.cpp checkout) or ``src/vendor/llama.cpp`` (a llama-cpp-python sdist)."""
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise RuadaptError(
            f"{src}: {option} directory not found (a llama.cpp checkout, or an unpacked llama-cpp-python sdist)"
        )
    for root in (src, src / "vendor" / "llama.cpp"):
        if (root / SCRIPT).is_file():
            if not (root / "gguf-py" / "gguf").is_dir():
                raise RuadaptError(
                    f"{root}: {SCRIPT} without gguf-py/ next to it; {option} needs the whole llama.cpp tree"
                )
            return Converter(root)
    raise RuadaptError(
        f"{src}: no {SCRIPT} here or in vendor/llama.cpp; {option} takes a llama.cpp checkout or an unpacked "
        "llama-cpp-python sdist (pip download --no-deps --no-binary :all: llama-cpp-python)"
    )
