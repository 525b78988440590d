"""The model card (``README.md`` with Hugging Face metadata) and lineage every model-writing stage leaves.

A model made by ruadapt passes through several stages (swap → train → lep → train ...), each in its own
directory, and the record of one stage stays next to its own output. So that the last directory still says
where it came from, every stage writes ``ruadapt_lineage.json``: the lineage of the model it started from plus a
summary of itself (stage, when, key options, figures from its record). ``README.md`` is rendered from it: the
models it derives from (as Hugging Face repo ids when they came from the hub cache, e.g. ``Qwen/Qwen2.5-7B``),
the licence carried from the model it started from, the tokenizer's chars/token, and a table of the stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .hub import describe

LINEAGE_FILE = "ruadapt_lineage.json"
CARD_FILE = "README.md"
# the options worth a column in the card, by stage (the rest stays in the stage record)
_KEY_OPTIONS = {
    "swap": ("init",),
    "lep": ("method", "lora_deltas", "alpha_scale"),
    "trim": ("keep_top", "min_count"),
    "train": ("task", "stage"),
}


def model_name(path: Path | str) -> str:
    """A model as people name it: ``Org/Name`` for a snapshot in a Hugging Face hub cache, else its path."""
    return describe(path).get("repo_id") or str(Path(path).resolve())


def card_name(root: str) -> str:
    """How a lineage root appears in the card: a hub repo id as it is; a local path by its folder name only.

    The lineage keeps full paths (provenance on this machine), but a card travels with the model: an absolute
    path of the machine that made it (``/home/me/runs/base``) means nothing where the model is published, and the
    Hub expects ``base_model`` to be a name, not a path."""
    return Path(root).name if root.startswith(("/", "~", ".")) or "\\" in root else root


def read_front_matter(card: Path) -> dict:
    """The YAML metadata block at the top of a model card (``{}`` when there is none or it does not parse)."""
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def read_lineage(model_dir: Path) -> dict:
    """``{"roots": [...], "license": ..., "stages": [...]}`` of a model dir; a model not made by ruadapt is a root."""
    model_dir = Path(model_dir)
    path = model_dir / LINEAGE_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    meta = read_front_matter(model_dir / CARD_FILE)
    licence = {k: meta[k] for k in ("license", "license_name", "license_link") if k in meta}
    return {"roots": [model_name(model_dir)], "license": licence, "stages": []}


def _figures(stage: str, result: dict) -> dict[str, Any]:
    """What a reader of the card wants to know about one stage, from its record's ``result``."""
    pick: dict[str, tuple[str, ...]] = {
        "swap": ("vocabulary", "base_tokens", "tokens", "rows", "rows_by_kind"),
        "lep": ("method", "tokens", "rows"),
        "trim": ("rows",),
        "train": ("steps", "tokens", "first_loss", "last_loss", "eval_loss", "world_size", "zero_stage"),
    }
    out = {k: result[k] for k in pick.get(stage, ()) if result.get(k) is not None}
    if stage == "lep":
        out["relative_residual"] = {r: round(f["relative_residual"], 4) for r, f in (result.get("fits") or {}).items()}
    if stage == "trim" and "vocabulary" in result:
        out["tokens"] = f"{result['vocabulary']['before']} -> {result['vocabulary']['after']}"
    return out


def tokenizer_figures(tokenizer_dir: Path) -> dict | None:
    """chars/token of a tokenizer made by ``ruadapt tokenizer train`` on its training corpus, base vs new."""
    path = Path(tokenizer_dir) / "ruadapt_tokenizer.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text(encoding="utf-8")).get("result", {})
    chars = sum(c.get("chars", 0) for c in r.get("corpora", []))
    before, after = r.get("training_tokens_before"), r.get("training_tokens_after")
    if not (chars and before and after):
        return None
    return {
        "mode": r.get("mode"),
        "tokens": r.get("tokens"),
        "corpus_chars": chars,
        "chars_per_token_base": round(chars / before, 3),
        "chars_per_token": round(chars / after, 3),
    }


def write_model_card(
    out: Path,
    record: dict,
    *,
    started_from: Path,
    other_inputs: dict[str, Path] | None = None,
    tokenizer_dir: Path | None = None,
) -> None:
    """Write ``ruadapt_lineage.json`` and ``README.md`` into ``out`` for the stage of ``record``.

    ``started_from``: the model this output continues (its lineage and licence are carried); ``other_inputs``:
    further models it is built from (LEP: the base and the instruct model), named in the card's base models."""
    lineage = read_lineage(started_from)
    roots = list(lineage["roots"])
    for path in (other_inputs or {}).values():
        for r in read_lineage(path)["roots"]:
            if r not in roots:
                roots.append(r)
    stage = record["stage"]
    summary = {
        "stage": stage,
        "finished": record.get("finished"),
        "inputs": {k: model_name(v["path"]) for k, v in record["inputs"].items() if "fingerprint" in v},
        "options": {
            k: record["options"][k] for k in _KEY_OPTIONS.get(stage, ()) if record["options"].get(k) is not None
        },
        "figures": _figures(stage, record["result"]),
    }
    tok = tokenizer_figures(tokenizer_dir) if tokenizer_dir is not None else None
    if tok:
        summary["tokenizer"] = tok
    lineage = {"roots": roots, "license": lineage.get("license", {}), "stages": [*lineage["stages"], summary]}
    (Path(out) / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (Path(out) / CARD_FILE).write_text(render_card(lineage), encoding="utf-8")


def render_card(lineage: dict) -> str:
    """README.md: Hugging Face metadata, then what was done, in words and as a table."""
    meta: dict[str, Any] = {}
    meta.update(lineage.get("license") or {})
    names = [card_name(r) for r in lineage["roots"]]
    meta["base_model"] = names if len(names) > 1 else names[0]
    meta.update(
        {
            "language": ["ru"],
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "tags": ["ruadapt", "russian", "vocabulary-adaptation"],
        }
    )
    lines = ["---", yaml.safe_dump(meta, allow_unicode=True, sort_keys=False).strip(), "---", ""]
    lines += [f"# {' + '.join(names)}, adapted to Russian with ruadapt", ""]
    lines.append(
        "Made with ruadapt by the stages below (each stage's full record, `ruadapt_<stage>.json`, stays next "
        "to that stage's output; `ruadapt_lineage.json` here lists them all)."
    )
    if not lineage.get("license"):
        lines += ["", "Licence: the model it started from states none in its card; check the base model's terms."]
    toks = [s["tokenizer"] for s in lineage["stages"] if s.get("tokenizer")]
    if toks:
        t = toks[-1]
        lines += [
            "",
            f"Tokenizer: {t['mode']} to {t['tokens']:,} tokens; on its training corpus "
            f"{t['chars_per_token']:.2f} chars/token against the base tokenizer's {t['chars_per_token_base']:.2f} "
            f"({t['chars_per_token'] / t['chars_per_token_base']:.2f}× fewer tokens per character).",
        ]
    lines += ["", "| # | stage | finished | options | figures |", "|---:|---|---|---|---|"]
    for k, s in enumerate(lineage["stages"], start=1):
        opts = ", ".join(f"{a}={b}" for a, b in s["options"].items()) or "—"
        figs = "; ".join(f"{a} {b}" for a, b in s["figures"].items()) or "—"
        lines.append(f"| {k} | {s['stage']} | {s.get('finished') or ''} | {opts} | {figs} |")
    lines += [
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "```",
        "",
    ]
    return "\n".join(lines)
