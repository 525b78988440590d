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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import RuadaptError
from ..schema import build

TASKS = ("cpt", "sft")
STAGES = ("embeddings", "lora", "full", "distill")
SCHEDULERS = ("cosine", "linear", "constant")
REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # train.report_to value -> module it needs


@dataclass
class SourceConfig:
    """One training file and its share of the mix. In YAML a plain string is a source with the defaults:
    ``train: [ru.txt]`` or ``train: [{path: ru.txt, weight: 0.9}, {path: en.jsonl.zst, weight: 0.1}]``."""

    SHORTHAND = "path"  # the key a plain string stands for

    path: str
    weight: float = 0.0  # relative share of the sequences trained on; 0 everywhere = each file's natural share (its size)
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
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 42
    save_steps: int = 500  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2
    eval_steps: int = 0  # 0 = eval only at the end
    log_steps: int = 10  # a progress line (loss, lr, tokens/s, elapsed, ETA) every N steps
    report_to: list[str] = field(default_factory=list)  # also write the logged scalars to: tensorboard, wandb
    bf16: str = "auto"  # auto = on when the accelerator supports it; "true"/"false"
    gradient_checkpointing: bool = False


@dataclass
class RunConfig:
    """A whole run as read from YAML (see recipes/*/ for commented examples)."""

    task: str
    model: str  # a directory, or a Hugging Face repo id (resolved by ruadapt.io.hub into its cached snapshot)
    out: str
    data: DataConfig
    deepspeed: str
    revision: str = ""  # branch, tag or commit when model is a repo id; "" = main
    stage: str = "embeddings"
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
                raise RuadaptError(f"{where}: {key} uses ${{{name}}} but the environment variable {name} is not set; "
                                   f"export {name}=..., or give {top} with --set {top}=...")
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
    (CPT stage 2 on stage 1), so that model is checked when its run starts, everything else now."""
    configs = []
    produced: set[Path] = set()
    for p in paths:
        cfg = load_config(p, overrides, check_files=False)
        made_here = Path(cfg.model).resolve() in produced
        if not made_here:
            resolve_model(cfg)
        validate(cfg, check_files=True, skip_model=made_here)
        produced.add(cfg.out_path.resolve())
        configs.append(cfg)
    return configs


def load_config(path: Path | str, overrides: list[str] | tuple[str, ...] = (), *, check_files: bool = True) -> RunConfig:
    """Read, expand and validate a run YAML; every problem is a one-line :class:`RuadaptError`."""
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
        raise RuadaptError(f"{path}: {e}") from None
    cfg.source = str(path)
    if check_files:
        resolve_model(cfg)
    validate(cfg, check_files=check_files)
    return cfg


def resolve_model(cfg: RunConfig) -> None:
    """``model:`` may be a Hugging Face repo id (pinned by ``revision:``): it becomes the snapshot directory in the
    hub cache. That path names the commit, so the config recorded for a resume pins the weights: a relaunch after
    the repo moved on is refused as a changed ``model`` instead of resuming on other weights."""
    from ..io.hub import resolve

    path = resolve(cfg.model, f"{cfg.source or 'config'}: model", revision=cfg.revision or None)
    if path != Path(cfg.model).expanduser():  # a repo id; a local model keeps its spelling, as earlier launches recorded it
        cfg.model = str(path)


def validate(cfg: RunConfig, *, check_files: bool = True, skip_model: bool = False) -> None:
    """Checks that need the values together (and, with ``check_files``, the model and data on disk)."""
    src = cfg.source or "config"
    t = cfg.train

    def need(cond: object, msg: str) -> None:
        if not cond:
            raise RuadaptError(f"{src}: {msg}")

    need(cfg.task in TASKS, f"task {cfg.task!r} is not one of {', '.join(TASKS)}")
    need(cfg.stage in STAGES, f"stage {cfg.stage!r} is not one of {', '.join(STAGES)}")
    need(cfg.block_size >= 8, f"block_size {cfg.block_size} is too small (at least 8)")
    need(t.scheduler in SCHEDULERS, f"train.scheduler {t.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    need(t.bf16 in ("auto", "true", "false"), f"train.bf16 {t.bf16!r} must be auto, true or false")
    for key in ("micro_batch_size", "grad_accum", "max_steps", "save_steps", "log_steps", "keep_checkpoints"):
        need(getattr(t, key) >= 1, f"train.{key} must be at least 1")
    need(t.lr > 0, "train.lr must be positive")
    need(0 <= t.warmup_steps, "train.warmup_steps must not be negative")
    need(len(t.betas) == 2, "train.betas must be two numbers, e.g. [0.9, 0.95]")
    need(cfg.lora.r >= 1, "lora.r must be at least 1")
    need(cfg.data.train, "data.train lists no files")
    weights = [src.weight for src in cfg.data.train]
    need(all(w >= 0 for w in weights), "data.train: a weight must not be negative")
    need(all(w == 0 for w in weights) or all(w > 0 for w in weights),
         "data.train: give every source a weight, or none (then each file counts by its size)")
    for r in t.report_to:
        need(r in REPORTERS, f"train.report_to {r!r} is not one of {', '.join(REPORTERS)}")
        need(importlib.util.find_spec(REPORTERS[r]) is not None,
             f"train.report_to lists {r} but it is not installed; pip install {r} (or remove it from train.report_to)")
    if cfg.embeddings.new_rows_only:
        need(cfg.stage == "embeddings", "embeddings.new_rows_only needs stage: embeddings")
        need(cfg.embeddings.new_rows_from > 0, "embeddings.new_rows_only needs embeddings.new_rows_from (the first new row)")
    if cfg.stage == "distill":
        need(cfg.task == "cpt", "stage distill needs task: cpt (it reads plain text)")
        need(cfg.distill.base, "stage distill needs distill.base (the model the swap started from)")
        need(cfg.distill.next_token_weight >= 0, "distill.next_token_weight must not be negative")
    if not check_files:
        return
    from ..io.corpus import check_corpus

    for section, sources in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        for source in sources:
            try:
                check_corpus(Path(source.path), section)
            except RuadaptError as e:
                raise RuadaptError(f"{src}: {e}") from None
    ds = Path(cfg.deepspeed)
    if not ds.is_file():
        raise RuadaptError(f"{src}: deepspeed config {ds} not found")
    load_deepspeed_json(ds)
    model = Path(cfg.model)
    if skip_model:
        _check_out(cfg, model)
        return
    if not (model / "config.json").is_file():
        raise RuadaptError(f"{src}: model {model} has no config.json (expected a Hugging Face model directory)")
    mcfg = json.loads((model / "config.json").read_text(encoding="utf-8"))
    mcfg = mcfg.get("text_config", mcfg) if "max_position_embeddings" not in mcfg else mcfg
    positions = mcfg.get("max_position_embeddings")
    if positions:
        need(cfg.block_size <= positions,
             f"block_size {cfg.block_size} is above the model's max_position_embeddings {positions} ({model}/config.json)")
    if cfg.stage in ("embeddings", "distill") or (cfg.stage == "lora" and cfg.lora.train_embeddings):
        _check_embeddings(cfg, model)
    rows = mcfg.get("vocab_size")
    if cfg.stage == "distill":
        _check_distill_base(cfg, model)
    if (cfg.embeddings.new_rows_only or cfg.stage == "distill") and rows:
        need(cfg.embeddings.new_rows_from < rows,
             f"embeddings.new_rows_from {cfg.embeddings.new_rows_from} is not below the model's {rows} rows")
    _check_out(cfg, model)


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
        raise RuadaptError(f"{cfg.source}: {what}: the checkpoint {model} has no tensor {names[0]} (embeddings not found)")


def _check_distill_base(cfg: RunConfig, model: Path) -> None:
    """distill.base is a model dir with a tokenizer, and the model's old rows are its rows (the teacher is the
    model itself on those rows: ruadapt/train/distill.py)."""
    from .distill import check_base_rows

    from ..io.tokdir import load_tokenizer, tokenizer_size

    base = Path(cfg.distill.base)
    if not (base / "config.json").is_file() or not (base / "tokenizer.json").is_file():
        raise RuadaptError(f"{cfg.source}: distill.base {base} is not a model directory with config.json and tokenizer.json")
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
        raise RuadaptError(f"{out}: out exists and is not empty (and holds no finished run); remove it or choose a new directory")


def embedding_names(model_dir: Path) -> tuple[list[str], bool]:
    """(tensor names of the vocabulary matrices, tied) from the arch table; a one-line error if unknown."""
    from ..vocab.arch import arch_for_config
    from ..io.checkpoint import read_json

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


def fill_deepspeed_config(ds: dict, cfg: RunConfig, *, world_size: int, bf16: bool) -> dict:
    """Replace "auto" with the run's values, so the YAML is the one place a hyperparameter is set.

    train_batch_size is derived (micro × accum × world) rather than taken from the JSON: on CPU the HF
    integration sees world size 1 and computes it wrong, and one number in one place avoids the mismatch.
    """
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
            raise RuadaptError(f"{cfg.deepspeed}: {k} is {ds[k]} but the YAML says {v}; set it to \"auto\"")
    ds["train_batch_size"] = t.micro_batch_size * t.grad_accum * world_size
    for key in ("bf16", "fp16"):
        if isinstance(ds.get(key), dict) and ds[key].get("enabled") == "auto":
            ds[key]["enabled"] = bf16 if key == "bf16" else False
    zero = ds.get("zero_optimization", {})
    for k, v in list(zero.items()):
        if v == "auto":  # bucket sizes: DeepSpeed's defaults are fine for every size we ship
            del zero[k]
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch AdamW, not DeepSpeed's cpu_adam
    ds.setdefault("steps_per_print", 10**9)
    return ds


def validate_deepspeed_config(ds: dict, source: str) -> None:
    """Run DeepSpeed's own config class over a filled config (no process group needed)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(ds)
    except Exception as e:  # DeepSpeed raises assorted types (AssertionError, pydantic, its own)
        raise RuadaptError(f"{source}: DeepSpeed rejects the config ({' '.join(str(e).split())[:300]})") from None
