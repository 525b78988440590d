"""One training run = one YAML file, validated into dataclasses before any process starts.

Every check here raises a one-line :class:`RuadaptError` naming the YAML file and the key, so a typo in a
recipe fails in a second on the login node instead of after eight GPUs have loaded a 72B model.

String values may use ``${VAR}`` (environment variables): the recipes keep paths in shell variables and
export them, so one YAML serves every run directory. ``--set section.key=value`` overrides a value.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import RuadaptError
from ..io.corpus import check_corpus, refuse_json_as_text
from ..io.hub import resolve
from ..schema import build

# The choices of a config, as types: the schema (ruadapt/schema.py) checks a value against them, and anything that
# lists them (errors, docs) reads them with typing.get_args, so a choice is written down once.
Task = Literal["cpt", "sft"]
Stage = Literal["embeddings", "lora", "full", "distill"]
Scheduler = Literal["cosine", "linear", "constant"]
Bf16 = Literal["auto", "true", "false"]
Reporter = Literal["tensorboard", "wandb"]  # each is also the module it needs installed


@dataclass
class SourceConfig:
    """One training file and its share of the mix. In YAML a plain string is a source with the defaults:
    ``train: [ru.txt]`` or ``train: [{path: ru.txt, weight: 0.9}, {path: en.jsonl.zst, weight: 0.1}]``."""

    SHORTHAND = "path"  # the key a plain string stands for

    path: str
    weight: float = (
        0.0  # relative share of the sequences trained on; 0 everywhere = each file's natural share (its size)
    )
    text_field: str = ""  # JSONL key / Parquet column of the text; "" = data.text_field


@dataclass
class DataConfig:
    """Where the text comes from, how it is mixed, and how much of it is held out for the eval loss."""

    train: list[SourceConfig] = field(default_factory=list)
    eval: list[SourceConfig] = field(default_factory=list)  # explicit eval files; else the tail of each train source
    eval_blocks: int = 8  # sequences held out of train when ``eval`` is empty (0 = no eval loss)
    text_field: str = "text"  # key of JSONL records / Parquet column for cpt
    max_documents: int = 0  # 0 = all; a cap per file for smoke runs
    cache_dir: str = ""  # token files (see ruadapt/train/tokenfile.py); "" = <dir of out>/.ruadapt-cache/tokens
    allow: list[str] = field(default_factory=list)  # likely mistakes to go on with: json-text (ruadapt/mistakes.py)

    @property
    def cache_path(self) -> Path | None:
        return Path(self.cache_dir) if self.cache_dir else None


@dataclass
class EmbeddingsConfig:
    """Stage ``embeddings``: which rows of embed_tokens / lm_head learn."""

    new_rows_only: bool = False  # rows below ``new_rows_from`` keep their values exactly
    new_rows_from: int = 0  # first new row (= len(base tokenizer) for an extended vocabulary; distill: 0 = that)


@dataclass
class DistillConfig:
    """Stage ``distill`` (ruadapt/train/distill.py): new input rows trained so the model's hidden states on the new
    tokens match its own on the base's pieces (AweDist); ``embeddings.new_rows_from`` = len(base tokenizer)."""

    base: str = ""  # the model the swap started from (its tokenizer gives the pieces; its rows are checked)
    layer: int = -1  # which hidden state is matched (HF ``hidden_states`` index: -1 = last, after the final norm)
    next_token_weight: float = 0.0  # > 0: the untied lm_head's new rows also train, by next-token loss (detached)


@dataclass
class LoraConfig:
    """Stage ``lora`` (and SFT/calibration): peft LoRA on the body; the vocabulary matrices optionally train."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    layers: list[int] = field(default_factory=list)  # empty = all; negative = from the end (-1 = last)
    train_embeddings: bool = False  # embed_tokens (and the untied lm_head) train in full, tie kept
    merge: bool = True  # export the merged model as well as the adapter


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    micro_batch_size: int = 1  # sequences per process per forward
    grad_accum: int = 1
    max_steps: int = 100  # optimizer steps
    lr: float = 2e-4
    min_lr_ratio: float = 0.0  # cosine/linear decay floor as a fraction of lr
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    scheduler: Scheduler = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 42
    save_steps: int = 500  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2
    eval_steps: int = 0  # 0 = eval only at the end
    log_steps: int = 10  # a progress line (loss, lr, tokens/s, elapsed, ETA) every N steps
    report_to: list[Reporter] = field(default_factory=list)  # also write the logged scalars to: tensorboard, wandb
    bf16: Bf16 = "auto"  # auto = on when the accelerator supports it; "true"/"false"
    gradient_checkpointing: bool = False
    # MiB of float32 logits the next-token loss holds at once: longer micro-batches are computed in chunks of
    # positions, each recomputed in backward (ruadapt/train/loss.py); 0 = the model's own loss, all logits at once
    logits_mb: int = 128


@dataclass
class RunConfig:
    """A whole run as read from YAML (see recipes/*/ for commented examples)."""

    task: Task
    model: str  # a directory, or a Hugging Face repo id (resolved by ruadapt.io.hub into its cached snapshot)
    out: str
    data: DataConfig
    deepspeed: str
    revision: str = ""  # branch, tag or commit when model is a repo id; "" = main
    stage: Stage = "embeddings"
    block_size: int = 2048
    max_shard_size: str = ""  # "" = the input's shard size (layout kept); else e.g. "5GB"
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str = field(default="", metadata={"schema": False})  # the YAML it came from (set by load_config)

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def work_dir(self) -> Path:
        """Beside the output: token cache and checkpoints (the output itself appears only when the run ends)."""
        out = self.out_path
        return out.parent / f"{out.name}.work"

    @property
    def token_cache(self) -> Path:
        """Where this run's token files live (shared by every run with the same cache_dir; keys are content hashes)."""
        return self.data.cache_path or self.out_path.parent / ".ruadapt-cache" / "tokens"

    @property
    def done(self) -> bool:
        """The run finished earlier (its export holds ruadapt_train.json): a relaunch skips it."""
        return (self.out_path / "ruadapt_train.json").is_file()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, where: str, key: str = "") -> Any:
    """``${VAR}`` in string values from the environment; an unset one names the file, the key and what to do."""
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name = m.group(1)
            if name not in os.environ:
                top = key.split("[")[0]
                raise RuadaptError(
                    f"{where}: {key} uses ${{{name}}} but the environment variable {name} is not set; "
                    f"export {name}=..., or give {top} with --set {top}=..."
                )
            return os.environ[name]

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, where, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    return value


def _apply_override(raw: dict, assignment: str, source: str) -> None:
    if "=" not in assignment:
        raise RuadaptError(f"--set {assignment}: expected KEY=VALUE, e.g. --set train.max_steps=10")
    key, value = assignment.split("=", 1)
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise RuadaptError(f"--set {assignment}: {p} is not a section of {source}")
    node[parts[-1]] = yaml.safe_load(value)


def load_configs(paths: list[str], overrides: list[str] | tuple[str, ...] = ()) -> list[RunConfig]:
    """Several runs meant to execute in sequence: a later run's model may be an earlier run's ``out``
    (CPT stage 2 on stage 1), so that model is checked when its run starts, everything else now.

    Every problem of every config is collected first and raised together, one line each."""
    configs = []
    problems: list[str] = []
    produced: set[Path] = set()
    for p in paths:
        try:
            cfg = read_config(p, overrides)
        except RuadaptError as e:
            problems += e.lines
            continue
        made_here = Path(cfg.model).resolve() in produced
        try:
            if not made_here:
                resolve_model(cfg)
            validate(cfg, check_files=True, skip_model=made_here)
        except RuadaptError as e:
            problems += e.lines
        produced.add(cfg.out_path.resolve())
        configs.append(cfg)
    if problems:
        raise RuadaptError(*problems)
    return configs


def load_config(
    path: Path | str, overrides: list[str] | tuple[str, ...] = (), *, check_files: bool = True
) -> RunConfig:
    """Read, expand and validate a run YAML; its problems are one :class:`RuadaptError`, a line each.

    The schema's problems (unknown or missing keys, wrong types, a value outside its choices) come first, all of
    them; the checks of values together need a typed config, so they follow once the schema is satisfied."""
    cfg = read_config(path, overrides)
    if check_files:
        resolve_model(cfg)
    validate(cfg, check_files=check_files)
    return cfg


def read_config(path: Path | str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A run YAML through the schema (``${VAR}`` expanded, ``--set`` applied), not yet validated."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RuadaptError(f"{path}: --config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RuadaptError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise RuadaptError(f"{path}: expected a mapping of keys (task, model, out, data, deepspeed, ...)")
    for assignment in overrides:
        _apply_override(raw, assignment, str(path))
    raw = _expand(raw, str(path))
    try:
        cfg = build(RunConfig, raw, "")
    except RuadaptError as e:
        raise RuadaptError(*(f"{path}: {line}" for line in e.lines)) from None
    cfg.source = str(path)
    return cfg


def resolve_model(cfg: RunConfig) -> None:
    """``model:`` may be a Hugging Face repo id (pinned by ``revision:``): it becomes the snapshot directory in the
    hub cache. That path names the commit, so the config recorded for a resume pins the weights: a relaunch after
    the repo moved on is refused as a changed ``model`` instead of resuming on other weights."""
    path = resolve(cfg.model, f"{cfg.source or 'config'}: model", revision=cfg.revision or None)
    if (
        path != Path(cfg.model).expanduser()
    ):  # a repo id; a local model keeps its spelling, as earlier launches recorded it
        cfg.model = str(path)


def validate(cfg: RunConfig, *, check_files: bool = True, skip_model: bool = False) -> None:
    """Checks that need the values together (and, with ``check_files``, the model and data on disk).

    Every problem found is collected and raised together, one line each naming the YAML; a check that depends on
    an earlier one's success (the model's config.json before its positions) is skipped when that one failed."""
    src = cfg.source or "config"
    t = cfg.train
    problems: list[str] = []

    def need(cond: object, msg: str) -> bool:
        if not cond:
            problems.append(f"{src}: {msg}")
        return bool(cond)

    need(cfg.block_size >= 8, f"block_size {cfg.block_size} is too small (at least 8)")
    for key in ("micro_batch_size", "grad_accum", "max_steps", "save_steps", "log_steps", "keep_checkpoints"):
        need(getattr(t, key) >= 1, f"train.{key} must be at least 1")
    need(t.logits_mb >= 0, "train.logits_mb must not be negative (0 = all logits at once)")
    need(t.lr > 0, "train.lr must be positive")
    need(0 <= t.warmup_steps, "train.warmup_steps must not be negative")
    need(len(t.betas) == 2, "train.betas must be two numbers, e.g. [0.9, 0.95]")
    need(cfg.lora.r >= 1, "lora.r must be at least 1")
    need(cfg.data.train, "data.train lists no files")
    need(
        set(cfg.data.allow) <= {"json-text"},
        f"data.allow {cfg.data.allow}: the only likely mistake it can allow is json-text",
    )
    weights = [src.weight for src in cfg.data.train]
    need(all(w >= 0 for w in weights), "data.train: a weight must not be negative")
    need(
        all(w == 0 for w in weights) or all(w > 0 for w in weights),
        "data.train: give every source a weight, or none (then each file counts by its size)",
    )
    for r in t.report_to:
        need(
            importlib.util.find_spec(r) is not None,
            f"train.report_to lists {r} but it is not installed; pip install {r} (or remove it from train.report_to)",
        )
    if cfg.embeddings.new_rows_only:
        need(cfg.stage == "embeddings", "embeddings.new_rows_only needs stage: embeddings")
        need(
            cfg.embeddings.new_rows_from > 0,
            "embeddings.new_rows_only needs embeddings.new_rows_from (the first new row)",
        )
    if cfg.stage == "distill":
        need(cfg.task == "cpt", "stage distill needs task: cpt (it reads plain text)")
        need(cfg.distill.base, "stage distill needs distill.base (the model the swap started from)")
        need(cfg.distill.next_token_weight >= 0, "distill.next_token_weight must not be negative")
    if check_files:
        _check_files(cfg, skip_model, need)
    if problems:
        raise RuadaptError(*problems)


def _check_files(cfg: RunConfig, skip_model: bool, need: Callable[[object, str], bool]) -> None:
    """The data files, the DeepSpeed JSON, the model directory and the output of ``cfg``, on disk."""
    for section, sources in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        for source in sources:
            try:
                check_corpus(Path(source.path), section)
                if cfg.task == "cpt":  # SFT files are chat JSONL whatever their name; the chat reader checks them
                    refuse_json_as_text(
                        Path(source.path), section, cfg.data.allow, "add `allow: [json-text]` under data"
                    )
            except RuadaptError as e:
                need(False, str(e))
    ds = Path(cfg.deepspeed)
    if need(ds.is_file(), f"deepspeed config {ds} not found"):
        try:
            load_deepspeed_json(ds)
        except RuadaptError as e:
            need(False, str(e))
    model = Path(cfg.model)
    if not skip_model and need(
        (model / "config.json").is_file(), f"model {model} has no config.json (expected a Hugging Face model directory)"
    ):
        mcfg = json.loads((model / "config.json").read_text(encoding="utf-8"))
        mcfg = mcfg.get("text_config", mcfg) if "max_position_embeddings" not in mcfg else mcfg
        positions = mcfg.get("max_position_embeddings")
        if positions:
            need(
                cfg.block_size <= positions,
                f"block_size {cfg.block_size} is above the model's max_position_embeddings {positions} "
                f"({model}/config.json)",
            )
        if cfg.stage in ("embeddings", "distill") or (cfg.stage == "lora" and cfg.lora.train_embeddings):
            try:
                _check_embeddings(cfg, model)
                if cfg.stage == "distill":
                    _check_distill_base(cfg, model)
            except RuadaptError as e:
                need(False, str(e).removeprefix(f"{cfg.source}: "))
        rows = mcfg.get("vocab_size")
        if (cfg.embeddings.new_rows_only or cfg.stage == "distill") and rows:
            need(
                cfg.embeddings.new_rows_from < rows,
                f"embeddings.new_rows_from {cfg.embeddings.new_rows_from} is not below the model's {rows} rows",
            )
    try:
        _check_out(cfg, model)
    except RuadaptError as e:
        need(False, str(e))


def _check_embeddings(cfg: RunConfig, model: Path) -> None:
    """The vocabulary matrices must be known to the arch table and present in the checkpoint (headers only)."""
    from ..io.checkpoint import CheckpointReader

    what = "stage embeddings" if cfg.stage == "embeddings" else "lora.train_embeddings"
    try:
        names, _ = embedding_names(model)
        reader = CheckpointReader(model)
    except RuadaptError as e:
        raise RuadaptError(f"{cfg.source}: {what} cannot find the embeddings: {e}") from None
    if names[0] not in reader:
        raise RuadaptError(
            f"{cfg.source}: {what}: the checkpoint {model} has no tensor {names[0]} (embeddings not found)"
        )


def _check_distill_base(cfg: RunConfig, model: Path) -> None:
    """distill.base is a model dir with a tokenizer, and the model's old rows are its rows (the teacher is the
    model itself on those rows: ruadapt/train/distill.py)."""
    from ..io.tokdir import load_tokenizer, tokenizer_size
    from .distill import check_base_rows

    base = Path(cfg.distill.base)
    if not (base / "config.json").is_file() or not (base / "tokenizer.json").is_file():
        raise RuadaptError(
            f"{cfg.source}: distill.base {base} is not a model directory with config.json and tokenizer.json"
        )
    if cfg.embeddings.new_rows_from <= 0:  # an extension's first new id: len(base tokenizer) (docs/design.md §2)
        cfg.embeddings.new_rows_from = tokenizer_size(load_tokenizer(base, "distill.base"))
    names, _ = embedding_names(model)
    check_base_rows(model, base, cfg.embeddings.new_rows_from, names, cfg.source)


def _check_out(cfg: RunConfig, model: Path) -> None:
    out = cfg.out_path
    if out.resolve() == model.resolve() or model.resolve() in out.resolve().parents:
        raise RuadaptError(f"{out}: out must not be the model or lie inside it")
    if cfg.done:
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RuadaptError(
            f"{out}: out exists and is not empty (and holds no finished run); remove it or choose a new directory"
        )


def embedding_names(model_dir: Path) -> tuple[list[str], bool]:
    """(tensor names of the vocabulary matrices, tied) from the arch table; a one-line error if unknown."""
    from ..io.checkpoint import read_json
    from ..vocab.arch import arch_for_config

    cfg_path = Path(model_dir) / "config.json"
    arch = arch_for_config(read_json(cfg_path), cfg_path)
    return list(arch.vocab_tensor_names()), arch.tied


def load_deepspeed_json(path: Path) -> dict:
    """A DeepSpeed JSON as a dict (the values "auto" are filled at launch by :func:`fill_deepspeed_config`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RuadaptError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RuadaptError(f"{path}: expected a JSON object")
    return data


def fill_deepspeed_config(ds: dict, cfg: RunConfig) -> dict:
    """Replace "auto" with the run's values, so the YAML is the one place a hyperparameter is set. Done once, by
    the launcher, into ``launch.json``; what depends on the ranks (world size, bf16 support of the device) is left
    for :func:`deepspeed_for_world`."""
    ds = json.loads(json.dumps(ds))
    t = cfg.train
    values = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.max_grad_norm,
    }
    for k, v in values.items():
        if ds.get(k, "auto") == "auto":
            ds[k] = v
        elif ds[k] != v:
            raise RuadaptError(f'{cfg.deepspeed}: {k} is {ds[k]} but the YAML says {v}; set it to "auto"')
    zero = ds.get("zero_optimization", {})
    for k, v in list(zero.items()):
        if v == "auto":  # bucket sizes: DeepSpeed's defaults are fine for every size we ship
            del zero[k]
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch AdamW, not DeepSpeed's cpu_adam
    ds.setdefault("steps_per_print", 10**9)
    return ds


def deepspeed_for_world(ds: dict, cfg: RunConfig, *, world_size: int, bf16: bool) -> dict:
    """A filled config (:func:`fill_deepspeed_config`) with the two values only a rank knows.

    train_batch_size is derived (micro × accum × world) rather than taken from the JSON: on CPU the HF
    integration sees world size 1 and computes it wrong, and one number in one place avoids the mismatch.
    """
    ds = json.loads(json.dumps(ds))
    ds["train_batch_size"] = cfg.train.micro_batch_size * cfg.train.grad_accum * world_size
    for key in ("bf16", "fp16"):
        if isinstance(ds.get(key), dict) and ds[key].get("enabled") == "auto":
            ds[key]["enabled"] = bf16 if key == "bf16" else False
    return ds


LAUNCH_JSON = "launch.json"  # in the first run's work dir: what `ruadapt train` resolved, read by every rank


def write_launch(path: Path, runs: list[tuple[RunConfig, dict]], *, resume: bool) -> Path:
    """The one resolved description of a launch: each run's config (``${VAR}``, ``--set`` and a Hub model already
    resolved) with its filled DeepSpeed config. Every check ran in the launcher; the ranks only read this file,
    so N ranks neither re-read the YAMLs nor re-validate them (and cannot see another environment than the
    launcher's). Written to a temporary name and renamed: a rank never reads half a file."""
    data = {
        "format": 1,
        "resume": resume,  # concerns the first run (the interrupted one), not those after it
        "runs": [{"source": cfg.source, "config": cfg.to_dict(), "deepspeed": ds} for cfg, ds in runs],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_launch(path: Path) -> tuple[list[tuple[RunConfig, dict]], bool]:
    """The runs of a ``launch.json`` (:func:`write_launch`) and whether the first must resume. Typed through the
    schema (it is the same dataclass), not validated again: the launcher did that once for every rank."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RuadaptError(f"{path}: cannot read the launch file ({e}); start runs with `ruadapt train`") from None
    if not isinstance(data, dict) or data.get("format") != 1:
        raise RuadaptError(f"{path}: not a launch file of this ruadapt version; start runs with `ruadapt train`")
    runs = []
    for i, run in enumerate(data["runs"]):
        try:
            cfg = build(RunConfig, run["config"], "")
        except RuadaptError as e:
            raise RuadaptError(*(f"{path}: runs[{i}]: {line}" for line in e.lines)) from None
        cfg.source = run["source"]
        runs.append((cfg, run["deepspeed"]))
    return runs, bool(data["resume"])


def validate_deepspeed_config(ds: dict, source: str) -> None:
    """Run DeepSpeed's own config class over a filled config (no process group needed)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(ds)
    except Exception as e:  # DeepSpeed raises assorted types (AssertionError, pydantic, its own)
        raise RuadaptError(f"{source}: DeepSpeed rejects the config ({' '.join(str(e).split())[:300]})") from None
