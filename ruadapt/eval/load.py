"""Load a model directory for evaluation, with every problem reported as a one-line error before any work.

The model is loaded once and shared by bits per byte, speed and lm-eval (which wraps the same instance), so
all three measure the same weights in the same dtype on the same device.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from ..errors import RuadaptError
from ..io.checkpoint import CheckpointReader
from ..io.tokdir import chat_template, tokenizer_json_path
from ..vocab.arch import model_fingerprint

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EvalModel:
    """A loaded model with its tokenizer and the facts every measure needs."""

    name: str
    path: Path
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    prefix_id: int  # conditions the first token of a text: BOS, or EOS when there is no BOS
    rows: int  # embedding matrix rows (may exceed len(tokenizer))
    max_positions: int | None
    has_chat_template: bool
    facts: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(device: str) -> str:
    """``auto`` = ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given. The default is ``auto`` so
    that an eval on a GPU node does not silently run a 7B model on its CPU for hours."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device: str) -> str:
    """The device to use: ``auto`` resolved, else ``cpu``, ``cuda`` or ``cuda:N``, and CUDA must be there if asked
    for."""
    device = resolve_device(device)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device or ""):
        raise RuadaptError(f"--device {device}: unknown device; use auto, cpu or cuda (or cuda:N)")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuadaptError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise RuadaptError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` = float32 on CPU (exact sums for bpb), bfloat16 on CUDA."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise RuadaptError(f"--dtype {dtype}: unknown; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_model_dir(name: str, path: Path) -> CheckpointReader:
    """Everything about a model dir that can be checked without loading weights (tokenizer, config, shards)."""
    option = f"--model {name}"
    path = Path(path).expanduser()
    if not path.is_dir():
        raise RuadaptError(f"{path}: {option} directory not found")
    tokenizer_json_path(path, option)
    return CheckpointReader(path)


def load_model(name: str, path: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> EvalModel:
    """Load tokenizer and model (safetensors only, no remote code) and check they fit each other."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reader = check_model_dir(name, path)
    path = reader.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises many types for broken tokenizer files
        raise RuadaptError(f"{path}: --model {name} tokenizer does not load ({type(e).__name__}: {e})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    except Exception as e:
        raise RuadaptError(f"{path}: --model {name} does not load as a causal LM ({type(e).__name__}: {e})") from None
    model.to(device).eval()  # type: ignore[arg-type]  # transformers types the @wraps-decorated .to as taking a model
    rows = cast(torch.Tensor, model.get_input_embeddings().weight).shape[0]  # Module.__getattr__: Tensor | Module
    if len(tokenizer) > rows:
        raise RuadaptError(
            f"{path}: --model {name} tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding rows; "
            "run 'ruadapt swap' to give the model this tokenizer"
        )
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise RuadaptError(
            f"{path}: --model {name} tokenizer has neither a BOS nor an EOS token to condition the first token on"
        )
    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    max_positions = getattr(text_cfg, "max_position_embeddings", None)
    facts = {
        "path": str(path),
        "fingerprint": model_fingerprint(reader),
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "tokenizer_size": len(tokenizer),
        "embedding_rows": rows,
        "prefix_token": tokenizer.convert_ids_to_tokens(prefix),
        "max_position_embeddings": max_positions,
        "chat_template": chat_template(path) is not None,
    }
    log.info(
        "loaded %s from %s: %s parameters, %s tokens, %s rows, %s on %s",
        name,
        path,
        facts["parameters"],
        len(tokenizer),
        rows,
        facts["dtype"],
        device,
    )
    return EvalModel(name, path, model, tokenizer, prefix, rows, max_positions, bool(tokenizer.chat_template), facts)
