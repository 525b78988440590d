"""The one reader of corpus files: every stage that reads text (tokenizer train, trim, tokenizer report, training
data, chat data, eval) reads it through this module, so they accept and refuse exactly the same files.

Formats, chosen by the file name (a compression suffix first, then the format suffix):

* plain text — one document per non-empty line (``ru.txt``, anything not listed below);
* JSONL — one JSON object per non-empty line, the document in ``text_field`` (``.jsonl``, ``.json``, ``.ndjson``);
* Parquet — the string column ``text_field`` (``.parquet``; compressed internally, so no outer compression);
* compression — ``.gz`` (gzip) and ``.zst``/``.zstd`` (Zstandard) around text or JSONL: ``ru.jsonl.zst``.

Everything streams: text is read in blocks of a few MB, so a corpus of any size needs memory for one block.
Bad input is a one-line :class:`RuadaptError` naming the file and the line (or row): bytes that are not UTF-8,
a line that is not a JSON object with a string ``text_field``, a compressed stream that ends early (a truncated
download: zstd's own stream reader would silently return the part it got), a file without any document.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path

from ..errors import RuadaptError
from ..mistakes import refuse

BLOCK_BYTES = 4 << 20  # bytes read at a time from a (decompressed) stream
_JSON_SNIFF_LINES = 20  # lines looked at by refuse_json_as_text
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


def corpus_format(path: Path) -> tuple[str, str | None]:
    """(``text`` | ``jsonl`` | ``parquet``, compression or None) from the file name."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = COMPRESSION_SUFFIXES.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last == ".parquet":
        return "parquet", compression
    return ("jsonl" if last in JSONL_SUFFIXES else "text"), compression


def check_corpus(path: Path | str, option: str = "--corpus") -> Path:
    """Refuse a corpus that is missing, not a file or empty (before any output is started)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RuadaptError(f"{path}: {option} file not found")
    if not path.is_file():
        raise RuadaptError(
            f"{path}: {option} is not a file (give a UTF-8 text, JSONL or Parquet file, one document per line or row)"
        )
    if path.stat().st_size == 0:
        raise RuadaptError(f"{path}: {option} file is empty")
    fmt, compression = corpus_format(path)
    if fmt == "parquet" and compression:
        raise RuadaptError(f"{path}: {option}: Parquet compresses internally; give the .parquet file itself")
    return path


class _ZstdReader(io.RawIOBase):
    """Decompressed bytes of a (multi-frame) .zst file that raises at EOF when the last frame is incomplete."""

    def __init__(self, path: Path):
        import zstandard

        self._f = open(path, "rb")
        self._zstd = zstandard
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._buf = b""
        self._started = False  # an empty file is no truncated stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            raw = self._f.read(1 << 20)
            if not raw:
                if not self._d.eof and self._started:
                    raise EOFError("the compressed stream ends in the middle of a frame")
                return 0
            self._started = True
            try:
                out = self._d.decompress(raw)
                while self._d.eof and self._d.unused_data:  # the next frame of a multi-frame file
                    rest = self._d.unused_data
                    self._d = self._zstd.ZstdDecompressor().decompressobj()
                    out += self._d.decompress(rest)
            except self._zstd.ZstdError as e:
                raise EOFError(f"not a valid Zstandard stream ({e})") from None
            self._buf = out
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _open_binary(path: Path, compression: str | None) -> io.BufferedIOBase:
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise RuadaptError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
        return io.BufferedReader(_ZstdReader(path), BLOCK_BYTES)
    return open(path, "rb")


def _line_blocks(path: Path, option: str) -> Iterator[tuple[int, list[str]]]:
    """(number of the first line, the block's lines) over the decoded lines of a text or JSONL file, a few MB a block.

    Decoding a whole block at once is several times faster than line by line; the line number of a bad byte is
    still exact. A UTF-8 BOM at the start is dropped; CRLF line ends are accepted. The stream is read with
    ``read1`` (what one decompression step gives), so a compressed file that ends early still hands over every
    byte before the damage and the error names the last complete line (a ``read(4 MB)`` that fails loses the
    whole block: a 789-line file cut short was reported "after line 1").
    """
    _, compression = corpus_format(path)
    lineno = 1
    pending = bytearray()  # read, not yet yielded
    try:
        with _open_binary(path, compression) as f:
            while True:
                piece = f.read1(BLOCK_BYTES)
                pending += piece
                if pending and (not piece or len(pending) >= BLOCK_BYTES):
                    cut = len(pending) if not piece else pending.rfind(b"\n") + 1
                    if cut:
                        block = bytes(pending[:cut])
                        del pending[:cut]
                        text = _decode(block, path, option, lineno)
                        lines = text.split("\n")
                        yield lineno, lines[:-1] if text.endswith("\n") else lines
                        lineno += block.count(b"\n")
                if not piece:
                    break
    except (EOFError, OSError, zlib.error) as e:
        if isinstance(e, OSError) and not isinstance(e, gzip.BadGzipFile) and e.errno is not None:
            raise
        what = "gzip" if compression == "gzip" else "Zstandard" if compression == "zstd" else "compressed"
        good = lineno - 1 + pending.count(b"\n")  # complete lines that decompressed fine
        where = f"after line {good}" if good else "before the end of its first line"
        raise RuadaptError(
            f"{path}: {option}: the {what} stream is damaged or truncated {where} "
            f"({' '.join(str(e).split())}); download or compress it again"
        ) from None


def _decode(block: bytes, path: Path, option: str, first_line: int) -> str:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + block.count(b"\n", 0, e.start)
        raise RuadaptError(
            f"{path}: {option} is not UTF-8 text (invalid byte 0x{block[e.start]:02x} on line {line}); "
            "convert it with iconv -t UTF-8"
        ) from None
    if first_line == 1 and text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n") if "\r" in text else text


def refuse_json_as_text(path: Path | str, option: str = "--corpus", allow: Collection[str] = (), how: str = "") -> None:
    """A corpus read as plain text whose first lines are all JSON objects is JSON Lines under another name:
    trained on as text, a tokenizer learns merges such as ``."}`` and ``{"text":``, a model learns the JSON syntax
    and a report measures it. Refused unless ``--allow json-text`` (:mod:`ruadapt.mistakes`; ``how`` names the
    switch where it is not that option, e.g. ``data.allow`` of a training YAML)."""
    path = Path(path).expanduser()
    if corpus_format(path)[0] != "text":
        return
    sample: list[str] = []
    for _, lines in _line_blocks(path, option):
        sample += [ln for ln in lines if ln.strip()][: _JSON_SNIFF_LINES - len(sample)]
        if len(sample) >= _JSON_SNIFF_LINES:
            break
    if not sample:
        return
    for line in sample:
        try:
            if not isinstance(json.loads(line), dict):
                return
        except ValueError:
            return
    refuse(
        "json-text",
        allow,
        f"{path}: {option} is read as plain text, but its first {len(sample)} lines are JSON objects (JSON Lines); "
        "the JSON syntax would be learned as text",
        'name it .jsonl so the documents are read from its "text" field',
        how,
    )


def iter_line_blocks(path: Path | str, option: str = "--corpus") -> Iterator[list[tuple[int, str]]]:
    """Blocks of (line number, line) of the non-empty lines of a text/JSONL file (plain, .gz or .zst)."""
    path = check_corpus(path, option)
    any_line = False
    for first, lines in _line_blocks(path, option):
        block = [(first + k, line) for k, line in enumerate(lines) if line.strip()]
        if block:
            any_line = True
            yield block
    if not any_line:
        raise RuadaptError(f"{path}: {option} holds no text (only empty lines)")


def iter_document_blocks(path: Path | str, option: str = "--corpus", text_field: str = "text") -> Iterator[list[str]]:
    """Documents of any corpus format, a block (a few MB of text) at a time: the unit parallel encoders want."""
    path = check_corpus(path, option)
    fmt, _ = corpus_format(path)
    if fmt == "parquet":
        yield from _parquet_blocks(path, option, text_field)
        return
    for block in iter_line_blocks(path, option):
        if fmt == "text":
            yield [line for _, line in block]
        else:
            yield [_jsonl_text(line, path, n, option, text_field) for n, line in block]


def iter_documents(path: Path | str, option: str = "--corpus", text_field: str = "text") -> Iterator[str]:
    """Documents of any corpus format, one by one."""
    for block in iter_document_blocks(path, option, text_field):
        yield from block


def read_documents(path: Path | str, option: str = "--corpus", text_field: str = "text", limit: int = 0) -> list[str]:
    """All documents of a file (for the small files stages hold in memory: eval text, tokenizer reports)."""
    docs: list[str] = []
    for block in iter_document_blocks(path, option, text_field):
        docs.extend(block)
        if limit and len(docs) >= limit:
            return docs[:limit]
    return docs


def _jsonl_text(line: str, path: Path, lineno: int, option: str, text_field: str) -> str:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise RuadaptError(
            f"{path}: {option}: line {lineno} is not valid JSON ({e.msg}); "
            f"expected one object per line with a string {text_field!r}"
        ) from None
    text = rec.get(text_field) if isinstance(rec, dict) else None
    if not isinstance(text, str):
        got = "no such key" if isinstance(rec, dict) and text_field not in rec else type(text).__name__
        raise RuadaptError(
            f"{path}: {option}: line {lineno} has no string {text_field!r} ({got}); set the JSON key with text_field"
        )
    return text


def _parquet_blocks(path: Path, option: str, text_field: str) -> Iterator[list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise RuadaptError(
            f"{path}: {option}: not a readable Parquet file ({' '.join(str(e).split())[:200]})"
        ) from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise RuadaptError(
            f"{path}: {option}: no column {text_field!r} (columns: {', '.join(names[:10])}); set text_field"
        )
    if not pa.types.is_string(pf.schema_arrow.field(text_field).type) and not pa.types.is_large_string(
        pf.schema_arrow.field(text_field).type
    ):
        raise RuadaptError(
            f"{path}: {option}: column {text_field!r} is {pf.schema_arrow.field(text_field).type}, not text"
        )
    row = 0
    any_doc = False
    try:
        for batch in pf.iter_batches(batch_size=8192, columns=[text_field]):
            col = batch.column(0).to_pylist()
            docs = []
            for k, text in enumerate(col):
                if text is None:
                    raise RuadaptError(f"{path}: {option}: row {row + k + 1} has a null {text_field!r}")
                if text.strip():
                    docs.append(text)
            row += len(col)
            if docs:
                any_doc = True
                yield docs
    except (pa.ArrowException, OSError) as e:
        raise RuadaptError(
            f"{path}: {option}: Parquet data is damaged after row {row} ({' '.join(str(e).split())[:200]})"
        ) from None
    if not any_doc:
        raise RuadaptError(f"{path}: {option} holds no text (no non-empty {text_field!r} value)")
