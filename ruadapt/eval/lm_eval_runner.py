"""Run lm-eval tasks through lm-eval's Python API on an already-loaded model: ruadapt's shipped ones offline,
and the user's own (``--include-path``) or lm-eval's registry tasks (see :mod:`.task_select`).

The task YAMLs in ``ruadapt/eval/tasks`` carry no data paths; this module loads a YAML with lm-eval's own
loader (which resolves ``!function``), fills in the data path and limits, and hands lm-eval the config dict.
The model is wrapped by ``HFLM`` as an instance, so lm-eval scores exactly the weights, dtype and device that
ruadapt's own measures used, with ``max_length`` = the run's window and the same BOS/EOS prefix token.

Task names:
- ``bpb_<LANG>`` for every ``--text LANG=FILE``: bits per byte via ``loglikelihood_rolling``;
- ``copy_ru``: the Russian copy task (paragraphs from ``--copy-file``, default the ``--text ru`` file);
- any other: a task of an ``--include-path`` directory or of lm-eval's registry, as its YAML defines it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import RuadaptError
from .load import EvalModel

log = logging.getLogger(__name__)

TASK_DIR = Path(__file__).resolve().parent / "tasks"


def available_tasks(text_files: dict[str, Path], copy_file: Path | None) -> dict[str, dict[str, Any]]:
    """Every task this run can offer: name -> {"yaml": ..., "path": data file}."""
    tasks = {f"bpb_{label}": {"yaml": TASK_DIR / "bpb.yaml", "path": path} for label, path in text_files.items()}
    if copy_file is not None:
        tasks["copy_ru"] = {"yaml": TASK_DIR / "copy_ru.yaml", "path": copy_file}
    return tasks


def task_config(
    name: str, spec: dict[str, Any], *, max_lines: int | None = None, max_gen_toks: int | None = None
) -> dict:
    """The task YAML as lm-eval would load it, with this run's name, data path and limits filled in."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's loader: resolves !function relative to the YAML

    cfg = load_yaml(spec["yaml"], resolve_func=True)
    cfg["task"] = name
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    kwargs["path"] = str(Path(spec["path"]).resolve())
    if "max_lines" in kwargs:
        kwargs["max_lines"] = max_lines
    cfg["dataset_kwargs"] = kwargs
    if max_gen_toks is not None and "generation_kwargs" in cfg:
        cfg["generation_kwargs"] = {**cfg["generation_kwargs"], "max_gen_toks": max_gen_toks}
    return cfg


def copy_max_gen_toks(em: EvalModel, cfg: dict, window: int) -> int:
    """Room to repeat the longest paragraph in this model's tokens (1.5× + 16), within half the window."""
    from .tasks.utils import copy_paragraphs

    kw = cfg["dataset_kwargs"]
    paragraphs = copy_paragraphs(kw["path"], kw.get("max_docs", 100), kw.get("min_chars", 40), kw.get("max_chars", 300))
    if not paragraphs:
        raise RuadaptError(
            f"{kw['path']}: no line with {kw.get('min_chars')}..{kw.get('max_chars')} characters for copy_ru"
        )
    longest = max(len(em.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in paragraphs)
    return max(1, min(window // 2, int(1.5 * longest) + 16))


def run_task(
    em: EvalModel,
    name: str,
    spec: dict[str, Any],
    *,
    window: int,
    batch_size: int = 1,
    max_lines: int | None = None,
    limit: int | None = None,
    system_instruction: str | None = None,
) -> dict[str, Any]:
    """Run one task on ``em`` and return ``{"metrics": {...}, "samples": [...], ...}``.

    ``spec`` is a shipped task's (from :func:`available_tasks`) or an include-path/registry task's (from
    :func:`.task_select.resolve_tasks`, checked by :func:`.task_select.check_task_data`). ``generate_until``
    tasks go through the model's chat template when it has one, greedy: copy_ru with its own ``max_gen_toks``
    sizing, any other with its YAML's ``generation_kwargs`` (``do_sample`` forced off, so two runs agree)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    gen_kwargs = None
    tasks: list[str | dict]
    if "source" in spec:  # an include-path or registry task: lm-eval's TaskManager builds it from its YAML
        tasks, manager, data = [name], spec["manager"], spec.get("dataset")
        generates = "generate_until" in spec.get("output_types", [])
        if generates:
            gen_kwargs = {"do_sample": False, "temperature": 0.0}
    else:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        cfg = task_config(name, spec, max_lines=max_lines)
        generates = cfg.get("output_type") == "generate_until"
        if generates:
            cfg = task_config(name, spec, max_lines=max_lines, max_gen_toks=copy_max_gen_toks(em, cfg, window))
        tasks, manager, data = [cfg], TaskManager(include_defaults=False), cfg["dataset_kwargs"]["path"]
    chat = generates and em.has_chat_template
    if generates and not chat:
        log.warning("%s: model %s has no chat template; %s prompts are given as plain text", name, em.name, name)
    lm = HFLM(
        pretrained=em.model,
        tokenizer=em.tokenizer,
        backend="causal",
        max_length=window,
        batch_size=batch_size,
        prefix_token_id=em.prefix_id,
        add_bos_token=False,
    )
    out = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        limit=limit,
        apply_chat_template=chat,
        system_instruction=system_instruction,
        gen_kwargs=gen_kwargs,
        bootstrap_iters=0,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    per_task = {t: _metrics(r) for t, r in out["results"].items()}
    metrics = per_task.get(name) or {}
    if not metrics:  # a tag, or a group without an aggregate: every leaf's metrics, named leaf/metric
        metrics = {f"{t}/{k}": v for t, m in per_task.items() if t != name for k, v in m.items()}
    samples = [
        {
            **({"task": t} if t != name else {}),
            "doc": s["doc"],
            "prompt": s["arguments"][0][0] if s.get("arguments") else None,
            "response": s["resps"][0][0] if s.get("resps") else None,
            "filtered": s.get("filtered_resps"),
            "target": s.get("target"),
        }
        for t, rows in out.get("samples", {}).items()
        for s in rows
    ]
    res = {
        "task": name,
        "data": data,
        "chat_template": chat,
        "max_length": window,
        "metrics": metrics,
        "docs": len(samples),
        "samples": samples,
    }
    if "source" in spec:
        res["source"] = "lm-eval registry" if spec["source"] == "registry" else "--include-path"
        res["yaml"] = str(spec["yaml"]) if spec.get("yaml") else None  # None for a tag (it has no YAML of its own)
        res["system_instruction"] = system_instruction
        if len(per_task) > 1:
            res["subtasks"] = {t: m for t, m in per_task.items() if t != name}
    elif system_instruction is not None:
        res["system_instruction"] = system_instruction
    return res


def _metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{"exact_match,none": 0.5, "exact_match_stderr,none": ...}`` -> ``{"exact_match": 0.5}``; a filter other
    than ``none`` stays in the name (``exact_match,strict-match``) so two filters of one metric do not collide."""
    out = {}
    for k, v in results.items():
        metric, sep, filt = k.partition(",")
        if sep and not metric.endswith("_stderr") and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[metric if filt == "none" else k] = v
    return out
