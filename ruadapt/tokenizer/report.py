"""``ruadapt tokenizer report``: tables and a chart of characters per token (docs/design.md §5) over texts.

The measure itself (:func:`ruadapt.vocab.measure.measure`) sits in ``vocab/``, below the stages, because trim
and eval use the same definition; this module only lays its numbers out.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Collection
from pathlib import Path

from tokenizers import Tokenizer

from ..errors import RuadaptError, require
from ..io.corpus import read_documents, refuse_json_as_text
from ..io.outdir import atomic_output_dir, check_output_dir
from ..io.record import StageRecord
from ..io.tokdir import load_tokenizer, tokenizer_json_path, tokenizer_size
from ..vocab.measure import encode_lines, measure
from ..vocab.pieces import TokenCodec

log = logging.getLogger(__name__)

TOP_UNUSED = 20


def _named(pairs: list[str] | list[tuple[str, Path]], option: str) -> list[tuple[str, Path]]:
    """``NAME=PATH`` strings (or pairs) → [(name, path)], names unique."""
    out: list[tuple[str, Path]] = []
    for p in pairs:
        if isinstance(p, str):
            name, sep, path = p.partition("=")
            require(sep and name and path, f"{option} {p!r}: write NAME=PATH, e.g. {option} base=./Qwen2.5-7B")
            p = (name, Path(path).expanduser())
        out.append((p[0], Path(p[1])))
    names = [n for n, _ in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RuadaptError(f"{option}: name {sorted(dup)[0]!r} given twice; names must be unique")
    require(out, f"{option}: give at least one NAME=PATH")
    return out


def new_token_ids(tok: Tokenizer, reference: Tokenizer) -> list[int]:
    """Ids of ``tok`` whose vocabulary string the reference lacks (for an extension: exactly the new ids)."""
    ref = reference.get_vocab(with_added_tokens=True)
    return sorted(i for s, i in tok.get_vocab(with_added_tokens=True).items() if s not in ref)


def token_usage(tok: Tokenizer, ids: list[list[int]], new_ids: list[int], top: int = TOP_UNUSED) -> dict:
    """How many of ``new_ids`` a text uses, and the first unused ones by id: for an extension the ids are in
    merge order, so these are the unused tokens that were most frequent in the training corpus."""
    seen = Counter(i for line in ids for i in line)
    new_set = set(new_ids)
    used = [i for i in new_ids if seen[i]]
    unused = [i for i in new_ids if not seen[i]]
    return {
        "new_tokens": len(new_ids),
        "new_tokens_used": len(used),
        "new_token_occurrences": sum(c for i, c in seen.items() if i in new_set),
        "first_unused": _spelled(tok, unused[:top]),
    }


def _spelled(tok: Tokenizer, ids: list[int]) -> list[list]:
    """``[id, text]`` from each token's raw bytes, not ``decode()``: a partial-UTF-8 byte token would otherwise show
    as "\ufffd" (docs/design.md §3); undecodable bytes are written as ``\\xNN``."""
    if not ids:
        return []
    codec = TokenCodec(tok)
    return [[i, codec.token_bytes(i).decode("utf-8", "backslashreplace")] for i in ids]


def tokenizer_report(
    tokenizers: list[str] | list[tuple[str, Path]],
    texts: list[str] | list[tuple[str, Path]],
    out: Path,
    *,
    top_unused: int = TOP_UNUSED,
    allow: Collection[str] = (),
) -> dict:
    """``report.json`` ({NAME: {LANG: measures}}), ``usage.json``, ``report.md`` and ``chars_per_token.png``
    into ``out`` (atomic). The first tokenizer is the reference for ratios and for which tokens are new."""
    toks = _named(tokenizers, "--tokenizer")
    txts = _named(texts, "--text")
    out = Path(out).expanduser()
    loaded = {name: load_tokenizer(path, "--tokenizer") for name, path in toks}
    for _, path in txts:  # JSON Lines saved as .txt would be measured on its {"id": ..., "text": ...} syntax
        refuse_json_as_text(path, "--text", allow)
    lines = {lang: read_documents(path, "--text") for lang, path in txts}
    inputs = [p for _, p in toks] + [p for _, p in txts]
    check_output_dir(out, inputs)
    record = StageRecord("tokenizer_report", {"top_unused": top_unused})
    for name, path in toks:
        record.input_file(
            f"tokenizer:{name}", tokenizer_json_path(path, "--tokenizer"), tokens=tokenizer_size(loaded[name])
        )
    for lang, path in txts:
        record.input_file(f"text:{lang}", path, lines=len(lines[lang]))

    ref_name = toks[0][0]
    report: dict[str, dict[str, dict]] = {}
    usage: dict[str, dict[str, dict]] = {}
    with record.timed("measure"):
        for name, _ in toks:
            tok = loaded[name]
            new_ids = new_token_ids(tok, loaded[ref_name]) if name != ref_name else []
            report[name], usage[name] = {}, {}
            for lang, _ in txts:
                ids = encode_lines(tok, lines[lang])
                m = measure(tok, lines[lang], ids)
                report[name][lang] = {
                    k: m[k] for k in ("chars", "tokens", "chars_per_token", "bytes_per_token", "tokens_per_word")
                }
                if new_ids:
                    usage[name][lang] = token_usage(tok, ids, new_ids, top_unused)
    with atomic_output_dir(out, inputs) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "usage.json").write_text(json.dumps(usage, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(
            format_markdown(report, usage, toks, txts, {n: tokenizer_size(t) for n, t in loaded.items()}),
            encoding="utf-8",
        )
        plot_report(report, tmp / "chars_per_token.png")
        record.set("tokenizers", report)
        record.set("new_token_usage", usage)
        record.write(tmp)
    return report


def format_markdown(
    report: dict, usage: dict, toks: list[tuple[str, Path]], txts: list[tuple[str, Path]], sizes: dict[str, int]
) -> str:
    ref = toks[0][0]
    langs = [lang for lang, _ in txts]
    out = [
        "# Characters per token",
        "",
        "chars = Σ len(line), tokens = Σ len(encode(line, add_special_tokens=False)) over the lines of each text "
        f"(higher is better); ratio = chars/token ÷ {ref}'s.",
        "",
        "Texts: " + ", ".join(f"`{lang}` = `{path}`" for lang, path in txts),
        "",
        "| tokenizer | tokens | "
        + " | ".join(f"{lang} chars/token | {lang} ratio | {lang} tokens/word" for lang in langs)
        + " |",
        "|---|---:|" + "---:|---:|---:|" * len(langs),
    ]
    for name, _path in toks:
        row = [name, f"{sizes[name]:,}"]
        for lang in langs:
            r = report[name][lang]
            ratio = r["chars_per_token"] / report[ref][lang]["chars_per_token"]
            row += [f"{r['chars_per_token']:.3f}", f"{ratio:.3f}×", f"{r['tokens_per_word']:.3f}"]
        out.append("| " + " | ".join(row) + " |")
    for name, per_lang in usage.items():
        if not per_lang:
            continue
        out += ["", f"## New tokens of `{name}` (not in `{ref}`)", ""]
        for lang, u in per_lang.items():
            first = ", ".join(f"`{t!r}`" for _, t in u["first_unused"][:10])
            out.append(
                f"- {lang}: {u['new_tokens_used']:,} of {u['new_tokens']:,} new tokens used "
                f"({u['new_token_occurrences']:,} occurrences); first unused by id: {first}"
            )
    return "\n".join(out) + "\n"


def plot_report(report: dict, path: Path) -> None:
    """Grouped bars: chars/token per text, one bar per tokenizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    langs = list(next(iter(report.values())))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(langs) * len(names) ** 0.5 + 2), 4))
    for k, name in enumerate(names):
        xs = [j + k * width for j in range(len(langs))]
        vals = [report[name][lang]["chars_per_token"] for lang in langs]
        bars = ax.bar(xs, vals, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(langs))], langs)
    ax.set_ylabel("characters per token")
    ax.set_title("characters per token (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
