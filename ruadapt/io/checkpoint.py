"""The one checkpoint reader and the one checkpoint writer of ruadapt.

Both work on plain Hugging Face model directories (``config.json`` + ``model.safetensors`` or
``model-0000k-of-0000n.safetensors`` shards with ``model.safetensors.index.json``).

* :class:`CheckpointReader` serves tensors by name with one shard open at a time and answers shape/dtype
  questions from the safetensors headers alone, so a 72B checkpoint is inspected in seconds.
* :class:`CheckpointWriter` fills shards up to a byte budget and names them as transformers does; shards in
  which nothing changed are copied as files, and unchanged tensors of a rewritten shard are copied as byte
  ranges of their input file (:func:`write_with_replacements`), so a stage that changes two tensors of a
  145 GB checkpoint holds only those two in memory and the rest never passes through Python.

Only safetensors are ever read: a directory holding pickle weights only is refused (pickle can execute code).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..errors import RuadaptError

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

_COPY_BLOCK = 1 << 30  # bytes per copy_file_range call
# what CheckpointReader.fingerprint samples of every shard besides the vocabulary matrices
FINGERPRINT_WINDOWS = 64
FINGERPRINT_WINDOW_BYTES = 64 * 1024

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def parse_size(text: str | int) -> int:
    """Parse a byte budget such as ``"2GB"``, ``"500MB"``, ``"64KiB"`` or ``1048576``."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    for unit, factor in units.items():
        if s.endswith(unit):
            number = s[: -len(unit)]
            break
    else:
        number, factor = s, 1
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise RuadaptError(f"shard size {text!r} is not a size; write e.g. 2GB, 500MB or 1048576") from None
    if value <= 0:
        raise RuadaptError(f"shard size {text!r} must be positive")
    return value


_ST_DTYPES: dict[torch.dtype, str] = {t: n for n, t in _DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """What the safetensors header says about one tensor; ``offset`` = where its bytes start in ``shard``."""

    name: str
    shape: tuple[int, ...]
    st_dtype: str
    shard: Path
    offset: int = -1

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.st_dtype]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def read_header(path: Path) -> tuple[bytes, int]:
    """The raw JSON header of a safetensors file and the file offset where its tensor data begins."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(n), 8 + n


def read_json(path: Path) -> dict:
    """Parse a JSON file, turning a malformed one into a one-line user error."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuadaptError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RuadaptError(f"{path}: not valid JSON ({e})") from None


class CheckpointReader:
    """Read-only access to a safetensors model directory, by tensor name, one shard open at a time."""

    def __init__(self, path: Path | str, *, need_config: bool = True):
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise RuadaptError(f"{self.path}: model directory not found")
        config_path = self.path / "config.json"
        if need_config and not config_path.is_file():
            raise RuadaptError(f"{config_path}: missing; a Hugging Face model directory needs config.json")
        self.config: dict = read_json(config_path) if config_path.is_file() else {}
        self.index_path: Path | None = None
        self.infos: dict[str, TensorInfo] = {}
        self._open_shard: Path | None = None
        self._handle: Any = None  # safe_open of _open_shard
        self._load_headers()

    # ------------------------------------------------------------------ layout
    def _shard_files(self) -> list[Path]:
        index = self.path / INDEX_FILE
        single = self.path / SINGLE_FILE
        if index.is_file():
            self.index_path = index
            data = read_json(index)
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise RuadaptError(f"{index}: has no weight_map")
            shards = list(dict.fromkeys(weight_map.values()))
            for shard in shards:
                if not (self.path / shard).is_file():
                    raise RuadaptError(f"{index}: names shard {shard} which is missing from {self.path}")
            self._weight_map: dict | None = weight_map
            return [self.path / s for s in shards]
        if single.is_file():
            self._weight_map = None
            return [single]
        pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise RuadaptError(
                f"{self.path}: holds only pickle weights ({', '.join(pickles[:3])}); ruadapt reads safetensors only "
                "- convert first, e.g. AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir)"
            )
        raise RuadaptError(f"{self.path}: no {SINGLE_FILE} or {INDEX_FILE} found")

    def _load_headers(self) -> None:
        self.shards = self._shard_files()
        for shard in self.shards:
            try:  # safetensors validates the file (truncation, overlapping or missing byte ranges)
                with safe_open(shard, framework="pt") as f:
                    names = list(f.keys())
            except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
                raise RuadaptError(
                    f"{shard}: not a readable safetensors file ({e}); re-download or re-save it"
                ) from None
            header, data_start = read_header(shard)
            entries = json.loads(header)
            for name in names:
                meta = entries[name]
                self.infos[name] = TensorInfo(
                    name, tuple(meta["shape"]), meta["dtype"], shard, data_start + meta["data_offsets"][0]
                )
        if self._weight_map is not None:
            for name, shard in self._weight_map.items():
                info = self.infos.get(name)
                if info is None or info.shard.name != shard:
                    raise RuadaptError(f"{self.index_path}: tensor {name} is not in shard {shard}")

    # ------------------------------------------------------------------ queries
    @property
    def names(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise RuadaptError(f"{self.path}: tensor {name} not found in the checkpoint") from None

    def names_in(self, shard: Path) -> list[str]:
        return [n for n, i in self.infos.items() if i.shard == shard]

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    def get(self, name: str) -> torch.Tensor:
        """Load one tensor; keeps its shard open for the next call and closes the previous one."""
        info = self.info(name)
        if self._open_shard != info.shard:
            self._handle = safe_open(info.shard, framework="pt")
            self._open_shard = info.shard
        return self._handle.get_tensor(name)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a 2-D tensor without loading the rest (for chunked passes over huge matrices)."""
        info = self.info(name)
        if self._open_shard != info.shard:
            self._handle = safe_open(info.shard, framework="pt")
            self._open_shard = info.shard
        return self._handle.get_slice(name)[start:stop]

    def close(self) -> None:
        self._handle = None
        self._open_shard = None

    def fingerprint(self, *, whole: Iterable[str]) -> str:
        """sha256 that tells checkpoints apart at a cost of seconds, not of reading 100s of GB.

        It covers config.json, the index and every shard header (names, shapes, dtypes, layout), the whole bytes
        of the tensors named in ``whole`` that the checkpoint holds, and :data:`FINGERPRINT_WINDOWS` windows of
        :data:`FINGERPRINT_WINDOW_BYTES` spread evenly over the data of every shard: a fine-tuned model differs
        from its base in every weight, so a header-only hash (equal for a base and its instruct model) is not
        enough. Which tensors are hashed whole (the vocabulary matrices, what ruadapt's stages change) is a fact
        of the architecture, so the caller names them: :func:`ruadapt.vocab.arch.model_fingerprint`. Keyword-only
        and required, so no caller gets a different hash by forgetting them. Cost: ``bench/fingerprint.py``."""
        h = hashlib.sha256()
        for extra in ("config.json", INDEX_FILE):
            p = self.path / extra
            if p.is_file():
                h.update(p.read_bytes())
        full = [n for n in whole if n in self]
        for shard in self.shards:
            header, data_start = read_header(shard)
            size = shard.stat().st_size
            h.update(header)
            h.update(str(size).encode())
            with open(shard, "rb") as f:
                span = size - data_start
                step = max(span // FINGERPRINT_WINDOWS, 1)
                for k in range(min(FINGERPRINT_WINDOWS, span)):
                    f.seek(data_start + k * step)
                    h.update(f.read(min(FINGERPRINT_WINDOW_BYTES, step)))
        for name in full:
            info = self.infos[name]
            with open(info.shard, "rb") as f:
                for block in read_range(f, info.offset, info.nbytes, info.shard, 16 << 20):
                    h.update(block)
        return h.hexdigest()


@dataclass
class RowBlocks:
    """A 2-D tensor given as consecutive row blocks: ``(first, n)`` = rows ``first:first+n`` of ``source`` (a
    tensor of an input shard), or a tensor of rows computed in memory.

    A new vocabulary matrix is mostly old rows; written this way its old rows go from the input file to the
    output by the kernel and only the computed rows are ever in memory (:meth:`CheckpointWriter.add`)."""

    source: TensorInfo
    blocks: list[tuple[int, int] | torch.Tensor]

    def __post_init__(self) -> None:
        if len(self.source.shape) != 2:
            raise ValueError(f"{self.source.name}: row blocks need a 2-D source, got shape {self.source.shape}")
        for b in self.blocks:
            if isinstance(b, torch.Tensor) and (b.dim() != 2 or b.shape[1] != self.width or b.dtype != self.dtype):
                raise ValueError(
                    f"{self.source.name}: a block of shape {tuple(b.shape)} {b.dtype} does not fit rows of "
                    f"{self.width} {self.dtype}"
                )

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def width(self) -> int:
        return self.source.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(b[1] if isinstance(b, tuple) else b.shape[0] for b in self.blocks), self.width)

    def parts(self) -> list[torch.Tensor | tuple[Path, int, int]]:
        """The blocks as the writer takes them: tensors, or (file, byte offset, byte count) ranges."""
        row_bytes = self.source.nbytes // max(self.source.shape[0], 1)
        return [
            (self.source.shard, self.source.offset + b[0] * row_bytes, b[1] * row_bytes) if isinstance(b, tuple) else b
            for b in self.blocks
        ]


@dataclass
class _Pending:
    """One tensor waiting for its shard, as parts written one after the other: in-memory tensors and byte
    ranges ``(file, offset, count)`` of input files."""

    name: str
    shape: tuple[int, ...]
    st_dtype: str
    nbytes: int
    parts: list[torch.Tensor | tuple[Path, int, int]]

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=_DTYPES[self.st_dtype]).element_size()


class CheckpointWriter:
    """Writes tensors into shards of at most ``max_shard_bytes`` (a single larger tensor gets its own shard).

    Shards are written under temporary names and renamed to ``model-0000k-of-0000n.safetensors`` (or
    ``model.safetensors`` when there is one) by :meth:`finish`, which also writes the index.
    Use it inside :func:`ruadapt.io.outdir.atomic_output_dir` so a failure leaves nothing behind.

    The safetensors file is laid out here (8-byte header length, JSON header, data; see
    https://huggingface.co/docs/safetensors) rather than by ``safetensors.torch.save_file`` because that
    function first copies every tensor into a ``bytes`` object (2.5 GB more for one 72B lm_head) and cannot
    take an unchanged tensor straight from its input file. Here an in-memory tensor is written from its own
    buffer, and :meth:`add_from` (a whole input tensor) and :class:`RowBlocks` (its old rows inside a new
    matrix) copy from the input shard with ``copy_file_range``, in the kernel like ``cp``. Every file written
    is read back through ``safe_open`` by the tests.
    """

    def __init__(self, directory: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.dir = Path(directory)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: list[_Pending] = []
        self._buffer_bytes = 0
        self._names: set[str] = set()
        self._parts: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self.total_params = 0

    def add(self, name: str, tensor: torch.Tensor | RowBlocks) -> None:
        """Queue a tensor, in memory (kept by reference until its shard is written) or as :class:`RowBlocks`."""
        if isinstance(tensor, RowBlocks):
            rows, width = tensor.shape
            nbytes = rows * width * torch.empty((), dtype=tensor.dtype).element_size()
            self._queue(_Pending(name, (rows, width), tensor.source.st_dtype, nbytes, tensor.parts()))
            return
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.dtype not in _ST_DTYPES:
            raise ValueError(f"tensor {name}: dtype {tensor.dtype} cannot be stored in safetensors")
        self._queue(
            _Pending(
                name, tuple(tensor.shape), _ST_DTYPES[tensor.dtype], tensor.numel() * tensor.element_size(), [tensor]
            )
        )

    def add_from(self, info: TensorInfo) -> None:
        """Queue a tensor of an input shard unchanged: its bytes are copied from the file when the shard is written."""
        if info.offset < 0:
            raise ValueError(f"tensor {info.name}: no file offset known")
        self._queue(
            _Pending(info.name, info.shape, info.st_dtype, info.nbytes, [(info.shard, info.offset, info.nbytes)])
        )

    def _queue(self, entry: _Pending) -> None:
        if entry.name in self._names:
            raise ValueError(f"tensor {entry.name} written twice")
        if self._buffer and self._buffer_bytes + entry.nbytes > self.max_shard_bytes:
            self.flush()
        self._names.add(entry.name)
        self._buffer.append(entry)
        self._buffer_bytes += entry.nbytes
        self._count(entry.shape, entry.nbytes)

    def _count(self, shape: Iterable[int], nbytes: int) -> None:
        n = 1
        for s in shape:
            n *= s
        self.total_bytes += nbytes
        self.total_params += n

    def add_shard_file(self, src: Path, infos: Iterable[TensorInfo]) -> None:
        """Copy an unchanged input shard as one output shard, byte for byte."""
        self.flush()
        infos = list(infos)
        for i in infos:
            if i.name in self._names:
                raise ValueError(f"tensor {i.name} written twice")
            self._names.add(i.name)
            self._count(i.shape, i.nbytes)
        part = self.dir / f".part-{len(self._parts):05d}.safetensors"
        shutil.copyfile(src, part)
        self._parts.append((part, [i.name for i in infos]))

    def flush(self) -> None:
        """Write the buffered tensors as one shard now."""
        if not self._buffer:
            return
        # widest dtype first: every tensor then starts at a multiple of its element size (data begins 8-aligned)
        entries = sorted(self._buffer, key=lambda e: -e.itemsize)
        header: dict = {"__metadata__": {"format": "pt"}}
        pos = 0
        for e in entries:
            header[e.name] = {"dtype": e.st_dtype, "shape": list(e.shape), "data_offsets": [pos, pos + e.nbytes]}
            pos += e.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        part = self.dir / f".part-{len(self._parts):05d}.safetensors"
        with open(part, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for e in entries:
                for piece in e.parts:
                    if isinstance(piece, torch.Tensor):
                        if piece.numel():
                            f.write(memoryview(piece.contiguous().reshape(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]  # numpy stubs: no __buffer__ before 3.12
                    else:
                        _copy_range(*piece, f)
        self._parts.append((part, [e.name for e in self._buffer]))
        self._buffer = []
        self._buffer_bytes = 0

    def finish(self) -> list[Path]:
        """Write the last shard, give every shard its final name and write the index; returns the shard paths."""
        self.flush()
        n = len(self._parts)
        if n == 0:
            raise ValueError("no tensors were written")
        if n == 1:
            final = self.dir / SINGLE_FILE
            os.replace(self._parts[0][0], final)
            return [final]
        weight_map: dict[str, str] = {}
        finals = []
        for k, (part, names) in enumerate(self._parts, start=1):
            final = self.dir / f"model-{k:05d}-of-{n:05d}.safetensors"
            os.replace(part, final)
            finals.append(final)
            for name in names:
                weight_map[name] = final.name
        index = {
            "metadata": {"total_size": self.total_bytes, "total_parameters": self.total_params},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (self.dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return finals


def _copy_range(path: Path, offset: int, count: int, dst: BinaryIO) -> None:
    """Append ``count`` bytes of ``path`` from ``offset`` to ``dst``: ``copy_file_range`` where the OS has it
    (the kernel copies page-cache pages, as ``cp`` does), else reads and writes."""
    dst.flush()
    with open(path, "rb") as src:
        left, pos = count, offset
        if hasattr(os, "copy_file_range"):
            try:
                while left:
                    n = os.copy_file_range(src.fileno(), dst.fileno(), min(left, _COPY_BLOCK), pos)
                    if n == 0:
                        raise RuadaptError(f"{path}: ends before byte {offset + count}; the file is truncated")
                    left -= n
                    pos += n
            except OSError:  # e.g. a file system or kernel without it: plain reads for what is left (same bytes)
                pass
            dst.seek(0, os.SEEK_END)  # the descriptor moved under the buffered file object: resynchronise it
        for block in read_range(src, pos, left, path):
            dst.write(block)


def read_range(src: BinaryIO, offset: int, count: int, path: Path, block_bytes: int = 64 << 20) -> Iterator[bytes]:
    """``count`` bytes of the open file ``src`` from ``offset``, in blocks; a file that ends early is an error."""
    src.seek(offset)
    end = offset + count
    while count:
        block = src.read(min(count, block_bytes))
        if not block:
            raise RuadaptError(f"{path}: ends before byte {end}; the file is truncated")
        yield block
        count -= len(block)


Replacement = torch.Tensor | RowBlocks | Callable[[], torch.Tensor | RowBlocks] | None


def write_with_replacements(
    reader: CheckpointReader,
    out_dir: Path,
    replacements: Mapping[str, Replacement],
    *,
    max_shard_bytes: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Stream ``reader``'s tensors into ``out_dir``, swapping in ``replacements`` (``None`` drops a tensor).

    A replacement may be a zero-argument callable: it is called only when its shard is written, so a stage can
    build each new matrix just in time and memory holds one new matrix (plus one shard), not all of them.

    Shards that hold none of the replaced tensors are copied as files; in the others every unchanged tensor is
    copied as a byte range of its input file, so only the replacements are ever in memory. Names in
    ``replacements`` that the input lacks are appended at the end.
    ``max_shard_bytes`` defaults to the input's largest shard (so the layout stays as the user had it).
    """
    if max_shard_bytes is None:
        max_shard_bytes = max(s.stat().st_size for s in reader.shards)
    writer = CheckpointWriter(out_dir, max_shard_bytes)
    pending = dict(replacements)
    for shard in tqdm(reader.shards, desc="writing shards", unit="shard", disable=not progress):
        names = reader.names_in(shard)
        if not any(n in pending for n in names):
            writer.add_shard_file(shard, (reader.info(n) for n in names))
            continue
        for name in names:
            if name in pending:
                new = pending.pop(name)
                if callable(new):
                    writer.flush()  # write what is buffered before the new matrix is built: one big tensor at a time
                    new = new()
                if new is not None:
                    writer.add(name, new)
            else:
                writer.add_from(reader.info(name))
        reader.close()
    for name, tensor in pending.items():
        if tensor is not None:
            writer.add(name, tensor() if callable(tensor) else tensor)
    return writer.finish()
