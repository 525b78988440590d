"""The ``ruadapt eval`` stage: check every input, load the models once, measure, write the report atomically.

Everything that can be wrong with the input (model dir without tokenizer, empty text, unknown task or device)
is checked before any model is loaded, so a bad run fails in a second with a one-line error.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..errors import require
from ..io.chatdata import read_chats
from ..io.outdir import atomic_output_dir, check_output_dir
from ..io.record import StageRecord
from ..vocab.arch import model_fingerprint
from .bpb import chat_bpb, common_window, text_bpb
from .data import read_lines
from .lm_eval_runner import available_tasks, run_task
from .load import check_device, check_model_dir, load_model, resolve_dtype
from .report import write_report
from .speed import MODES, measure_speed, select_prompts
from .start import start_diagnostics
from .task_select import check_include_paths, check_task_data, resolve_tasks

log = logging.getLogger(__name__)


def run_eval(
    models: dict[str, Path],
    out: Path,
    *,
    texts: dict[str, Path] | None = None,
    chats: dict[str, Path] | None = None,
    prompts: Path | None = None,
    tasks: list[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    window: int = 1024,
    stride: int | None = None,
    batch_tokens: int = 2048,
    max_lines: int | None = None,
    speed_prompts: int = 8,
    new_tokens: int = 64,
    speed_mode: str = "greedy",
    speed_rounds: int = 5,
    copy_file: Path | None = None,
    task_limit: int | None = None,
    task_batch_size: int = 1,
    include_paths: list[Path] | None = None,
    system_instruction: str | None = None,
    start_base: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``models`` (name -> dir) and write report.json/report.md/plots + ruadapt_eval.json into ``out``.

    A measure that ran but produced no number (NaN bits per byte from an overflowing dtype, an lm-eval task that
    scored no document) does not stop the others: it is listed in ``report["failures"]`` (see
    :func:`failed_measures`), and ``ruadapt eval`` exits 1 when that list is not empty.

    ``start_base``: the name of the model the others were swapped from; each other model then gets the start
    diagnostics of :mod:`.start` on every ``--text`` (``report["start"]``), its new tokens being those this
    model's tokenizer lacks."""
    texts, chats, tasks = dict(texts or {}), dict(chats or {}), list(tasks or [])
    include_paths = list(include_paths or [])
    options = {k: v for k, v in locals().items() if k not in ("models", "out")}
    # ---- check everything before loading anything
    require(models, "--model: give at least one NAME=DIR")
    require(
        start_base is None or start_base in models,
        f"--start-base {start_base}: not one of the --model names ({', '.join(models)})",
    )
    require(start_base is None or texts, f"--start-base {start_base}: give --text LANG=FILE to measure the start on")
    device = check_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    require(speed_mode in MODES, f"--speed-mode {speed_mode}: unknown; use {' or '.join(MODES)}")
    require(speed_rounds >= 1, f"--speed-rounds {speed_rounds}: must be at least 1")
    require(
        new_tokens != 1 or speed_prompts == 0,
        "--new-tokens 1: the speed test times the decoding steps after the first token; give at least 2",
    )
    for label in chats:
        require(label not in texts, f"--chat {label}: the name is also used by --text; names must differ")
    readers = {name: check_model_dir(name, path) for name, path in models.items()}
    text_lines = {label: read_lines(path, max_lines=max_lines, what=f"--text {label}") for label, path in texts.items()}
    chat_data = {label: read_chats(path, max_lines=max_lines) for label, path in chats.items()}
    if copy_file is None and "ru" in texts:
        copy_file = texts["ru"]
    include_paths = check_include_paths(include_paths)
    require(system_instruction is None or system_instruction.strip(), "--system-instruction: empty text")
    require(task_batch_size >= 1, f"--task-batch-size {task_batch_size}: must be at least 1")
    if (include_paths or system_instruction is not None) and not tasks:
        log.warning("--include-path / --system-instruction without --tasks: no lm-eval task is run")
    offered = resolve_tasks(tasks, available_tasks(texts, copy_file), include_paths)
    tasks = list(offered)
    if "copy_ru" in tasks:
        assert copy_file is not None  # copy_ru is offered only with a copy file
        read_lines(copy_file, what="--copy-file")
    prompt_lines: list[str] = []
    if speed_prompts > 0 and new_tokens > 0:
        if prompts is not None:
            prompt_lines = read_lines(prompts, what="--prompts")
        elif "ru" in text_lines:
            prompt_lines = text_lines["ru"]
        else:
            log.warning("no --prompts and no --text ru: generation speed is not measured")
    require(
        text_lines or chat_data or prompt_lines or tasks,
        "nothing to measure: give --text LANG=FILE, --chat LANG=FILE.jsonl, --prompts FILE or --tasks",
    )
    inputs = [r.path for r in readers.values()] + list(texts.values()) + list(chats.values())
    inputs += [p for p in (prompts, copy_file) if p is not None]
    check_output_dir(out, inputs)
    check_task_data(offered)  # reads the datasets of include-path and registry tasks: after the cheap checks

    record = StageRecord("eval", options)
    for name, reader in readers.items():
        record.input_model(f"model:{name}", reader, model_fingerprint(reader))
    for label, path in {**texts, **chats}.items():
        record.input_file(f"data:{label}", path)
    for name, spec in offered.items():
        if spec.get("source") == "include" and spec.get("yaml"):
            record.input_file(f"task:{name}", spec["yaml"])

    # ---- load
    with record.timed("load"):
        loaded = [load_model(name, path, device=device, dtype=torch_dtype) for name, path in models.items()]
    window = common_window(loaded, window)
    stride = stride or window
    require(1 <= stride <= window, f"--stride {stride}: must be between 1 and the window ({window})")
    report: dict[str, Any] = {
        "device": device,
        "models": {em.name: em.facts for em in loaded},
        "window_policy": {
            "window": window,
            "stride": stride,
            "first_token_context": "BOS, or EOS when the tokenizer has no BOS",
            "same_as_lm_eval_loglikelihood_rolling": stride == window,
        },
        "bpb": {em.name: {} for em in loaded},
    }

    # ---- bits per byte (and the start diagnostics of models swapped from --start-base, from the same pass)
    starts = start_setup(loaded, start_base)
    if starts:
        report["start"] = {"base": start_base, "models": {name: {} for name in starts}}
    with record.timed("bpb"):
        for em in loaded:
            for label, lines in text_lines.items():
                r = text_bpb(
                    em,
                    lines,
                    window=window,
                    stride=stride,
                    batch_tokens=batch_tokens,
                    desc=f"bpb {label}",
                    per_token=em.name in starts,
                )
                report["bpb"][em.name][label] = {"kind": "text", "file": str(texts[label]), **r.summary()}
                if em.name in starts:
                    diag = start_diagnostics(r, *starts[em.name])
                    report["start"]["models"][em.name][label] = {"bpb": r.bpb, **diag}
                log.info("%s %s: %.4f bits/byte, %.3f chars/token", em.name, label, r.bpb, r.chars / r.tokens)
            for label, convs in chat_data.items():
                r = chat_bpb(
                    em,
                    convs,
                    window=window,
                    stride=stride,
                    batch_tokens=batch_tokens,
                    source=f"--chat {label}",
                    desc=f"bpb {label}",
                )
                report["bpb"][em.name][label] = {"kind": "chat", "file": str(chats[label]), **r.summary()}
                log.info("%s %s (assistant turns): %.4f bits/byte", em.name, label, r.bpb)
        for name, per_label in (report.get("start") or {}).get("models", {}).items():
            for label, diag in per_label.items():  # the gap to the base's own bits per byte on the same bytes
                diag["base_bpb"] = report["bpb"][start_base][label]["bpb"]
                diag["gap"] = diag["bpb"] / diag["base_bpb"] - 1

    # ---- speed
    if prompt_lines:
        with record.timed("speed"):
            chosen = select_prompts(prompt_lines, loaded, speed_prompts, new_tokens=new_tokens, mode=speed_mode)
            report["speed"] = measure_speed(loaded, chosen, new_tokens=new_tokens, mode=speed_mode, rounds=speed_rounds)
            report["speed"]["prompt_source"] = str(prompts or texts.get("ru"))

    # ---- lm-eval
    samples: dict[str, dict[str, list]] = {}
    if tasks:
        report["lm_eval"] = {em.name: {} for em in loaded}
        with record.timed("lm_eval"):
            for em in loaded:
                for task in tasks:
                    res = run_task(
                        em,
                        task,
                        offered[task],
                        window=window,
                        max_lines=max_lines,
                        limit=task_limit,
                        system_instruction=system_instruction,
                        batch_size=task_batch_size,
                    )
                    samples.setdefault(em.name, {})[task] = res.pop("samples")
                    report["lm_eval"][em.name][task] = res
        report["bpb_agreement"] = _agreement(report, task_limit)
    report["failures"] = failed_measures(report)  # the command prints them and exits 1

    with atomic_output_dir(out, inputs) as tmp:
        report["files"] = write_report(report, tmp)
        for name, per_task in samples.items():
            for task, rows in per_task.items():
                path = tmp / "lm_eval_samples" / name / f"{task}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        record.update({k: v for k, v in report.items() if k != "files"})  # device and failures included
        record.write(tmp)
    log.info("wrote %s", Path(out))
    return report


def start_setup(loaded: list, start_base: str | None) -> dict[str, tuple[set[int], Any]]:
    """Model name → (its new token ids, its token codec) for every model but ``start_base``."""
    if start_base is None:
        return {}
    from ..vocab.pieces import TokenCodec
    from .start import new_token_ids

    base = next(em for em in loaded if em.name == start_base).tokenizer.backend_tokenizer
    return {
        em.name: (new_token_ids(base, em.tokenizer.backend_tokenizer), TokenCodec(em.tokenizer.backend_tokenizer))
        for em in loaded
        if em.name != start_base
    }


def failed_measures(report: dict) -> list[str]:
    """One line for every requested measure that produced no finite number: what, for which model, and the value.

    Each of them is an error of the run, not a result: a NaN or infinite bits per byte (logits overflowed in
    float16, broken weights), a speed without a finite rate, an lm-eval task that scored no document or returned
    no metric or a non-finite one."""

    def finite(x: Any) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)

    out: list[str] = []
    for name, per_label in (report.get("bpb") or {}).items():
        dtype = (report.get("models") or {}).get(name, {}).get("dtype", "?")
        for label, r in per_label.items():
            if not finite(r.get("bpb")):
                out.append(f"bits per byte of model {name} on {label} is {r.get('bpb')} (dtype {dtype})")
    for name, s in ((report.get("speed") or {}).get("models") or {}).items():
        bad = [k for k in ("chars_per_s", "tokens_per_s", "decode_tokens_per_s") if not finite(s.get(k))]
        if bad:
            out.append(f"speed of model {name}: {', '.join(f'{k} is {s.get(k)}' for k in bad)}")
    for name, per_task in (report.get("lm_eval") or {}).items():
        for task, res in per_task.items():
            where = f"lm-eval task {task} of model {name}"
            if not res.get("docs"):
                out.append(f"{where} scored no documents")
            elif not res.get("metrics"):
                out.append(f"{where} returned no metric")
            else:
                bad = [f"{k} is {v}" for k, v in res["metrics"].items() if not finite(v)]
                if bad:
                    out.append(f"{where}: {', '.join(bad)}")
    return out


def _agreement(report: dict, task_limit: int | None) -> dict:
    """lm-eval's bits_per_byte vs ours for every bpb_<LANG> task, when both scored the same lines and windows."""
    if task_limit is not None or not report["window_policy"]["same_as_lm_eval_loglikelihood_rolling"]:
        return {}
    out: dict[str, dict] = {}
    for name, per_task in report.get("lm_eval", {}).items():
        for task, res in per_task.items():
            label = task[len("bpb_") :] if task.startswith("bpb_") else None
            ours = report["bpb"].get(name, {}).get(label)
            if label is None or ours is None or "bits_per_byte" not in res["metrics"]:
                continue
            theirs = res["metrics"]["bits_per_byte"]
            out.setdefault(name, {})[label] = {
                "ruadapt": ours["bpb"],
                "lm_eval": theirs,
                "abs_diff": abs(ours["bpb"] - theirs),
            }
    return out
