"""The options of every stage, one frozen dataclass each, in one module that imports neither torch nor the stages.

One shape for every stage (issue 24): ``<Stage>Options`` says everything the stage is asked to do, with each
enumerated option a ``Literal`` whose values the CLI takes as its ``choices`` (``typing.get_args``), so the stage
and its command cannot drift apart; ``plan_<stage>(options)`` checks everything and decides what to write without
writing; one writer executes the plan. The options every vocabulary-changing stage (swap, lep, trim) shares are
declared once, in :class:`VocabOutputOptions`, with their flags once in
``ruadapt.commands.add_vocab_output_arguments``. Commands import this module when the parser is built, so it stays
free of torch (``ruadapt --help`` takes well under a second).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

from .errors import RuadaptError, require
from .vocab.init_rules import INPUT_RULES, OUTPUT_RULES, InputRule, OutputRule


@dataclass(frozen=True, kw_only=True)
class VocabOutputOptions:
    """Options every vocabulary-changing stage takes, declared once (each stage's options dataclass extends it).

    ``pad_to_multiple_of``: round the new row count up to it (default: the base checkpoint's padding multiple);
    ``max_shard_size``: output shard budget (``5GB`` or bytes; default: the input's largest shard); ``allow``:
    likely mistakes (:mod:`ruadapt.mistakes`) to go on with; ``progress``: progress bars."""

    pad_to_multiple_of: int | None = None
    max_shard_size: str | int | None = None
    allow: tuple[str, ...] = ()
    progress: bool = True

    def check_padding(self) -> None:
        """A padding multiple below 1 is refused before anything is read."""
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise RuadaptError(f"--pad-to-multiple-of must be ≥ 1, got {self.pad_to_multiple_of}")

    def max_shard_bytes(self) -> int | None:
        """``max_shard_size`` in bytes (a one-line error on a bad size), ``None`` for the input's largest shard."""
        from .io.checkpoint import parse_size  # torch: not at parse time

        return parse_size(self.max_shard_size) if self.max_shard_size is not None else None


@dataclass(frozen=True)
class PlanFigures:
    """What a stage's plan will write, printed by ``--dry-run`` before any work: the row counts by kind (the
    same numbers the stage record gives after the real run), the tensor bytes of the output and the expected
    peak memory of the stage's own buffers (beyond the Python/torch baseline of about 0.5 GB)."""

    stage: str
    out: Path
    rows: int
    rows_by_kind: Mapping[str, int]
    tensor_bytes: int
    peak_bytes: int
    notes: Sequence[str] = ()

    def format(self) -> str:
        """The plan as ``--dry-run`` prints it."""
        kinds = ", ".join(f"{k} {v:,}" for k, v in self.rows_by_kind.items())
        lines = [
            f"ruadapt {self.stage} --dry-run: checked the inputs; nothing was written",
            f"out             {self.out} (not created)",
            f"rows            {self.rows:,} ({kinds})",
            f"tensor bytes    {self.tensor_bytes:,} to write ({self.tensor_bytes / 1024**3:.2f} GiB)",
            f"peak memory     about {self.peak_bytes / 1024**2:,.1f} MiB for the stage's own buffers",
        ]
        return "\n".join(lines + [f"note            {n}" for n in self.notes])


# ---------------------------------------------------------------------------------------------- swap
# how a new token's row is built from its pieces' rows (ruadapt.vocab.pieces.averaged_rows); extend here


@dataclass(frozen=True, kw_only=True)
class SwapOptions(VocabOutputOptions):
    """Everything ``ruadapt swap`` is asked to do (the shared output options come from the base class)."""

    model_dir: Path
    tokenizer_dir: Path
    out: Path
    # the rules of new rows (ruadapt.vocab.init_rules): --init for every matrix (a tied model's only one), or one
    # per matrix of an untied model; None = the measured default (ruadapt.swap.init_rules)
    init: OutputRule | None = None
    init_input: InputRule | None = None
    init_output: OutputRule | None = None

    def check(self) -> None:
        """The checks that need no file, in the order the stage always made them."""
        for option, value, allowed in (
            ("--init", self.init, OUTPUT_RULES),
            ("--init-input", self.init_input, INPUT_RULES),
            ("--init-output", self.init_output, OUTPUT_RULES),
        ):
            if value is not None and value not in allowed:
                raise RuadaptError(f"{option} {value!r} is not one of {', '.join(allowed)}")
        self.check_padding()

    def record_options(self) -> dict:
        """The options as the stage record states them."""
        return {
            "init": self.init,
            "init_input": self.init_input,
            "init_output": self.init_output,
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "max_shard_size": self.max_shard_size,
            "allow": sorted(self.allow),
        }


# ---------------------------------------------------------------------------------------------- lep
# which rows fit the map W (ruadapt.lep): T·E over the new vocabulary, tokens in both, or W = identity
LepMethod = Literal["conversion", "overlap", "swap"]
LEP_METHODS: tuple[str, ...] = get_args(LepMethod)


@dataclass(frozen=True, kw_only=True)
class LepOptions(VocabOutputOptions):
    """Everything ``ruadapt lep`` is asked to do. Its rows are --adapted's, so ``pad_to_multiple_of`` stays unset."""

    base: Path
    instruct: Path
    adapted: Path
    out: Path
    method: LepMethod = "conversion"
    lora_deltas: Path | None = None
    alpha_scale: float = 1.0
    chunk_rows: int | None = None

    def check(self) -> None:
        """The checks that need no file, in the order the stage always made them."""
        if self.method not in LEP_METHODS:
            raise RuadaptError(f"--method {self.method!r} is not one of {', '.join(LEP_METHODS)}")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise RuadaptError(f"--chunk-rows must be ≥ 1, got {self.chunk_rows}")
        if self.lora_deltas is None and self.alpha_scale != 1.0:
            raise RuadaptError("--alpha-scale only applies with --lora-deltas")
        if self.pad_to_multiple_of is not None:
            raise RuadaptError("--pad-to-multiple-of does not apply to lep: the output has --adapted's rows")

    def inputs(self) -> list[Path]:
        """The input directories the output must not be or lie in."""
        return [Path(self.base), Path(self.instruct), Path(self.adapted)] + (
            [Path(self.lora_deltas)] if self.lora_deltas else []
        )

    def record_options(self) -> dict:
        """The options as the stage record states them."""
        return {
            "method": self.method,
            "lora_deltas": self.lora_deltas,
            "alpha_scale": self.alpha_scale,
            "chunk_rows": self.chunk_rows,
            "max_shard_size": self.max_shard_size,
            "allow": sorted(self.allow),
        }


# ---------------------------------------------------------------------------------------------- trim
@dataclass(frozen=True, kw_only=True)
class TrimOptions(VocabOutputOptions):
    """Everything ``ruadapt trim --model`` is asked to do (``trim --tokenizer`` takes the selection fields only)."""

    model_dir: Path
    corpora: tuple[Path, ...]
    out: Path
    keep_top: int | None = None
    min_count: int | None = None
    keep_tokens: Path | None = None
    eval_texts: tuple[Path, ...] = ()

    def record_options(self) -> dict:
        """The options as the stage record states them."""
        return {
            "keep_top": self.keep_top,
            "min_count": self.min_count,
            "keep_tokens": self.keep_tokens,
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "max_shard_size": self.max_shard_size,
        }


# ---------------------------------------------------------------------------------------------- gguf
# the converter's --outtype values ruadapt passes on (not ternary); auto: the highest-fidelity 16-bit type
GgufOutType = Literal["f32", "f16", "bf16", "q8_0", "auto"]


@dataclass(frozen=True, kw_only=True)
class GgufOptions:
    """Everything ``ruadapt gguf`` is asked to do. ``logits_tolerance`` ``None``: 0.01 for f32, else recorded only."""

    model_dir: Path
    llama_cpp: Path
    out: Path
    outtype: GgufOutType = "auto"
    pre: str | None = None
    overwrite: bool = False
    verify_texts: tuple[Path, ...] = ()
    verify_lines: int | None = None
    logit_lines: int = 3
    logits_tolerance: float | None = None


# ---------------------------------------------------------------------------------------------- tokenizer train
# extend: continue the base BPE; replace: a new BPE with the base's pre-tokenizer family and special tokens
TokenizerMode = Literal["extend", "replace"]
TOKENIZER_MODES: tuple[str, ...] = get_args(TokenizerMode)


@dataclass(frozen=True, kw_only=True)
class TokenizerTrainOptions:
    """Everything ``ruadapt tokenizer train`` is asked to do. ``keep_check_text=False`` (extend) lets new merges
    change llama.cpp's check text, which breaks llama.cpp's stock converter (tests and benches only)."""

    base: Path
    corpora: tuple[Path, ...]
    out: Path
    mode: TokenizerMode = "extend"
    new_tokens: int | None = None
    vocab_size: int | None = None
    min_frequency: int = 2
    allow: tuple[str, ...] = ()
    keep_check_text: bool = True
    progress: bool = True

    def check(self) -> None:
        """The checks that need no file, in the order the stage always made them."""
        mode, new_tokens, vocab_size = self.mode, self.new_tokens, self.vocab_size
        require(mode in TOKENIZER_MODES, f"--mode {mode!r}: choose one of {', '.join(TOKENIZER_MODES)}")
        if mode == "extend":
            require(new_tokens is not None, "--mode extend needs --new-tokens N (how many tokens to add)")
            require(
                new_tokens is not None and new_tokens > 0,
                f"--new-tokens {new_tokens}: must be a positive number of tokens to add",
            )
            require(vocab_size is None, "--vocab-size is for --mode replace; --mode extend takes --new-tokens")
        else:
            require(vocab_size is not None, "--mode replace needs --vocab-size N (size of the new vocabulary)")
            require(vocab_size is not None and vocab_size > 0, f"--vocab-size {vocab_size}: must be positive")
            require(new_tokens is None, "--new-tokens is for --mode extend; --mode replace takes --vocab-size")
        require(self.min_frequency >= 1, f"--min-frequency {self.min_frequency}: must be at least 1")
        require(len(self.corpora) > 0, "--corpus: give at least one UTF-8 text file")

    def record_options(self) -> dict:
        """The options as the stage record states them."""
        return {
            "mode": self.mode,
            "new_tokens": self.new_tokens,
            "vocab_size": self.vocab_size,
            "min_frequency": self.min_frequency,
            "allow": sorted(self.allow),
            "keep_check_text": self.keep_check_text,
        }


# ---------------------------------------------------------------------------------------------- eval
# the speed test's generation: the model's own greedy continuation, or forced to the rest of the prompt line
SpeedMode = Literal["greedy", "reference"]
SPEED_MODES: tuple[str, ...] = get_args(SpeedMode)


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """Everything ``ruadapt eval`` is asked to do: the models (name → dir) and the output folder, what to measure
    on them (``texts``/``chats``: label → file, ``prompts`` and the speed options, lm-eval ``tasks``) and how.

    ``copy_file`` ``None``: copy_ru reads ``texts["ru"]``; ``stride`` ``None``: the window (lm-eval's policy);
    ``start_base``: the model the others were swapped from (the start diagnostics of ``ruadapt.eval.start``)."""

    models: Mapping[str, Path]
    out: Path
    texts: Mapping[str, Path] = field(default_factory=dict)
    chats: Mapping[str, Path] = field(default_factory=dict)
    prompts: Path | None = None
    tasks: tuple[str, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    window: int = 1024
    stride: int | None = None
    batch_tokens: int = 2048
    max_lines: int | None = None
    speed_prompts: int = 8
    new_tokens: int = 64
    speed_mode: SpeedMode = "greedy"
    speed_rounds: int = 5
    copy_file: Path | None = None
    task_limit: int | None = None
    task_batch_size: int = 1
    include_paths: tuple[Path, ...] = ()
    system_instruction: str | None = None
    start_base: str | None = None

    def check(self) -> None:
        """The checks that need no file (and no torch: ``--device``/``--dtype`` are the stage's), in the order
        the stage always made them."""
        require(self.models, "--model: give at least one NAME=DIR")
        require(
            self.start_base is None or self.start_base in self.models,
            f"--start-base {self.start_base}: not one of the --model names ({', '.join(self.models)})",
        )
        require(
            self.start_base is None or self.texts,
            f"--start-base {self.start_base}: give --text LANG=FILE to measure the start on",
        )
        require(
            self.speed_mode in SPEED_MODES,
            f"--speed-mode {self.speed_mode}: unknown; use {' or '.join(SPEED_MODES)}",
        )
        require(self.speed_rounds >= 1, f"--speed-rounds {self.speed_rounds}: must be at least 1")
        require(
            self.new_tokens != 1 or self.speed_prompts == 0,
            "--new-tokens 1: the speed test times the decoding steps after the first token; give at least 2",
        )
        for label in self.chats:
            require(label not in self.texts, f"--chat {label}: the name is also used by --text; names must differ")
        require(self.system_instruction is None or self.system_instruction.strip(), "--system-instruction: empty text")
        require(self.task_batch_size >= 1, f"--task-batch-size {self.task_batch_size}: must be at least 1")

    def record_options(self) -> dict:
        """The options as the stage record states them: every one but ``models`` and ``out`` (recorded as
        inputs), as given (``device`` ``auto`` stays ``auto``; the record's result says which device ran)."""
        return {
            f.name: dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, tuple) else value
            for f in fields(self)
            if f.name not in ("models", "out")
            for value in (getattr(self, f.name),)
        }
