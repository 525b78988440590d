"""Bits per byte (docs/design.md §5): Σ token NLL / (ln 2 · Σ UTF-8 bytes of the scored text).

Bytes do not depend on the tokenizer, so models with different vocabularies are compared on the same text.
Every token of a text is scored; the first is conditioned on BOS (EOS when the tokenizer has no BOS).

Window policy (one for every model in a run): a text longer than the window is scored in windows of at most
``window`` input tokens. The first window scores the first ``window`` tokens; each next window moves ``stride``
tokens on and scores only tokens not yet scored, conditioned on the ``window`` tokens before them (less at the
start). With ``stride == window`` (the default) this is exactly lm-eval's ``loglikelihood_rolling`` (disjoint
windows, the last one right-aligned), so our number and the lm-eval task's agree; a smaller stride gives every
token more context at more compute.

Chat data: only the assistant turns are scored, each conditioned on the conversation before it rendered with
the model's own chat template (and the generation prompt); the bytes are those of the assistant content.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import RuadaptError
from ..vocab.measure import measure
from .load import EvalModel

log = logging.getLogger(__name__)


@dataclass
class Window:
    """One forward pass: ``inputs`` go in, the last ``len(targets)`` positions predict ``targets``."""

    doc: int
    inputs: list[int]
    targets: list[int]


def plan_windows(context: Sequence[int], target: Sequence[int], window: int, stride: int, doc: int = 0) -> list[Window]:
    """Windows that score every token of ``target`` exactly once, conditioned on ``context`` (≥ 1 token) and on
    the target tokens before it, within ``window`` input tokens (see the module docstring for the policy)."""
    if not context:
        raise ValueError("context must hold at least one token (BOS/EOS or a rendered prompt)")
    if not 1 <= stride <= window:
        raise ValueError(f"stride {stride} must be in 1..window ({window})")
    seq = list(context) + list(target)
    c, n = len(context), len(seq)
    if n == c:
        return []
    out: list[Window] = []
    start, end = c, min(n, max(window + 1, c + stride))
    while True:
        out.append(Window(doc, seq[max(0, end - 1 - window) : end - 1], seq[start:end]))
        if end == n:
            return out
        start, end = end, min(n, end + stride)


def score_windows(
    em: EvalModel,
    windows: list[Window],
    *,
    batch_tokens: int = 4096,
    desc: str = "bpb",
    per_token: dict[int, tuple[list[float], list[int]]] | None = None,
) -> list[float]:
    """Summed NLL (nats, float64) of each window's targets. Windows are batched by length (right padding, so the
    real positions see exactly the unpadded computation) within ``batch_tokens`` padded tokens.

    ``per_token``: when given, filled with window index → (NLL of each target, the model's greedy prediction at
    that position), for the start diagnostics of :mod:`.start` (same forward pass, no second scoring)."""
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].inputs))
    nll = [0.0] * len(windows)
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * len(windows[batches[-1][0]].inputs) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    device = em.device
    bar = tqdm(total=sum(len(w.targets) for w in windows), desc=f"{desc} {em.name}", unit="tok", leave=False)
    with torch.inference_mode():
        for batch in batches:
            width = len(windows[batch[0]].inputs)
            ids = torch.full((len(batch), width), em.prefix_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                inp = windows[i].inputs
                ids[row, : len(inp)] = torch.tensor(inp)
                mask[row, : len(inp)] = 1
            logits = em.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for row, i in enumerate(batch):
                w = windows[i]
                n, k = len(w.inputs), len(w.targets)
                logp = torch.log_softmax(logits[row, n - k : n].float(), dim=-1)
                tgt = torch.tensor(w.targets, device=logp.device).unsqueeze(1)
                tok_nll = -logp.gather(1, tgt).squeeze(1).double()
                nll[i] = float(tok_nll.sum())
                if per_token is not None:
                    per_token[i] = (tok_nll.tolist(), logp.argmax(dim=-1).tolist())
                bar.update(k)
            del logits
    bar.close()
    return nll


@dataclass
class BpbResult:
    """Totals over a text (or the assistant turns of a chat file) for one model. ``counts`` holds the
    chars/bytes/words/tokens measures of ``ruadapt.vocab.measure.measure`` (the project's one definition of
    chars/token) over exactly the tokens that were scored."""

    docs: int
    nll_nats: float
    windows: int
    counts: dict
    doc_nll: list[float] = field(default_factory=list, repr=False)
    # with ``per_token``: each document's target ids, their NLLs (nats) and the greedy prediction at each
    token_targets: list[list[int]] | None = field(default=None, repr=False)
    token_nll: list[list[float]] | None = field(default=None, repr=False)
    token_argmax: list[list[int]] | None = field(default=None, repr=False)

    @property
    def chars(self) -> int:
        return self.counts["chars"]

    @property
    def bytes(self) -> int:
        return self.counts["bytes"]

    @property
    def tokens(self) -> int:
        return self.counts["tokens"]

    @property
    def bpb(self) -> float:
        return self.nll_nats / (math.log(2) * self.bytes)

    def summary(self) -> dict:
        return {
            "bpb": self.bpb,
            "nll_nats": self.nll_nats,
            "docs": self.docs,
            "windows": self.windows,
            **{k: v for k, v in self.counts.items() if k != "lines"},
        }


def _result(
    em: EvalModel,
    texts: Sequence[str],
    targets: Sequence[Sequence[int]],
    windows: list[Window],
    nll: list[float],
    per_token: dict[int, tuple[list[float], list[int]]] | None = None,
) -> BpbResult:

    doc_nll = [0.0] * len(texts)
    for w, x in zip(windows, nll):
        doc_nll[w.doc] += x
    result = BpbResult(
        docs=len(texts),
        nll_nats=math.fsum(doc_nll),
        windows=len(windows),
        counts=measure(em.tokenizer.backend_tokenizer, list(texts), [list(t) for t in targets]),
        doc_nll=doc_nll,
    )
    if per_token is not None:  # a document's windows score its targets in order, each exactly once
        result.token_targets = [list(t) for t in targets]
        result.token_nll = [[] for _ in texts]
        result.token_argmax = [[] for _ in texts]
        for i, w in enumerate(windows):
            result.token_nll[w.doc] += per_token[i][0]
            result.token_argmax[w.doc] += per_token[i][1]
    return result


def encode(em: EvalModel, text: str) -> list[int]:
    """Tokens of ``text`` on its own (no BOS/EOS added): the chars/token count of docs/design.md §5."""
    return em.tokenizer(text, add_special_tokens=False)["input_ids"]


def text_bpb(
    em: EvalModel,
    lines: Sequence[str],
    *,
    window: int,
    stride: int | None = None,
    batch_tokens: int = 4096,
    desc: str = "bpb",
    per_token: bool = False,
) -> BpbResult:
    """Bits per byte of ``lines`` (each a document), every token scored, the first after BOS/EOS.
    ``per_token``: also keep each token's NLL and the greedy prediction (``BpbResult.token_*``)."""
    stride = stride or window
    targets = [encode(em, line) for line in lines]
    windows = [w for d, t in enumerate(targets) for w in plan_windows([em.prefix_id], t, window, stride, d)]
    kept: dict[int, tuple[list[float], list[int]]] | None = {} if per_token else None
    nll = score_windows(em, windows, batch_tokens=batch_tokens, desc=desc, per_token=kept)
    return _result(em, lines, targets, windows, nll, kept)


def chat_prompt_ids(em: EvalModel, messages: list[dict[str, str]]) -> list[int]:
    """The conversation so far rendered with the model's chat template plus its assistant generation prompt."""
    text = em.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return em.tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_bpb(
    em: EvalModel,
    chats: Sequence[list[dict[str, str]]],
    *,
    window: int,
    stride: int | None = None,
    batch_tokens: int = 4096,
    source: str = "--chat",
    desc: str = "chat bpb",
) -> BpbResult:
    """Bits per byte of the assistant turns of ``chats``, each conditioned on the conversation before it."""
    if not em.has_chat_template:
        raise RuadaptError(f"{source}: model {em.name} ({em.path}) has no chat template; chat bpb needs one")
    stride = stride or window
    texts: list[str] = []
    targets: list[list[int]] = []
    windows: list[Window] = []
    for n, messages in enumerate(chats, 1):
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or not m["content"]:
                continue
            try:
                context = chat_prompt_ids(em, messages[:i])
            except Exception as e:  # jinja raises for role orders a template does not accept
                raise RuadaptError(
                    f"{source}: conversation {n}: chat template of model {em.name} fails ({e})"
                ) from None
            target = encode(em, m["content"])
            windows += plan_windows(context or [em.prefix_id], target, window, stride, len(texts))
            texts.append(m["content"])
            targets.append(target)
    return _result(em, texts, targets, windows, score_windows(em, windows, batch_tokens=batch_tokens, desc=desc))


def common_window(models: Iterable[EvalModel], requested: int) -> int:
    """One window for every model: the requested size, capped by the shortest ``max_position_embeddings``."""
    window = requested
    for em in models:
        if em.max_positions:
            window = min(window, int(em.max_positions))
    if window < 2:
        raise RuadaptError(f"--window {requested}: must be at least 2 tokens")
    return window
