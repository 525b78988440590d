"""``ruadapt inspect``: what a checkpoint's vocabulary looks like, from headers and configs only.

Reads no tensor data, so a 72B checkpoint is described in seconds. It is the first thing to run on a new model:
it shows padded rows (``config.vocab_size`` > ``len(tokenizer)``), the tie setting and the special ids every
later stage must keep.
"""

from __future__ import annotations

from pathlib import Path

from .io.checkpoint import CheckpointReader
from .io.tokdir import chat_template, load_tokenizer, tokenizer_size
from .vocab.arch import arch_for_config


def inspect_model(model_dir: Path) -> dict:
    """A JSON-able description of ``model_dir``'s vocabulary layout."""
    reader = CheckpointReader(model_dir)
    cfg = reader.config
    arch = arch_for_config(cfg, reader.path / "config.json")
    text_cfg = cfg.get("text_config", cfg)
    embed = reader.info(arch.input_name)
    rows = embed.shape[0]
    info: dict = {
        "path": str(reader.path),
        "model_type": arch.model_type,
        "dtype": str(embed.dtype).replace("torch.", ""),
        "hidden_size": embed.shape[1],
        "tied": arch.tied,
        "lm_head_in_checkpoint": arch.output_name in reader,
        "config_vocab_size": text_cfg.get("vocab_size"),
        "embedding_rows": rows,
        "shards": len(reader.shards),
        "tensors": len(reader.names),
        "total_bytes": reader.total_bytes,
        "parameters": sum(_numel(i.shape) for i in reader.infos.values()),
        "embedding_parameters": sum(_numel(reader.info(n).shape) for n in arch.vocab_tensor_names() if n in reader),
        "config_token_ids": {k: cfg.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg},
    }
    if not arch.tied and arch.output_name in reader:
        info["lm_head_rows"] = reader.info(arch.output_name).shape[0]
    if (reader.path / "tokenizer.json").is_file():
        tok = load_tokenizer(reader.path)
        n = tokenizer_size(tok)
        info["tokenizer_tokens"] = n
        info["padded_rows"] = rows - n
        info["special_tokens"] = {t.content: i for i, t in sorted(tok.get_added_tokens_decoder().items()) if t.special}
        info["chat_template"] = chat_template(reader.path) is not None
    else:
        info["tokenizer_tokens"] = None
    return info


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _n(value: int | None) -> str:
    return "not set" if value is None else f"{value:,}"


def format_report(info: dict, max_specials: int = 12) -> str:
    """The human-readable view of :func:`inspect_model`."""
    gib = info["total_bytes"] / 1024**3
    lines = [
        f"{info['path']}",
        f"  model_type      {info['model_type']}   dtype {info['dtype']}   hidden {info['hidden_size']}",
        f"  parameters      {info['parameters']:,} ({info['embedding_parameters']:,} in vocabulary matrices)",
        f"  tied            {info['tied']} (lm_head tensor in checkpoint: {info['lm_head_in_checkpoint']})",
        f"  vocab           config.vocab_size {_n(info['config_vocab_size'])}  matrix rows {info['embedding_rows']:,}"
        + (
            f"  tokenizer {info['tokenizer_tokens']:,}  padded rows {info['padded_rows']:,}"
            if info.get("tokenizer_tokens")
            else "  (no tokenizer.json)"
        ),
        f"  shards          {info['shards']} files, {info['tensors']} tensors, {gib:.2f} GiB",
        f"  config ids      {info['config_token_ids']}",
    ]
    if "special_tokens" in info:
        specials = list(info["special_tokens"].items())
        shown = ", ".join(f"{c}={i}" for c, i in specials[:max_specials])
        more = f" (+{len(specials) - max_specials} more)" if len(specials) > max_specials else ""
        lines.append(f"  special tokens  {len(specials)}: {shown}{more}")
        lines.append(f"  chat template   {'yes' if info['chat_template'] else 'no'}")
    return "\n".join(lines)
