"""The comparison report of ``ruadapt eval``: ``report.json`` (everything), ``report.md`` (one row per model)
and PNG plots (bits per byte by model and text, generation speed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return f"{x:.3e}" if abs(x) >= 1e6 else f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return "–" if x is None else str(x)


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """Lines of a GitHub table: first column left-aligned, the others right-aligned and formatted by ``_fmt``."""
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out


def median_spread(s: dict, key: str) -> str:
    """A median rate with its half-range over rounds in per cent: ``123.40 ±3.1 %``."""
    return f"{s[key]:.2f} ±{100 * s[key + '_spread']['rel']:.1f} %"


def ratio_range(s: dict, key: str) -> str:
    """A median ratio with its lowest and highest round: ``1.444 [1.401–1.502]``."""
    sp = s[key + "_spread"]
    return f"{s[key]:.3f} [{sp['min']:.3f}–{sp['max']:.3f}]"


def markdown(report: dict) -> str:
    """``report.md``: tables with one row per model."""
    models = list(report["models"])
    lines = ["# ruadapt eval", ""]
    lines += markdown_table(
        ["model", "path", "parameters", "len(tokenizer)", "rows", "dtype"],
        [
            [
                m,
                report["models"][m]["path"],
                report["models"][m]["parameters"],
                report["models"][m]["tokenizer_size"],
                report["models"][m]["embedding_rows"],
                report["models"][m]["dtype"],
            ]
            for m in models
        ],
    )
    bpb = report.get("bpb") or {}
    labels = list(dict.fromkeys(label for m in bpb.values() for label in m))
    if labels:
        pol = report["window_policy"]
        lines += ["", f"## Bits per byte (lower is better; window {pol['window']} tokens, stride {pol['stride']})", ""]
        header = ["model"] + [f"{label} bpb" for label in labels] + [f"{label} chars/token" for label in labels]
        rows = [
            [m] + [bpb[m][label]["bpb"] for label in labels] + [bpb[m][label]["chars_per_token"] for label in labels]
            for m in models
        ]
        lines += markdown_table(header, rows)
        lines += [
            "",
            "Same bytes for every model: "
            + ", ".join(
                f"{label} {bpb[models[0]][label]['bytes']:,} bytes in {bpb[models[0]][label]['docs']:,} "
                f"{'assistant turns' if bpb[models[0]][label].get('kind') == 'chat' else 'lines'}"
                for label in labels
            )
            + ".",
        ]
    lines += start_table(report)
    speed = report.get("speed")
    if speed:
        lines += [
            "",
            f"## Generation speed ({speed['mode']}, {speed['new_tokens']} new tokens × {speed['prompts']} prompts "
            f"× {speed['rounds']} rounds, batch 1, rotating order, warm-up excluded)",
            "",
            "Medians over rounds ± half their range; ratios are medians of per-round ratios [lowest–highest round]. "
            "Decode = the steps after the first token, without the prompt's prefill; the MAC column is the decode "
            "ratio the models' arithmetic predicts.",
            "",
        ]
        base = speed["baseline"]
        rows = [
            [
                m,
                median_spread(s, "chars_per_s"),
                median_spread(s, "tokens_per_s"),
                median_spread(s, "decode_tokens_per_s"),
                s["chars_per_token"],
                ratio_range(s, "chars_per_s_ratio"),
                ratio_range(s, "decode_tokens_per_s_ratio"),
                f"{s['mac_ratio']:.3f}",
            ]
            for m, s in speed["models"].items()
        ]
        lines += markdown_table(
            [
                "model",
                "chars/s",
                "tokens/s",
                "decode tokens/s",
                "chars/token",
                f"chars/s ÷ {base}",
                f"decode ÷ {base}",
                f"MACs predict ÷ {base}",
            ],
            rows,
        )
        if speed.get("warnings"):
            lines += [""] + [f"Warning: {w}." for w in speed["warnings"]]
    lm = report.get("lm_eval") or {}
    tasks = list(dict.fromkeys(t for m in lm.values() for t in m))
    if tasks:
        lines += ["", "## lm-eval tasks (one column per task and metric)", ""]
        cols = [(t, k) for t in tasks for k in next(lm[m][t]["metrics"] for m in lm if t in lm[m])]
        rows = [[m] + [lm.get(m, {}).get(t, {}).get("metrics", {}).get(k) for t, k in cols] for m in models]
        lines += markdown_table(["model"] + [f"{t} {k}" for t, k in cols], rows)
        agree = report.get("bpb_agreement") or {}
        if agree:
            worst = max(abs(v["abs_diff"]) for m in agree.values() for v in m.values())
            lines += [
                "",
                f"lm-eval bits_per_byte vs ruadapt bpb on the same lines and window: largest difference {worst:.2e}.",
            ]
    failures = report.get("failures") or []
    if failures:
        lines += ["", "## Failures (measures without a number; `ruadapt eval` exits 1)", ""] + [
            f"- {f}" for f in failures
        ]
    lines.append("")
    return "\n".join(lines)


def start_table(report: dict) -> list[str]:
    """The "start" section: per model swapped from ``--start-base`` and text, the gap to the base and where the
    new rows stand (:mod:`ruadapt.eval.start`)."""
    start = report.get("start")
    if not start:
        return []
    rows = []
    for m, per_label in start["models"].items():
        for label, d in per_label.items():
            rows.append(
                [
                    m,
                    label,
                    d["bpb"],
                    d["base_bpb"],
                    f"{100 * d['gap']:+.1f} %",
                    f"{100 * d['new_byte_share']:.1f} %",
                    d["bpb_new"],
                    d["bpb_old"],
                    f"{100 * d['new_prediction_share']:.1f} %",
                    f"{d['new_never_predicted']:,} of {d['new_tokens']:,}",
                ]
            )
    return ["", f"## Start (new tokens = those {start['base']}'s tokenizer lacks)", ""] + markdown_table(
        [
            "model",
            "text",
            "bpb",
            f"{start['base']} bpb",
            "gap",
            "bytes in new tokens",
            "bpb at new",
            "bpb at old",
            "greedy = new",
            "new never predicted",
        ],
        rows,
    )


def plots(report: dict, out: Path) -> list[str]:
    """``bpb.png`` (grouped bars: model × text) and ``speed.png`` (chars/s and tokens/s per model, median with
    the range over rounds); returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    models = list(report["models"])
    bpb = report.get("bpb") or {}
    labels = list(dict.fromkeys(label for m in bpb.values() for label in m))
    if labels:
        fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(labels) * len(models) ** 0.5 + 2, 3.6))
        width = 0.8 / len(models)
        for i, m in enumerate(models):
            xs = [j + i * width for j in range(len(labels))]
            ys = [bpb[m][label]["bpb"] for label in labels]
            bars = ax.bar(xs, ys, width, label=m)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(labels))], labels)
        ax.set_ylabel("bits per byte (lower is better)")
        ax.set_title("Bits per byte by model and text")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bpb.png", dpi=120)
        plt.close(fig)
        written.append("bpb.png")
    speed = report.get("speed")
    if speed:
        names = list(speed["models"])
        fig, axes = plt.subplots(1, 2, figsize=(2 + 1.6 * len(names), 3.4))
        for ax, key, title in ((axes[0], "chars_per_s", "characters / s"), (axes[1], "tokens_per_s", "tokens / s")):
            mid = [speed["models"][n][key] for n in names]
            err = [
                [m - speed["models"][n][key + "_spread"]["min"] for m, n in zip(mid, names)],
                [speed["models"][n][key + "_spread"]["max"] - m for m, n in zip(mid, names)],
            ]
            bars = ax.bar(names, mid, yerr=err, capsize=3, color=["C0", "C1", "C2", "C3", "C4"][: len(names)])
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
            ax.set_title(title)
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        fig.suptitle(
            f"Generation speed ({speed['mode']}, {speed['new_tokens']} new tokens; median, bars: "
            f"range over {speed['rounds']} rounds)"
        )
        fig.tight_layout()
        fig.savefig(out / "speed.png", dpi=120)
        plt.close(fig)
        written.append("speed.png")
    return written


def write_report(report: dict, out: Path) -> list[str]:
    """Write report.json, report.md and the plots into ``out``; returns the file names written."""
    out = Path(out)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return ["report.json", "report.md", *plots(report, out)]
