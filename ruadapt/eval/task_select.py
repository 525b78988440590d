"""Which lm-eval task a ``--tasks`` name means, and whether its data can be read, decided before any model loads.

A name is looked up in three places, in this order, and the first that knows it wins:

1. ruadapt's shipped tasks (``bpb_<LANG>``, ``copy_ru``; :func:`.lm_eval_runner.available_tasks`);
2. the user's own task YAMLs in ``--include-path DIR`` (indexed by lm-eval's ``TaskManager(include_path=...,
   include_defaults=False)``, so the YAMLs mean exactly what they mean to ``lm_eval --include_path``);
3. lm-eval's own registry (``TaskManager(include_defaults=True)``): only built when a name is in neither of the
   above, because indexing its ~15,000 YAMLs takes seconds.

Names from 2 and 3 are then built into lm-eval task objects up front (:func:`check_task_data`), which reads
their datasets: a registry task whose dataset is not in the local Hugging Face cache on an offline machine fails
here in one line, instead of after every model has been loaded and the other measures have run.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from ..errors import RuadaptError

log = logging.getLogger(__name__)


def check_include_paths(paths: list[Path]) -> list[Path]:
    """Each ``--include-path`` must be an existing directory (lm-eval silently indexes nothing otherwise)."""
    out = []
    for p in paths:
        p = Path(p).expanduser()
        if not p.is_dir():
            raise RuadaptError(f"--include-path {p}: directory not found")
        out.append(p.resolve())
    return list(dict.fromkeys(out))


def _manager(include_paths: list[Path], include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in include_paths] or None, include_defaults=include_defaults)


def resolve_tasks(
    requested: list[str], shipped: dict[str, dict[str, Any]], include_paths: list[Path] | None = None
) -> dict[str, dict[str, Any]]:
    """``--tasks`` names -> specs, in the order given (duplicates dropped). A shipped task keeps its spec from
    ``shipped``; another gets ``{"source": "include" | "registry", "manager": TaskManager, "yaml": ...}``.
    An unknown name is a one-line error that says where it was looked for (and close names, if any)."""
    names = list(dict.fromkeys(requested))
    include_paths = list(include_paths or [])
    for n in names:  # a shipped name this run cannot offer: say what it needs, without indexing anything
        if n not in shipped and (n == "copy_ru" or n.startswith("bpb_")):
            need = "--text ru=FILE or --copy-file FILE" if n == "copy_ru" else f"--text {n[len('bpb_') :]}=FILE"
            raise RuadaptError(f"--tasks {n}: ruadapt's task {n} needs {need}")
    out: dict[str, dict[str, Any]] = {n: shipped[n] for n in names if n in shipped}
    rest = [n for n in names if n not in out]
    pool: list[str] = list(shipped)
    looked = [f"ruadapt's shipped tasks ({', '.join(sorted(shipped)) or 'none for this run'})"]
    for source, paths, defaults in (("include", include_paths, False), ("registry", include_paths, True)):
        if not rest or (source == "include" and not include_paths):
            continue
        tm = _manager(paths, defaults)
        if source == "include":
            looked.append(f"--include-path {', '.join(map(str, paths))} ({len(tm.all_tasks)} names)")
        else:
            import lm_eval

            looked.append(f"lm-eval {getattr(lm_eval, '__version__', '')}'s task registry ({len(tm.all_tasks)} names)")
        for n in rest:
            entry = tm.task_index.get(n)
            if entry is not None:
                out[n] = {
                    "source": source,
                    "manager": tm,
                    "yaml": entry.yaml_path,
                    "kind": entry.kind.name.lower(),
                    "dataset": dataset_of(entry.cfg),
                }
        rest = [n for n in rest if n not in out]
        if not rest:
            break
        pool = tm.all_tasks
    for n in rest:
        close = difflib.get_close_matches(n, pool, n=3)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise RuadaptError(f"--tasks {n}: unknown task; looked in {'; '.join(looked)}{hint}")
    return {n: out[n] for n in names}


def dataset_of(cfg: dict | None) -> str | None:
    """``dataset_path`` (with ``dataset_name`` and any ``data_files``) of a task config, for messages and the report."""
    cfg = cfg or {}
    path = cfg.get("dataset_path")
    if not path:
        return "custom_dataset" if cfg.get("custom_dataset") else None
    name = cfg.get("dataset_name")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    return path + (f" ({name})" if name else "") + (f" {files}" if files else "")


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        pass
    import datasets

    return bool(
        getattr(datasets.config, "HF_HUB_OFFLINE", False) or getattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    )


def _data_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this dataset cannot be read here" (no network, not cached, missing file, gated or
    unknown on the Hub). Anything else a task build raises (a broken YAML, a bug) is not caught."""
    import datasets.exceptions
    from huggingface_hub import errors as hub_errors

    errs: list[type[BaseException]] = [
        ConnectionError,
        TimeoutError,
        FileNotFoundError,
        datasets.exceptions.DatasetNotFoundError,
        hub_errors.LocalEntryNotFoundError,
        hub_errors.HfHubHTTPError,
    ]
    try:
        import requests

        errs.append(requests.exceptions.RequestException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


def check_task_data(specs: dict[str, dict[str, Any]]) -> None:
    """Build every include-path and registry task with lm-eval (this loads its dataset, from the cache when
    offline) and note each one's output types and leaf tasks in its spec; one-line error naming the task and
    dataset when the data cannot be read."""
    errors = _data_errors()
    for name, spec in specs.items():
        if "source" not in spec:
            continue
        try:
            loaded = spec["manager"].load([name])
        except errors as e:
            what = f'dataset "{spec["dataset"]}"' if spec.get("dataset") else "a dataset of its tasks"
            first = " ".join(str(e).split())[:300]
            if _offline() and not isinstance(e, FileNotFoundError):
                raise RuadaptError(
                    f"--tasks {name}: {what} is not available offline (not in the Hugging Face datasets cache); "
                    f"run once with network access to cache it, or drop the task ({type(e).__name__}: {first})"
                ) from None
            raise RuadaptError(f"--tasks {name}: {what} cannot be loaded ({type(e).__name__}: {first})") from None
        tasks = loaded["tasks"]
        if not tasks:
            raise RuadaptError(f"--tasks {name}: names no task (an empty group or tag)")
        spec["leaves"] = sorted(tasks)
        if not spec.get("dataset"):  # a group or tag: the datasets of its tasks
            spec["dataset"] = ", ".join(
                sorted(
                    {
                        dataset_of(
                            {k: getattr(t.config, k, None) for k in ("dataset_path", "dataset_name", "dataset_kwargs")}
                        )
                        or "?"
                        for t in tasks.values()
                    }
                )
            )
        spec["output_types"] = sorted({t.get_config("output_type") for t in tasks.values()})
        log.info(
            "task %s (%s): %d task(s), %s, data %s",
            name,
            spec["source"],
            len(tasks),
            "/".join(spec["output_types"]),
            spec.get("dataset"),
        )
