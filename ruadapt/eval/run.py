"""The ``ruadapt eval`` stage: check every input, load the models once, measure, write the report atomically.

The stage has the shape of the others (docs/stages.md): :class:`ruadapt.options.EvalOptions` says what to
measure; :func:`plan_eval` checks everything that can be wrong with the input (model dir without tokenizer, empty
text, unknown task or device) and reads the texts before any model is loaded, so a bad run fails in a second with
a one-line error; :func:`run_eval` loads the models once and runs the steps, each a function: bits per byte
(:func:`measure_bpb`), generation speed (:func:`measure_generation_speed`), lm-eval tasks (:func:`measure_tasks`)
and the atomic write of the report and record (:func:`write_eval`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import require
from ..io.chatdata import read_chats
from ..io.checkpoint import CheckpointReader
from ..io.outdir import atomic_output_dir, check_output_dir
from ..io.record import StageRecord
from ..options import EvalOptions
from ..vocab.arch import model_fingerprint
from .bpb import chat_bpb, common_window, text_bpb
from .data import read_lines
from .lm_eval_runner import available_tasks, run_task
from .load import EvalModel, check_device, check_model_dir, load_model, resolve_dtype
from .report import write_report
from .speed import measure_speed, select_prompts
from .start import start_diagnostics
from .task_select import check_include_paths, check_task_data, resolve_tasks

log = logging.getLogger(__name__)


@dataclass
class EvalPlan:
    """What ``ruadapt eval`` will measure, every input checked and read before any model is loaded."""

    options: EvalOptions
    device: str  # resolved: cpu, cuda or cuda:N
    torch_dtype: torch.dtype
    readers: dict[str, CheckpointReader]  # model name -> its checked checkpoint
    text_lines: dict[str, list[str]]  # --text label -> its lines
    chat_data: dict[str, list]  # --chat label -> its conversations
    copy_file: Path | None  # copy_ru's paragraphs: --copy-file, else --text ru
    offered: dict[str, dict[str, Any]]  # lm-eval task name -> spec, in the order of --tasks
    prompt_lines: list[str]  # speed prompts; empty: no speed test
    inputs: list[Path]  # what the output folder must not be or lie in

    @property
    def tasks(self) -> list[str]:
        """The lm-eval tasks to run, in the order given."""
        return list(self.offered)


def plan_eval(options: EvalOptions) -> EvalPlan:
    """Check every input and read the texts, chats and prompts; load no model and write nothing.

    Everything that can be wrong with the input (model dir without tokenizer, empty text, unknown task or device)
    fails here, in a second, with a one-line error; the task datasets are read last, after the cheap checks."""
    options.check()
    device = check_device(options.device)
    torch_dtype = resolve_dtype(options.dtype, device)
    texts, chats, max_lines = dict(options.texts), dict(options.chats), options.max_lines
    readers = {name: check_model_dir(name, path) for name, path in options.models.items()}
    text_lines = {label: read_lines(path, max_lines=max_lines, what=f"--text {label}") for label, path in texts.items()}
    chat_data = {label: read_chats(path, max_lines=max_lines) for label, path in chats.items()}
    copy_file = options.copy_file
    if copy_file is None and "ru" in texts:
        copy_file = texts["ru"]
    include_paths = check_include_paths(list(options.include_paths))
    if (include_paths or options.system_instruction is not None) and not options.tasks:
        log.warning("--include-path / --system-instruction without --tasks: no lm-eval task is run")
    offered = resolve_tasks(list(options.tasks), available_tasks(texts, copy_file), include_paths)
    if "copy_ru" in offered:
        assert copy_file is not None  # copy_ru is offered only with a copy file
        read_lines(copy_file, what="--copy-file")
    prompt_lines = speed_prompt_lines(options, text_lines)
    require(
        text_lines or chat_data or prompt_lines or offered,
        "nothing to measure: give --text LANG=FILE, --chat LANG=FILE.jsonl, --prompts FILE or --tasks",
    )
    inputs = [r.path for r in readers.values()] + list(texts.values()) + list(chats.values())
    inputs += [p for p in (options.prompts, copy_file) if p is not None]
    check_output_dir(options.out, inputs)
    check_task_data(offered)  # reads the datasets of include-path and registry tasks: after the cheap checks
    return EvalPlan(
        options=options,
        device=device,
        torch_dtype=torch_dtype,
        readers=readers,
        text_lines=text_lines,
        chat_data=chat_data,
        copy_file=copy_file,
        offered=offered,
        prompt_lines=prompt_lines,
        inputs=inputs,
    )


def speed_prompt_lines(options: EvalOptions, text_lines: dict[str, list[str]]) -> list[str]:
    """The speed test's prompts: ``--prompts``, else the lines of ``--text ru``; none when the test is off (or,
    with a warning, when neither is given)."""
    if options.speed_prompts <= 0 or options.new_tokens <= 0:
        return []
    if options.prompts is not None:
        return read_lines(options.prompts, what="--prompts")
    if "ru" in text_lines:
        return text_lines["ru"]
    log.warning("no --prompts and no --text ru: generation speed is not measured")
    return []


@dataclass
class EvalRun:
    """The loaded models and what is measured on them: the report as it grows, the lm-eval samples, the record."""

    plan: EvalPlan
    loaded: list[EvalModel]
    window: int  # the --window every model can take
    stride: int
    report: dict[str, Any]
    record: StageRecord
    samples: dict[str, dict[str, list]] = field(default_factory=dict)  # model -> task -> lm-eval's rows


def run_eval(plan: EvalPlan) -> dict[str, Any]:
    """Load the models once, measure and write report.json/report.md/plots + ruadapt_eval.json into the output.

    A measure that ran but produced no number (NaN bits per byte from an overflowing dtype, an lm-eval task that
    scored no document) does not stop the others: it is listed in ``report["failures"]`` (see
    :func:`failed_measures`), and ``ruadapt eval`` exits 1 when that list is not empty."""
    run = load_models(plan)
    measure_bpb(run)
    measure_generation_speed(run)
    measure_tasks(run)
    run.report["failures"] = failed_measures(run.report)  # the command prints them and exits 1
    write_eval(run)
    return run.report


def eval_record(plan: EvalPlan) -> StageRecord:
    """The stage record: the options as given, and every model, data file and task YAML as an input."""
    record = StageRecord("eval", plan.options.record_options())
    for name, reader in plan.readers.items():
        record.input_model(f"model:{name}", reader, model_fingerprint(reader))
    for label, path in {**plan.options.texts, **plan.options.chats}.items():
        record.input_file(f"data:{label}", path)
    for name, spec in plan.offered.items():
        if spec.get("source") == "include" and spec.get("yaml"):
            record.input_file(f"task:{name}", spec["yaml"])
    return record


def load_models(plan: EvalPlan) -> EvalRun:
    """Start the record, load every model, fix the window every model can take and the stride, and start the
    report with the device, the models' facts and the window policy."""
    o = plan.options
    record = eval_record(plan)
    with record.timed("load"):
        loaded = [load_model(name, path, device=plan.device, dtype=plan.torch_dtype) for name, path in o.models.items()]
    window = common_window(loaded, o.window)
    stride = o.stride or window
    require(1 <= stride <= window, f"--stride {stride}: must be between 1 and the window ({window})")
    report: dict[str, Any] = {
        "device": plan.device,
        "models": {em.name: em.facts for em in loaded},
        "window_policy": {
            "window": window,
            "stride": stride,
            "first_token_context": "BOS, or EOS when the tokenizer has no BOS",
            "same_as_lm_eval_loglikelihood_rolling": stride == window,
        },
        "bpb": {em.name: {} for em in loaded},
    }
    return EvalRun(plan=plan, loaded=loaded, window=window, stride=stride, report=report, record=record)


def measure_bpb(run: EvalRun) -> None:
    """Bits per byte of every model on every ``--text`` and ``--chat`` (``report["bpb"]``), and from the same
    pass the start diagnostics of the models swapped from ``--start-base`` (``report["start"]``), each with its
    gap to the base's own bits per byte on the same bytes."""
    plan, report, o = run.plan, run.report, run.plan.options
    starts = start_setup(run.loaded, o.start_base)
    if starts:
        report["start"] = {"base": o.start_base, "models": {name: {} for name in starts}}
    with run.record.timed("bpb"):
        for em in run.loaded:
            for label, lines in plan.text_lines.items():
                r = text_bpb(
                    em,
                    lines,
                    window=run.window,
                    stride=run.stride,
                    batch_tokens=o.batch_tokens,
                    desc=f"bpb {label}",
                    per_token=em.name in starts,
                )
                report["bpb"][em.name][label] = {"kind": "text", "file": str(o.texts[label]), **r.summary()}
                if em.name in starts:
                    diag = start_diagnostics(r, *starts[em.name])
                    report["start"]["models"][em.name][label] = {"bpb": r.bpb, **diag}
                log.info("%s %s: %.4f bits/byte, %.3f chars/token", em.name, label, r.bpb, r.chars / r.tokens)
            for label, convs in plan.chat_data.items():
                r = chat_bpb(
                    em,
                    convs,
                    window=run.window,
                    stride=run.stride,
                    batch_tokens=o.batch_tokens,
                    source=f"--chat {label}",
                    desc=f"bpb {label}",
                )
                report["bpb"][em.name][label] = {"kind": "chat", "file": str(o.chats[label]), **r.summary()}
                log.info("%s %s (assistant turns): %.4f bits/byte", em.name, label, r.bpb)
        for name, per_label in (report.get("start") or {}).get("models", {}).items():
            for label, diag in per_label.items():  # the gap to the base's own bits per byte on the same bytes
                diag["base_bpb"] = report["bpb"][o.start_base][label]["bpb"]
                diag["gap"] = diag["bpb"] / diag["base_bpb"] - 1


def measure_generation_speed(run: EvalRun) -> None:
    """Generation speed of the models on the same prompts, alternating (``report["speed"]``); nothing without
    prompts."""
    plan, o = run.plan, run.plan.options
    if not plan.prompt_lines:
        return
    with run.record.timed("speed"):
        chosen = select_prompts(
            plan.prompt_lines, run.loaded, o.speed_prompts, new_tokens=o.new_tokens, mode=o.speed_mode
        )
        speed = measure_speed(run.loaded, chosen, new_tokens=o.new_tokens, mode=o.speed_mode, rounds=o.speed_rounds)
        speed["prompt_source"] = str(o.prompts or o.texts.get("ru"))
        run.report["speed"] = speed


def measure_tasks(run: EvalRun) -> None:
    """Every lm-eval task on every model (``report["lm_eval"]``, their per-document rows in ``run.samples``) and
    where lm-eval's bits per byte and ours scored the same bytes, how far apart they are
    (``report["bpb_agreement"]``); nothing without ``--tasks``."""
    plan, report, o = run.plan, run.report, run.plan.options
    if not plan.tasks:
        return
    report["lm_eval"] = {em.name: {} for em in run.loaded}
    with run.record.timed("lm_eval"):
        for em in run.loaded:
            for task in plan.tasks:
                res = run_task(
                    em,
                    task,
                    plan.offered[task],
                    window=run.window,
                    max_lines=o.max_lines,
                    limit=o.task_limit,
                    system_instruction=o.system_instruction,
                    batch_size=o.task_batch_size,
                )
                run.samples.setdefault(em.name, {})[task] = res.pop("samples")
                report["lm_eval"][em.name][task] = res
    report["bpb_agreement"] = _agreement(report, o.task_limit)


def write_eval(run: EvalRun) -> None:
    """Write report.json, report.md, the plots, the lm-eval samples and ruadapt_eval.json atomically into the
    output folder (``report["files"]`` names what the report wrote)."""
    out, report = run.plan.options.out, run.report
    with atomic_output_dir(out, run.plan.inputs) as tmp:
        report["files"] = write_report(report, tmp)
        for name, per_task in run.samples.items():
            for task, rows in per_task.items():
                path = tmp / "lm_eval_samples" / name / f"{task}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        run.record.update({k: v for k, v in report.items() if k != "files"})  # device and failures included
        run.record.write(tmp)
    log.info("wrote %s", Path(out))


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
