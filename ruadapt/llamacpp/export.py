"""``ruadapt gguf``: a GGUF file for llama.cpp (and Ollama, LM Studio) from an adapted model directory.

llama.cpp's own converter does all the work — tensors, vocabulary, merges, metadata — in a child process
(:mod:`.convert_child`); ruadapt only tells it the pre-tokenizer name its check-text hash cannot find for a
renumbered vocabulary (:mod:`.prename`), then reads the file back and compares it with the model directory
(:mod:`.readback`) and, given texts and ``llama_cpp``, tokenizes and runs them in llama.cpp against transformers
(:mod:`.verify`). The file appears at ``--out`` only when all of that passed, with its record
``OUT.ruadapt_gguf.json`` beside it (a file name of its own: several GGUFs of one model usually share a folder).

:func:`plan_gguf` checks everything and chooses the pre-tokenizer name without converting (``ruadapt gguf
--dry-run`` prints it); :func:`write_gguf` converts, checks and writes (docs/stages.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..errors import RuadaptError, require
from ..io.checkpoint import CheckpointReader
from ..io.outdir import atomic_output_file, check_output_file
from ..io.record import StageRecord, sha256_file
from ..io.tokdir import tokenizer_json_path, tokenizer_size
from ..options import GgufOptions, PlanFigures
from ..vocab.arch import arch_for_config, model_fingerprint
from ..vocab.checktext import CHECK_TEXT, check_text_hash, check_text_ids
from ..vocab.pieces import detect_family, piece_to_bytes
from .prename import lookup
from .readback import check_gguf
from .source import OUTTYPES, find_converter
from .verify import compare_ids, compare_logits, have_llama_cpp, read_lines

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("convert_child.py")
RECORD_SUFFIX = ".ruadapt_gguf.json"
F32_LOGITS_TOLERANCE = 1e-2  # float32 GGUF, float32 KV cache: tiny models differ by ~1e-5 (bench/gguf_llama_cpp.py)


def record_path(out: Path) -> Path:
    """Where the record of ``out`` goes: ``OUT.ruadapt_gguf.json``."""
    return out.with_name(out.name + RECORD_SUFFIX)


def tokens_over_32_bytes(tok: Tokenizer) -> int:
    """Model-vocabulary tokens longer than 32 bytes: llama-cpp-python's ``Llama.detokenize`` reads each token into
    a 32-byte buffer and loses longer ones (llama.cpp itself resizes), so they are worth knowing about."""
    family = detect_family(tok)
    return sum(len(piece_to_bytes(p, family)) > 32 for p in tok.get_vocab(with_added_tokens=False))


def choose_pre(spec: dict, where: str, pre: str | None) -> tuple[str, str, str | None]:
    """(name, where it came from, table family or None): ``--pre`` if given, else the table's (or an error)."""
    if pre is not None:
        require(
            pre.strip() and pre == pre.strip() and pre != "-",
            f"--pre {pre!r}: give llama.cpp's pre-tokenizer name, e.g. qwen2",
        )
        try:
            entry = lookup(spec, where)
        except RuadaptError:
            return pre, "--pre", None
        if entry.pre != pre:
            log.warning(
                "--pre %s: ruadapt's table gives %r for this tokenizer (the %s family)", pre, entry.pre, entry.base
            )
        return pre, "--pre", entry.base
    entry = lookup(spec, where)
    return entry.pre, "table", entry.base


def run_converter(root: Path, pre: str | None, model_dir: Path, outfile: Path, outtype: str) -> str:
    """Run the converter in a child process; returns its output. A failure is a one-line error with the
    converter's last line (its log goes to this logger)."""
    cmd = [
        sys.executable,
        str(CHILD),
        str(root),
        pre or "-",
        "--",
        str(model_dir),
        "--outfile",
        str(outfile),
        "--outtype",
        outtype,
    ]
    log.info("running llama.cpp's converter: %s", " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env)
    out = p.stdout
    if p.returncode != 0:
        tail = [x for x in out.strip().splitlines() if x.strip()]
        for line in tail[-30:]:
            log.error("converter: %s", line)
        last = tail[-1].strip() if tail else f"exit code {p.returncode}"
        raise RuadaptError(f"{model_dir}: llama.cpp's converter failed: {last}")
    log.debug("converter output:\n%s", out)
    return out


@dataclass
class GgufPlan:
    """What :func:`plan_gguf` checked and chose; :func:`write_gguf` converts, checks and writes it."""

    options: GgufOptions
    out: Path
    model_dir: Path
    reader: CheckpointReader
    tok: Tokenizer
    lines: list[str]  # --verify-text lines
    logits_tolerance: float | None
    pre: str  # the pre-tokenizer name given to the converter
    converter_root: Path
    record: StageRecord

    def figures(self) -> PlanFigures:
        """Rows (tokens and padding), the file's expected size and the converter's buffers. The size is the
        tensors at the output type (auto and 16-bit: 2 bytes, q8_0: 34 bytes per block of 32, f32: 4); the
        converter maps the checkpoint lazily and holds about one tensor at a time in float32."""
        arch = arch_for_config(self.reader.config, self.reader.path / "config.json")
        rows = self.reader.info(arch.input_name).shape[0]
        tokens = tokenizer_size(self.tok)
        per = {"f32": 4.0, "q8_0": 34 / 32}.get(self.options.outtype, 2.0)
        numel = [math.prod(i.shape) for i in self.reader.infos.values()]
        params, largest = sum(numel), max(numel, default=0) * 4
        return PlanFigures(
            "gguf",
            self.out,
            rows,
            {"tokens": tokens, "pad": rows - tokens},
            int(params * per),
            largest,
            (
                f"pre-tokenizer {self.pre!r} ({self.record.result['pre']['source']}); "
                "the read-back and --verify-text checks run when written",
            ),
        )


def export_gguf(model_dir: Path, llama_cpp: Path, out: Path, **options: Any) -> dict[str, Any]:
    """Convert ``model_dir`` into the GGUF file ``out`` (atomic) and check it; returns the record. ``options``: the
    other fields of :class:`ruadapt.options.GgufOptions`; ``logits_tolerance`` defaults to
    :data:`F32_LOGITS_TOLERANCE` for ``outtype="f32"``; for 16-bit and quantized types the difference is recorded
    but not enforced unless a tolerance is given."""
    options["verify_texts"] = tuple(options.get("verify_texts") or ())
    return write_gguf(plan_gguf(GgufOptions(model_dir=model_dir, llama_cpp=llama_cpp, out=out, **options)))


def plan_gguf(options: GgufOptions) -> GgufPlan:
    """Check the options, the model, the output, the texts and the converter, and choose the pre-tokenizer name,
    before minutes of conversion. Writes nothing."""
    opts = options
    model_dir = Path(opts.model_dir).expanduser().resolve()
    out = Path(opts.out).expanduser()
    verify_texts = [Path(p).expanduser() for p in opts.verify_texts]
    outtype, logit_lines, verify_lines = opts.outtype, opts.logit_lines, opts.verify_lines
    logits_tolerance = opts.logits_tolerance
    require(outtype in OUTTYPES, f"--outtype {outtype}: choose one of {', '.join(OUTTYPES)}")
    require(logit_lines >= 0, f"--logit-lines {logit_lines}: must be 0 or more")
    require(
        logits_tolerance is None or logits_tolerance > 0, f"--logits-tolerance {logits_tolerance}: must be positive"
    )
    if logits_tolerance is None and outtype == "f32":
        logits_tolerance = F32_LOGITS_TOLERANCE
    require(verify_lines is None or verify_lines > 0, f"--verify-lines {verify_lines}: must be positive")
    reader = CheckpointReader(model_dir)  # config.json and readable safetensors, before minutes of conversion
    tj = tokenizer_json_path(model_dir, "--model")
    out = check_output_file(out, [model_dir], overwrite=opts.overwrite)
    if verify_texts and not have_llama_cpp():
        raise RuadaptError(
            "--verify-text needs llama-cpp-python (pip install llama-cpp-python), which is not importable"
        )
    lines = read_lines(verify_texts, verify_lines) if verify_texts else []
    converter = find_converter(opts.llama_cpp)

    spec = json.loads(tj.read_text(encoding="utf-8"))
    name, source, family = choose_pre(spec, str(tj), opts.pre)
    tok = Tokenizer.from_file(str(tj))
    chk = check_text_hash(check_text_ids(tok))
    stock = converter.stock_names().get(chk)
    if converter.check_text() != CHECK_TEXT:
        log.warning(
            "%s: the converter's check text differs from ruadapt's; `tokenizer train --mode extend` guards "
            "an older text, so a stock conversion of new tokenizers may fail (ruadapt gguf is unaffected)",
            converter.script,
        )

    record = StageRecord(
        "gguf",
        {
            "outtype": outtype,
            "pre": opts.pre,
            "overwrite": opts.overwrite,
            "verify_texts": [str(p) for p in verify_texts],
            "verify_lines": verify_lines,
            "logit_lines": logit_lines,
            "logits_tolerance": logits_tolerance,
        },
    )
    record.input_model("model", reader, model_fingerprint(reader), tokenizer_json_sha256=sha256_file(tj))
    record.input("converter", converter.root, **converter.fingerprint())
    for i, p in enumerate(verify_texts):
        record.input_file(f"verify_text_{i}", p)
    record.set(
        "pre",
        {
            "name": name,
            "source": source,
            "table_family": family,
            "check_text_sha256": chk,
            "stock_converter_name": stock,
        },
    )
    if stock is None:
        log.info(
            "llama.cpp's converter alone would not recognise this tokenizer (check-text hash %s…); giving it %r",
            chk[:12],
            name,
        )
    return GgufPlan(opts, out, model_dir, reader, tok, lines, logits_tolerance, name, converter.root, record)


def verify_gguf(plan: GgufPlan, tmp: Path) -> None:
    """With --verify-text: llama.cpp's ids of every line, and the logits of the first lines, against transformers."""
    record, out, lines = plan.record, plan.out, plan.lines
    with record.timed("verify_ids"):
        ids = compare_ids(tmp, plan.model_dir, lines)
    record.set("verify_ids", ids)
    if ids["lines_differing"]:
        raise RuadaptError(
            f"{out}: llama.cpp tokenizes {ids['lines_differing']} of {ids['lines']} --verify-text lines "
            f"differently from transformers (first: {ids['first_difference']}); output not written"
        )
    if plan.options.logit_lines:
        with record.timed("verify_logits"):
            lg = compare_logits(tmp, plan.model_dir, lines[: plan.options.logit_lines])
        record.set("verify_logits", lg)
        if plan.logits_tolerance is not None and lg["max_abs_diff"] > plan.logits_tolerance:
            raise RuadaptError(
                f"{out}: llama.cpp's logits differ from transformers' by up to {lg['max_abs_diff']:.3g} "
                f"(> --logits-tolerance {plan.logits_tolerance}); output not written"
            )


def write_gguf(plan: GgufPlan) -> dict[str, Any]:
    """Convert into a temporary file beside ``out``, read it back, verify, and rename it into place; then the
    record beside it. Returns the record."""
    record, out, model_dir, opts = plan.record, plan.out, plan.model_dir, plan.options
    with atomic_output_file(out, [model_dir], overwrite=opts.overwrite) as tmp:
        with record.timed("convert"):
            run_converter(plan.converter_root, plan.pre, model_dir, tmp, opts.outtype)
        with record.timed("check"):
            record.set("gguf", check_gguf(tmp, model_dir, plan.pre))
        if plan.lines:
            verify_gguf(plan, tmp)
        long = tokens_over_32_bytes(plan.tok)
        record.set("tokens_over_32_bytes", long)
        if long:
            log.info(
                "%d tokens are longer than 32 bytes: llama-cpp-python's detokenize() drops them (llama.cpp's own "
                "programs do not)",
                long,
            )
        with record.timed("sha256"):
            record.set("file", {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)})
    # the record goes in after the file, also whole (written beside it, then renamed): it never describes a missing file
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.record-") as rec_dir:
        written = record.write(Path(rec_dir))
        data = json.loads(written.read_text(encoding="utf-8"))
        os.replace(written, record_path(out))
    log.info("wrote %s (%s, pre-tokenizer %r); record %s", out, opts.outtype, plan.pre, record_path(out))
    return data
