"""Training data before launch, and the ranks' view of it: the two ends of ``OUT.work/data.json``.

:func:`prepare_run` (called by ``ruadapt train`` before it starts DeepSpeed, and by ``ruadapt data prepare`` on its
own, e.g. on a CPU node of a cluster) turns every source of a run into a token file (:mod:`.tokenfile`) in the
token cache — or finds it there — and writes the manifest ``data.json`` into the run's work dir. Each cache
entry is keyed by a content hash of the source file, the tokenizer and every option the tokens depend on, so a
rerun, a resume or another run on the same data reuses it, and a changed file or tokenizer never does.

:func:`load_run_data`, on every rank, maps the files the manifest names: no rank tokenizes, none waits at a
barrier for another (the process group times out after 10 minutes; tokenizing tens of GB takes longer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RuadaptError
from ..io.chatdata import iter_chats
from ..io.corpus import iter_document_blocks
from ..io.record import sha256_file
from ..io.tokdir import load_tokenizer, tokenizer_json_path, tokenizer_size
from .config import RunConfig, SourceConfig
from .cpt import BlockSource, write_documents
from .data import Items, eos_token_id, normalized_weights, pad_token_id
from .rundir import discard_run, last_complete
from .tokenfile import DamagedTokenFile, TokenFileWriter, locked, open_token_file, publish, temp_dir_for, token_dtype

log = logging.getLogger(__name__)

MANIFEST = "data.json"
# builds one cache entry: (writer, source, text field, section) -> stats
Builder = Callable[[TokenFileWriter, SourceConfig, str, str], dict]


def manifest_path(cfg: RunConfig) -> Path:
    return cfg.work_dir / MANIFEST


def prepare_run(
    cfg: RunConfig, *, tokenizer_dir: Path | None = None, progress: bool = True, overwrite: bool = False
) -> dict:
    """Make (or reuse) the token file of every source of ``cfg`` and write the run's manifest; return it.

    ``tokenizer_dir`` stands in for ``cfg.model`` when that model is made by an earlier run of the same launch
    (CPT stage 2 on stage 1's output): training never changes the tokenizer, and the export copies its files.
    A run with checkpoints whose data changed since is refused, or with ``overwrite`` discarded (started over).
    """
    model = Path(tokenizer_dir or cfg.model)
    tok_json = tokenizer_json_path(model, "model")
    common = {"kind": cfg.task, "tokenizer_sha256": sha256_file(tok_json), "max_documents": cfg.data.max_documents}
    if cfg.task == "cpt":
        common["eos_id"] = eos_token_id(model)
    else:
        tc = model / "tokenizer_config.json"
        common["tokenizer_config_sha256"] = sha256_file(tc) if tc.is_file() else ""
        common["block_size"] = cfg.block_size
    tok = load_tokenizer(model, "model")
    rows = tokenizer_size(tok)
    build = _cpt_builder(cfg, model, tok_json, progress) if cfg.task == "cpt" else _sft_builder(cfg, model, progress)
    cache = cfg.token_cache
    plan: list[tuple[str, SourceConfig, str, dict, Path]] = []  # (section, source, text field, key, entry)
    for section, sources in (("train", cfg.data.train), ("eval", cfg.data.eval)):
        for src in sources:
            field = src.text_field or cfg.data.text_field
            key = {
                **common,
                "file_sha256": sha256_file(Path(src.path)),
                "text_field": field if cfg.task == "cpt" else "",
            }
            plan.append((section, src, field, key, entry_path(cache, f"{cfg.task}-{Path(src.path).name}", key)))
    _refuse_changed_data(cfg, plan, overwrite)
    manifest: dict = {
        "task": cfg.task,
        "model": str(model),
        "cache": str(cache),
        "tokenizer_sha256": common["tokenizer_sha256"],
        "train": [],
        "eval": [],
    }
    for section, src, field, key, entry in plan:

        def build_entry(w: TokenFileWriter, s: SourceConfig = src, f: str = field, sec: str = section) -> dict:
            return build(w, s, f, f"data.{sec}")

        ensure_entry(
            entry,
            key,
            build_entry,
            rows=rows,
            with_mask=cfg.task == "sft",
        )
        tf = open_token_file(entry)
        manifest[section].append(
            {
                "path": src.path,
                "weight": src.weight,
                "text_field": field,
                "entry": str(entry),
                "file_sha256": key["file_sha256"],
                "n_docs": tf.n_docs,
                "n_tokens": tf.n_tokens,
            }
        )
    path = manifest_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return manifest


def prepare_configs(
    configs: list[RunConfig], *, skip_done: bool = True, progress: bool = True, overwrite: bool = False
) -> list[tuple[RunConfig, dict]]:
    """:func:`prepare_run` for runs meant to execute in sequence; a run whose model an earlier run makes uses that
    earlier run's tokenizer. Finished runs are skipped with ``skip_done`` (a relaunch does not retokenize them)."""
    tokenizer_of: dict[Path, Path] = {}
    done = []
    for cfg in configs:
        model = Path(cfg.model).resolve()
        source = tokenizer_of.get(model, model)
        tokenizer_of[cfg.out_path.resolve()] = source
        if skip_done and cfg.done:
            continue
        done.append((cfg, prepare_run(cfg, tokenizer_dir=source, progress=progress, overwrite=overwrite)))
    return done


def entry_path(cache: Path, name: str, key: dict) -> Path:
    """Where the token file for ``key`` lives: ``<cache>/<name>-<16 hex digits of the key's sha256>``."""
    return Path(cache) / f"{name}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}"


def ensure_entry(
    entry: Path, key: dict, build: Callable[[TokenFileWriter], dict], *, rows: int, with_mask: bool
) -> Path:
    """The complete cache entry for ``key``: reused when it opens cleanly, else built (under a lock) and published."""
    if _usable(entry):
        return entry
    with locked(entry):
        if _usable(entry):  # another job built it while this one waited for the lock
            return entry
        tmp = temp_dir_for(entry)
        writer = TokenFileWriter(tmp, token_dtype(rows), with_mask)
        try:
            meta = build(writer)
            writer.finish({"key": key, "built_on": socket.gethostname(), **meta})
        except BaseException:
            writer.abort()
            raise
        publish(tmp, entry)
    log.info("wrote %s (%s tokens, %s documents)", entry, f"{writer.n_tokens:,}", f"{writer.n_docs:,}")
    return entry


def _refuse_changed_data(cfg: RunConfig, plan: list, overwrite: bool) -> None:
    """A run with checkpoints continues only on the tokens it started with: a data file or tokenizer that changed
    since (another key) would silently change what the resumed steps train on."""
    old_path = manifest_path(cfg)
    if not old_path.is_file() or last_complete(cfg.work_dir / "checkpoints") is None:
        return
    try:
        old = json.loads(old_path.read_text(encoding="utf-8"))
        before = {(sec, e["path"]): Path(e["entry"]).name for sec in ("train", "eval") for e in old[sec]}
    except (json.JSONDecodeError, KeyError, TypeError):
        return
    changed = [src.path for sec, src, _, _, entry in plan if before.get((sec, src.path), entry.name) != entry.name]
    if changed and overwrite:
        for p in discard_run(cfg):
            log.warning("--overwrite: %s changed since the run started; removed %s", changed[0], p)
    elif changed:
        raise RuadaptError(
            f"{changed[0]}: its contents (or the tokenizer) changed since the checkpoints in "
            f"{cfg.work_dir / 'checkpoints'} were written; resuming would train on other data: restore "
            "it, or add --overwrite to ruadapt train to start the run over"
        )


def _usable(entry: Path) -> bool:
    if not entry.exists():
        return False
    try:
        open_token_file(entry)
    except DamagedTokenFile as e:
        log.warning("token file is damaged, rebuilding it: %s", e)
        return False
    log.info("reusing token file %s", entry)
    return True


def _cpt_builder(cfg: RunConfig, model: Path, tokenizer_json: Path, progress: bool) -> Builder:
    eos = eos_token_id(model)

    def build(writer: TokenFileWriter, src: SourceConfig, field: str, section: str) -> dict:
        blocks = iter_document_blocks(Path(src.path), section, field)
        stats = write_documents(
            tokenizer_json,
            blocks,
            writer,
            eos_id=eos,
            limit=cfg.data.max_documents,
            desc=f"tokenizing {Path(src.path).name}" if progress else "",
        )
        return {"source": _source_facts(src), **stats}

    return build


def _sft_builder(cfg: RunConfig, model: Path, progress: bool) -> Builder:
    from .sft import load_chat_tokenizer, write_chats

    holder: list = []

    def build(writer: TokenFileWriter, src: SourceConfig, field: str, section: str) -> dict:
        if not holder:
            holder.append(load_chat_tokenizer(model))
        stats = write_chats(
            holder[0],
            iter_chats(Path(src.path), what=section),
            writer,
            block_size=cfg.block_size,
            limit=cfg.data.max_documents,
            desc=f"rendering {Path(src.path).name}" if progress else "",
        )
        if writer.n_docs == 0:
            raise RuadaptError(f"{src.path}: no conversation with assistant tokens within block_size {cfg.block_size}")
        return {"source": _source_facts(src), **stats}

    return build


def _source_facts(src: SourceConfig) -> dict:
    p = Path(src.path)
    return {"path": str(p.resolve()), "bytes": p.stat().st_size}


def load_run_data(cfg: RunConfig) -> tuple[Items, Items | None, list[float]]:
    """(train items, eval items or None, the train sources' weights) from the run's manifest, memory-mapped."""
    path = manifest_path(cfg)
    if not path.is_file():
        raise RuadaptError(
            f"{path}: no prepared data; run `ruadapt data prepare --config {cfg.source}` "
            "(ruadapt train does it before launching)"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    want = [s.path for s in cfg.data.train], [s.path for s in cfg.data.eval]
    if ([e["path"] for e in manifest["train"]], [e["path"] for e in manifest["eval"]]) != want or manifest[
        "task"
    ] != cfg.task:
        raise RuadaptError(
            f"{path}: prepared for other data files than {cfg.source} lists; "
            f"run `ruadapt data prepare --config {cfg.source}` again"
        )
    pad = pad_token_id(Path(cfg.model)) if cfg.task == "sft" else 0

    def sources(section: str) -> list:
        out: list[Any] = []  # BlockSource or ChatSource
        for e in manifest[section]:
            try:
                tf = open_token_file(Path(e["entry"]))
            except DamagedTokenFile as err:
                raise RuadaptError(f"{err}; rerun `ruadapt data prepare --config {cfg.source}` to rebuild it") from None
            if cfg.task == "cpt":
                out.append(BlockSource(tf, cfg.block_size))
            else:
                from .sft import ChatSource

                out.append(ChatSource(tf))
        return out

    train_sources = sources("train")
    names = [e["path"] for e in manifest["train"]]
    weights = [float(e["weight"]) for e in manifest["train"]]
    if cfg.data.eval:
        ev = sources("eval")
        return (
            Items([(s, 0, len(s)) for s in train_sources], pad_id=pad, names=names),
            Items([(s, 0, len(s)) for s in ev], pad_id=pad, names=[e["path"] for e in manifest["eval"]]),
            weights,
        )
    if cfg.data.eval_blocks <= 0:
        return Items([(s, 0, len(s)) for s in train_sources], pad_id=pad, names=names), None, weights
    # held out: the tail of each source, as many items as its share of the mix (natural or weighted)
    from .data import apportion

    sizes = [len(s) for s in train_sources]
    held = apportion(normalized_weights(weights, sizes), min(cfg.data.eval_blocks, max(sum(sizes) - 1, 0)))
    held = [min(h, max(n - 1, 0)) for h, n in zip(held, sizes)]
    train = Items([(s, 0, len(s) - h) for s, h in zip(train_sources, held)], pad_id=pad, names=names)
    ev_parts = [(s, len(s) - h, len(s)) for s, h in zip(train_sources, held) if h]
    ev_items = Items(ev_parts, pad_id=pad, names=[n for n, h in zip(names, held) if h]) if ev_parts else None
    return train, ev_items, weights
