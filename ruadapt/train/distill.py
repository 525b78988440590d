"""Stage ``distill``: the new rows of a swapped model trained by distillation from the base itself (AweDist,
arXiv 2505.20133), run by ``ruadapt train`` like any CPT run (same launcher, token files, checkpoints, resume,
record, export).

Objective. A training block is the text in the *new* tokenization. The same text in the *base* tokenization is
every new token replaced by its old pieces (:func:`ruadapt.vocab.pieces.build_vocab_map`, the one token → bytes →
pieces function; for an extension this is exactly what the base tokenizer gives, because new merges only join
whole base tokens). Position i of the block (a new token) is aligned with the *last* of its pieces; unchanged
tokens align one to one. The loss is the mean squared error between the model's hidden states (``distill.layer``,
default the last, after the final norm) at aligned positions, over the positions from a block's first new token
on (before it both sequences are the same ids at the same positions, so the states are equal). Only the input
rows of new tokens train (gradient mask on the old rows, no weight decay on the matrix: old rows stay
bit-identical). With ``distill.next_token_weight > 0`` the untied lm_head's new rows also train, by the
next-token loss of the student computed from *detached* hidden states (so it moves the lm_head only); with 0 the
lm_head keeps the swap's rule.

The teacher needs no second model. A swap leaves the body untouched and copies every old row bit-identically,
so "the base on its own pieces" is the student itself run on ids below ``new_rows_from`` — whose rows the mask
keeps equal to the base's for the whole run. The teacher forward is the student's own decoder under
``torch.no_grad`` (no lm_head), which costs no memory for a second copy and works unchanged at 7B-72B, where the
body is sharded however DeepSpeed shards the student. The config check (:func:`check_base_rows`) makes sure the
model's old rows *are* the base's (a model after CPT, or from another base, is refused).

Compute: each step runs the student forward+backward on the block's tokens and the teacher forward on its piece
tokens; :class:`DistillObjective` counts the piece tokens (``teacher_tokens``), which the record reports, so the
stage's cost can be added to CPT's in token units.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RuadaptError
from .loss import chunk_tokens, chunked_next_token_loss, final_softcap

log = logging.getLogger(__name__)


@dataclass
class PieceTable:
    """For every id of the new vocabulary, the base ids it stands for (flat array + offsets): old ids map to
    themselves, new ids to their pieces."""

    flat: np.ndarray  # int64, all pieces one after another
    offsets: np.ndarray  # int64, n_rows + 1
    first_new: int

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def expand(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the base ids of a sequence of new ids, the index in them of each new id's last piece)."""
        ids = np.asarray(ids, dtype=np.int64)
        lens = self.lengths[ids]
        ends = np.cumsum(lens)
        starts = self.offsets[ids]
        # gather every piece: for output position p in token k, flat[starts[k] + (p - (ends[k] - lens[k]))]
        which = np.repeat(np.arange(len(ids)), lens)
        within = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - lens, lens)
        return self.flat[starts[which] + within], ends - 1


def build_piece_table(base_dir: Path, model_dir: Path, first_new: int, rows: int) -> PieceTable:
    """The table from the base's and the swapped model's tokenizers (``tokenizer.json`` of each dir)."""
    from tokenizers import Tokenizer

    from ..io.tokdir import tokenizer_json_path
    from ..vocab.pieces import build_vocab_map

    base = Tokenizer.from_file(str(tokenizer_json_path(Path(base_dir), "distill.base")))
    new = Tokenizer.from_file(str(tokenizer_json_path(Path(model_dir), "model")))
    vmap = build_vocab_map(base, new)
    sources: list[tuple[int, ...]] = []
    for i in range(rows):
        if i < first_new:
            sources.append((i,))
        elif i < vmap.n_rows and vmap.sources[i]:
            sources.append(tuple(vmap.sources[i]))
        else:  # a padding row: never in a token file; map it to itself so a lookup cannot fail
            sources.append((i,))
    bad = [
        (i, s)
        for i, s in enumerate(sources)
        if i >= first_new and vmap.n_rows > i and vmap.sources[i] and any(p >= first_new for p in s)
    ]
    if bad:
        i, s = bad[0]
        raise RuadaptError(
            f"{model_dir}: token {i} maps to base ids {list(s)} at or above new_rows_from {first_new}; "
            "embeddings.new_rows_from must be len(base tokenizer) of an extension"
        )
    lengths = np.fromiter((len(s) for s in sources), dtype=np.int64, count=len(sources))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.fromiter((p for s in sources for p in s), dtype=np.int64, count=int(offsets[-1]))
    return PieceTable(flat, offsets, first_new)


def check_base_rows(
    model_dir: Path, base_dir: Path, first_new: int, names: list[str], where: str, samples: int = 512
) -> None:
    """The model's rows below ``first_new`` must equal the base's (the teacher is the model on those rows): every
    vocabulary matrix, compared on ``samples`` rows spread over the old range (headers + a few rows: seconds at 72B)."""
    from ..io.checkpoint import CheckpointReader

    model, base = CheckpointReader(model_dir), CheckpointReader(base_dir)
    for name in names:
        if name not in model or name not in base:
            continue
        if model.info(name).shape[1:] != base.info(name).shape[1:]:
            raise RuadaptError(f"{where}: {name} of {model_dir} and of distill.base {base_dir} differ in width")
        if base.info(name).shape[0] < first_new:
            raise RuadaptError(
                f"{where}: embeddings.new_rows_from {first_new} is above the {base.info(name).shape[0]} "
                f"rows of {name} in distill.base {base_dir}"
            )
        for r in sorted({int(x) for x in np.linspace(0, first_new - 1, min(samples, first_new))}):
            if not torch.equal(model.get_rows(name, r, r + 1), base.get_rows(name, r, r + 1)):
                raise RuadaptError(
                    f"{where}: row {r} of {name} differs between the model and distill.base {base_dir}; "
                    "distill needs the model straight out of `ruadapt swap` from that base (extend mode), "
                    "before any CPT"
                )
    model.close()
    base.close()


def prepare_distill(model, cfg, zero_stage: int, vocab: dict[str, torch.nn.Parameter]) -> None:
    """Freeze everything but the input matrix (and the untied lm_head with a next-token weight); mask old rows."""
    from .model import mask_old_rows

    if zero_stage >= 3:
        raise RuadaptError(
            f"{cfg.source}: stage distill needs ZeRO stage 0-2 (the gradient mask acts on the whole "
            "matrix); use a ZeRO-2 config, e.g. the recipes' zero2.json"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    names = list(vocab)
    train = names[:1] + (names[1:] if cfg.distill.next_token_weight > 0 else [])
    for n in train:
        vocab[n].requires_grad_(True)
        mask_old_rows(vocab[n], cfg.embeddings.new_rows_from)


class DistillObjective:
    """``loss = objective(engine, batch)``: the hidden-state MSE at aligned positions (+ the optional next-token
    loss on the lm_head). Called on every rank with that rank's micro-batch; deterministic given the batch."""

    def __init__(self, cfg, engine):
        self.cfg, self.d = cfg, cfg.distill
        module = engine.module
        rows = module.get_input_embeddings().weight
        n_rows = int(getattr(rows, "ds_shape", rows.shape)[0])
        self.table = build_piece_table(Path(self.d.base), Path(cfg.model), cfg.embeddings.new_rows_from, n_rows)
        self.max_positions = int(getattr(module.config.get_text_config(), "max_position_embeddings", 0) or 1 << 30)
        self.teacher_tokens = 0  # piece tokens the teacher read on this rank (forward only)
        self.student_tokens = 0

    def teacher_batch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(teacher ids padded on the right, aligned index per student position, loss mask per student position).

        Right padding needs no attention mask (causal: no real position sees it). A teacher sequence longer than
        the model's positions is cut; student positions whose piece fell off are left out of the loss."""
        rows, aligns, masks = [], [], []
        first_new = self.table.first_new
        for row in ids.cpu().numpy():
            t, a = self.table.expand(row)
            t, keep = t[: self.max_positions], a < self.max_positions
            new = np.flatnonzero(row >= first_new)
            from_first_new = np.arange(len(row)) >= (new[0] if len(new) else len(row))
            rows.append(t)
            aligns.append(np.where(keep, a, 0))
            masks.append(keep & from_first_new)
        width = max(len(t) for t in rows)
        teacher = torch.zeros((len(rows), width), dtype=torch.long)
        for k, t in enumerate(rows):
            teacher[k, : len(t)] = torch.from_numpy(t)
        return teacher, torch.from_numpy(np.stack(aligns)), torch.from_numpy(np.stack(masks))

    def __call__(self, engine, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        teacher_ids, align, mask = self.teacher_batch(ids)
        device = ids.device
        teacher_ids, align, mask = teacher_ids.to(device), align.to(device), mask.to(device)
        if engine.module.training:  # count training steps only, not the eval loss's forwards
            self.teacher_tokens += int(teacher_ids.numel())
            self.student_tokens += int(ids.numel())
        with torch.no_grad():
            t_states = engine.module.get_decoder()(
                input_ids=teacher_ids, output_hidden_states=True, use_cache=False
            ).hidden_states[self.d.layer]
        out = engine(input_ids=ids, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        s_states = out.hidden_states[self.d.layer]
        target = torch.gather(t_states, 1, align[..., None].expand(-1, -1, t_states.shape[-1]))
        err = (s_states.float() - target.float()).pow(2).mean(-1)
        m = mask.to(err.dtype)
        # the sum of per-position errors over the batch's counted positions; 0 (with a graph) when none is counted
        loss = (err * m).sum() / m.sum().clamp(min=1.0)
        if self.d.next_token_weight > 0:
            ce = chunked_next_token_loss(
                engine.module.get_output_embeddings(),
                out.hidden_states[-1].detach()[:, :-1],
                ids[:, 1:],
                chunk_tokens(self.cfg.train.logits_mb, engine.module.config.get_text_config().vocab_size),
                final_softcap(engine.module),
            )
            loss = loss + self.d.next_token_weight * ce
        return loss

    def record(self, tokens: int) -> dict[str, Any]:
        """The compute for ``ruadapt_train.json``: the teacher's piece tokens per block token (measured on this rank
        in this launch: the same data mix on every rank), the run's teacher tokens from it, and both together as
        CPT-equivalent tokens (a teacher token counted as a whole CPT token although it is a forward only: an upper
        bound on the cost)."""
        ratio = self.teacher_tokens / max(self.student_tokens, 1)
        teacher = round(tokens * ratio)
        return {
            "teacher_tokens_per_token": round(ratio, 6),
            "student_tokens": tokens,
            "teacher_tokens": teacher,
            "cpt_equivalent_tokens": tokens + teacher,
        }


# ------------------------------------------------------------------------------------------------ a callable path
def distill_config(
    base: Path,
    model: Path,
    corpus: Path,
    out: Path,
    *,
    steps: int,
    block_size: int = 128,
    micro_batch_size: int = 4,
    lr: float = 1e-2,
    seed: int = 42,
    layer: int = -1,
    next_token_weight: float = 0.0,
    deepspeed: Path | None = None,
    max_documents: int = 0,
    eval_blocks: int = 16,
) -> dict:
    """The run YAML (as a dict) of a distillation of ``model``'s new rows from ``base`` on ``corpus``."""
    ds = deepspeed or Path(__file__).resolve().parents[1] / "recipes" / "deepspeed" / "zero2.json"
    return {
        "task": "cpt",
        "model": str(model),
        "out": str(out),
        "deepspeed": str(ds),
        "stage": "distill",
        "block_size": block_size,
        "distill": {"base": str(base), "layer": layer, "next_token_weight": next_token_weight},
        "data": {"train": [str(corpus)], "eval_blocks": eval_blocks, "max_documents": max_documents},
        "train": {
            "micro_batch_size": micro_batch_size,
            "max_steps": steps,
            "lr": lr,
            "warmup_steps": min(5, steps),
            "scheduler": "cosine",
            "min_lr_ratio": 0.1,
            "weight_decay": 0.0,
            "save_steps": max(steps, 1),
            "log_steps": max(1, steps // 10),
            "seed": seed,
            "bf16": "false",
        },
    }


def run_distill(
    base: Path,
    model: Path,
    corpus: Path,
    out: Path,
    *,
    steps: int,
    num_gpus: int = 2,
    master_port: int | None = None,
    **options: Any,
) -> Path:
    """Distil ``model``'s new rows from ``base`` through the real ``ruadapt train`` (DeepSpeed launcher) and return
    ``out``. For scripts (bench/init.py): one more initialisation = the swapped model after ``steps`` steps.
    The YAML is written beside ``out`` (``<out>.yaml``); a finished run is reused, an interrupted one resumed."""
    import yaml

    out = Path(out)
    cfg = distill_config(Path(base), Path(model), Path(corpus), out, steps=steps, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text("# written by ruadapt.train.distill.run_distill\n" + yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "ruadapt", "train", "--config", str(path), "--num-gpus", str(num_gpus)]
    if master_port:
        cmd += ["--master-port", str(master_port)]
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc != 0:
        raise RuadaptError(f"{path}: ruadapt train exited with {rc}")
    return out
