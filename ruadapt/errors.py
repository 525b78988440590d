"""The one user-facing error type.

Every check of user input raises :class:`RuadaptError` with a single line that names the file (or option),
says what is wrong and, where possible, what to do. The CLI prints it and exits with code 2; nothing else
in the package prints tracebacks for bad input.
"""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE = 2


class RuadaptError(Exception):
    """Bad input or an impossible request, explained in one line for the user, or in one line per problem when
    a check finds several at once (a config with three mistakes: three lines, so one edit fixes them all)."""

    def __init__(self, message: str, *more: str):
        self.lines = [" ".join(str(m).split()) for m in (message, *more)]
        super().__init__("\n".join(self.lines))


def require(condition: object, message: str) -> None:
    """Raise :class:`RuadaptError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise RuadaptError(message)


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is an existing file, else fail naming ``what`` it should have been."""
    path = Path(path)
    if not path.is_file():
        raise RuadaptError(f"{path}: {what} not found")
    return path
