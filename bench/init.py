"""Bench for where new rows start (issue 23, docs/init.md): each `ruadapt swap` init rule, before and after CPT.

On a small pretrained base (the demo's, or the smaller one of docs/init.md) and its Russian extensions
(`ruadapt tokenizer train --mode extend`, one per --extensions size), for every initialisation:
1. `ruadapt swap` with that rule (untied: INPUT/OUTPUT, e.g. ``mean/mean-all``; tied: one rule);
2. the start: `ruadapt eval --start-base base` — bits per byte on held-out ru/en text next to the base's own, the gap,
   and the diagnostics of the new rows (bytes in new tokens, bpb at new vs old tokens, greedy predictions);
3. CPT stage 1 through the real `ruadapt train` (the demo's recipes/cpu-tiny/cpt-embeddings.yaml, 2 CPU processes):
   one run per init and --seeds entry (the seed fixes the data order, the same for every init), as long as the
   longest --steps; its eval loss on held-out Russian lines every --eval-every steps (same tokenizer for every init
   of an extension, so losses compare) gives the figures at each of --steps, `ruadapt eval` of the output the exact
   bits per byte (ru and en) at the end — one launch per run, because a launch costs minutes on a busy CPU;
4. steps to reach the reference's (``mean/mean``, today's default) eval loss at --target-step: linear
   interpolation of each init's eval-loss curve.

A swapped model made by another command (e.g. a distillation stage) joins as ``--swapped NAME@SIZE=DIR``.

    python bench/init.py --base runs/demo/base --corpus runs/demo/data/ru_train.txt \\
        [--replay-corpus runs/demo/data/en_train.txt] [--extensions 8000,2000] [--steps 50,150,300] [--seeds 0,1] \\
        [--cpt-inits mean/mean,mean/mean-all] \\
        [--eval-lines 300] [--workdir runs/bench-init] [--json bench/results/init.json]

Prints a markdown table and writes the JSON (every figure, the commands' wall times, the options).
`python bench/init.py --report bench/results/init-replay.json` prints the tables of an earlier run again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, run_measured, table

REFERENCE = "mean/mean"  # the FVT baseline, ruadapt's default before this bench
DEFAULT_INITS = (
    "mean/mean",
    "weighted/weighted",
    "last/first",
    "mean/first",
    "mean/all",
    "mean/mean-all",
    "mean/first-all",
    "mean/mean-norm",
    "mean-norm/mean-all",
    "last/mean-all",
    "mean-norm/all",
)


def slug(init: str) -> str:
    return init.replace("/", "+")


def ruadapt(*args: str, log: list, env: dict | None = None) -> dict:
    """One real CLI command (``python -m ruadapt``), timed; appended to ``log``."""
    cmd = [sys.executable, "-m", "ruadapt", "-q", *map(str, args)]
    t = run_measured(cmd, env={"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), **(env or {})})
    log.append({"cmd": " ".join(map(str, cmd[2:])), **t})
    print(f"  {t['wall_s']:7.1f} s  ruadapt {' '.join(map(str, args[:2]))} … {args[-1]}", flush=True)
    return t


def init_flags(init: str, tied: bool) -> list[str]:
    if tied:
        if "/" in init:
            raise SystemExit(f"bench/init.py: --inits {init}: the base is tied; give one rule per init")
        return ["--init", init]
    if "/" not in init:
        raise SystemExit(f"bench/init.py: --inits {init}: the base is untied; give INPUT/OUTPUT, e.g. mean/mean-all")
    a, b = init.split("/")
    return ["--init-input", a, "--init-output", b]


def evaluate(models: dict[str, Path], out: Path, args, log: list) -> dict:
    """`ruadapt eval` of ``models`` (the first is the base) with the start diagnostics; returns report.json.

    An earlier report in ``out`` is reused only if it scored exactly these models (names and paths): a relaunch
    with one more ``--swapped`` model evaluates them all again rather than miss the new one."""
    report = out / "report.json"
    if report.is_file():
        done = json.loads(report.read_text(encoding="utf-8"))["models"]
        wanted = {name: str(path.resolve()) for name, path in models.items()}
        if {name: str(Path(m["path"]).resolve()) for name, m in done.items()} != wanted:
            shutil.rmtree(out)  # the bench's own work folder, made by an earlier launch
    if not report.is_file():
        flags = [x for name, path in models.items() for x in ("--model", f"{name}={path}")]
        ruadapt(
            "eval",
            *flags,
            "--start-base",
            "base",
            "--text",
            f"ru={args.ru_eval}",
            "--text",
            f"en={args.en_eval}",
            "--max-lines",
            args.eval_lines,
            "--window",
            args.window,
            "--speed-prompts",
            "0",
            "--device",
            "cpu",
            "--out",
            out,
            log=log,
        )
    return json.loads(report.read_text(encoding="utf-8"))


def steps_to(target: float, curve: list[tuple[int, float]]) -> float | None:
    """First step where the piecewise-linear ``curve`` (step, bpb) reaches ``target`` (None: not within it)."""
    for (s0, b0), (s1, b1) in itertools.pairwise(curve):
        if b0 <= target:
            return float(s0)
        if b1 <= target:
            return s0 + (s1 - s0) * (b0 - target) / (b0 - b1)
    return float(curve[-1][0]) if curve and curve[-1][1] <= target else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, help="pretrained base model dir (with its tokenizer)")
    ap.add_argument("--corpus", type=Path, help="Russian training text: tokenizer extension and CPT")
    ap.add_argument(
        "--replay-corpus",
        type=Path,
        default=None,
        help="the base's own languages (e.g. runs/demo/data/en_train.txt): CPT runs the --cpt-config's data mix as the "
        "recipe does (REPLAY_CORPUS); without it CPT trains on --corpus alone",
    )
    ap.add_argument("--ru-eval", type=Path, default=SHARED / "data" / "ru_eval.txt")
    ap.add_argument("--en-eval", type=Path, default=SHARED / "data" / "en_eval.txt")
    ap.add_argument("--extensions", default="8000,2000", help="new-token counts, comma-separated; CPT on the first")
    ap.add_argument("--inits", default=",".join(DEFAULT_INITS), help="INPUT/OUTPUT rules (tied base: one rule)")
    ap.add_argument(
        "--cpt-inits", default=None, help=f"inits that get CPT (default: {REFERENCE}, the best start, every --swapped)"
    )
    ap.add_argument(
        "--swapped",
        action="append",
        default=[],
        metavar="NAME@SIZE=DIR",
        help="a swapped model made by another command for the extension of SIZE new tokens",
    )
    ap.add_argument("--steps", default="50,150,300", help="CPT stage-1 lengths, one run each")
    ap.add_argument(
        "--target-step", type=int, default=None, help="the reference's figure to reach (default: the middle of --steps)"
    )
    ap.add_argument("--seeds", default="0,1", help="train.seed of each CPT run (the data order)")
    ap.add_argument("--cpt-config", type=Path, default=ROOT / "recipes" / "cpu-tiny" / "cpt-embeddings.yaml")
    ap.add_argument("--num-gpus", type=int, default=2, help="CPU processes of each CPT run")
    ap.add_argument("--master-port", type=int, default=29641)
    ap.add_argument("--eval-lines", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=10, help="CPT steps between eval losses on held-out Russian")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-init")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "init.json")
    ap.add_argument("--report", type=Path, metavar="JSON", help="only print the tables of an earlier run's JSON")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text(encoding="utf-8"))))
        return
    if not (args.base and args.corpus):
        ap.error("--base and --corpus are required (or --report JSON)")

    t_start = time.time()
    base = args.base.resolve()
    tied = bool(json.loads((base / "config.json").read_text()).get("tie_word_embeddings", False))
    reference = REFERENCE if not tied else "mean"
    sizes = [int(x) for x in args.extensions.split(",")]
    inits = [x for x in args.inits.split(",") if x]
    if reference not in inits:
        inits.insert(0, reference)
    steps = sorted(int(x) for x in args.steps.split(",") if x)
    seeds = [int(x) for x in args.seeds.split(",") if x]
    target_step = args.target_step or (steps[len(steps) // 2] if steps else None)
    extra: dict[int, dict[str, Path]] = {}
    for spec in args.swapped:
        name, _, path = spec.partition("=")
        name, _, size = name.partition("@")
        extra.setdefault(int(size), {})[name] = Path(path).resolve()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    result: dict = {
        "bench": "init",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(sys.argv),
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "base": str(base),
        "tied": tied,
        "reference": reference,
        "target_step": target_step,
        "replay_corpus": str(args.replay_corpus.resolve()) if args.replay_corpus else None,
        "steps": steps,
        "seeds": seeds,
        "extensions": {},
    }

    for size in sizes:
        print(f"# +{size} tokens", flush=True)
        tok = work / f"tok-{size}"
        if not (tok / "tokenizer.json").is_file():
            ruadapt(
                "tokenizer",
                "train",
                "--base",
                base,
                "--corpus",
                args.corpus,
                "--mode",
                "extend",
                "--new-tokens",
                size,
                "--out",
                tok,
                log=log,
            )
        models: dict[str, Path] = {}
        for init in inits:
            out = work / f"swap-{size}-{slug(init)}"
            if not (out / "config.json").is_file():
                ruadapt("swap", "--model", base, "--tokenizer", tok, "--out", out, *init_flags(init, tied), log=log)
            models[init] = out
        models.update(extra.get(size, {}))
        start = evaluate({"base": base, **models}, work / f"eval-start-{size}", args, log)
        per_init: dict[str, dict] = {}
        for init in models:
            per_init[init] = {"start": {lang: start["start"]["models"][init][lang] for lang in ("ru", "en")}}
        base_bpb = {lang: start["bpb"]["base"][lang]["bpb"] for lang in ("ru", "en")}
        ref_gap = per_init[reference]["start"]["ru"]["gap"]
        for init, r in per_init.items():
            r["gap_ratio_to_reference"] = r["start"]["ru"]["gap"] / ref_gap if ref_gap else None
        ext = {"new_tokens": size, "base_bpb": base_bpb, "inits": per_init}
        result["extensions"][str(size)] = ext

        if size != sizes[0] or not steps or not seeds:
            save(result, log, t_start, args.json)
            continue
        best = min(inits, key=lambda i: per_init[i]["start"]["ru"]["bpb"])
        cpt_inits = (
            [x for x in args.cpt_inits.split(",") if x]
            if args.cpt_inits
            else list(dict.fromkeys([reference, best, *extra.get(size, {})]))
        )
        ext["cpt_inits"] = cpt_inits
        # one CPT launch per (init, seed), as long as the longest --steps; its eval loss on the held-out Russian
        # lines every --eval-every steps gives the curve, `ruadapt eval` of its output the exact final figure
        heldout = work / "ru_eval_cpt.txt"
        if not heldout.is_file():
            with open(args.ru_eval, encoding="utf-8") as f:
                lines = [ln for ln in (next(f, "") for _ in range(args.eval_lines)) if ln.strip()]
            heldout.write_text("".join(lines), encoding="utf-8")
        train_env = {
            "DS_CONFIGS": str(ROOT / "recipes" / "deepspeed"),
            "RUN": str(work),
            "CORPUS": str(args.corpus.resolve()),
            "REPLAY_CORPUS": str(args.replay_corpus.resolve()) if args.replay_corpus else "",
            "CPT_STEPS": str(steps[-1]),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        # the YAML's data mix (Russian + the replay share), or Russian alone
        data_train = [] if args.replay_corpus else ["--set", f'data.train=["{args.corpus.resolve()}"]']
        trained: dict[str, Path] = {}
        curves: dict[str, dict[int, list[float]]] = {}
        for init in cpt_inits:
            for seed in seeds:
                out = work / f"cpt-{size}-{slug(init)}-s{seed}-{steps[-1]}"
                if not (out / "config.json").is_file():
                    ruadapt(
                        "train",
                        "--config",
                        args.cpt_config,
                        "--num-gpus",
                        args.num_gpus,
                        "--master-port",
                        args.master_port,
                        "--set",
                        f"model={models[init]}",
                        "--set",
                        f"out={out}",
                        "--set",
                        f"train.max_steps={steps[-1]}",
                        "--set",
                        f"train.seed={seed}",
                        "--set",
                        f"train.save_steps={steps[-1]}",
                        "--set",
                        f"train.eval_steps={args.eval_every}",
                        *data_train,
                        "--set",
                        f'data.eval=["{heldout}"]',
                        log=log,
                        env=train_env,
                    )
                trained[f"{init}|{seed}"] = out
                rec = json.loads((out / "ruadapt_train.json").read_text(encoding="utf-8"))["result"]
                for e in rec["eval_losses"]:
                    curves.setdefault(init, {}).setdefault(int(e["step"]), []).append(float(e["loss"]))
        after = evaluate({"base": base, **trained}, work / f"eval-cpt-{size}", args, log)
        for init in cpt_inits:
            r = per_init[init]
            curve = {n: statistics.fmean(v) for n, v in sorted(curves[init].items())}
            r["eval_loss_curve"] = {str(n): v for n, v in curve.items()}
            r["eval_loss_at"] = {str(n): curve.get(n) for n in steps}
            final = {lang: [after["bpb"][f"{init}|{s}"][lang]["bpb"] for s in seeds] for lang in ("ru", "en")}
            r["final"] = {
                lang: {"mean": statistics.fmean(v), "seeds": v, "gap": statistics.fmean(v) / base_bpb[lang] - 1}
                for lang, v in final.items()
            }
        ref_curve = per_init[reference].get("eval_loss_at") if reference in cpt_inits else None
        target = ref_curve.get(str(target_step)) if ref_curve else None
        ext["target_eval_loss"] = target
        for init in cpt_inits:
            r = per_init[init]
            pts = [(int(n), v) for n, v in r["eval_loss_curve"].items()]
            r["steps_to_target"] = steps_to(target, pts) if target is not None else None

        save(result, log, t_start, args.json)  # after each extension: a long run leaves what it measured
    save(result, log, t_start, args.json)
    print(report(result))
    print(f"\nwrote {args.json} ({result['wall_s']:.0f} s)")


def save(result: dict, log: list, t_start: float, path: Path) -> None:
    result["commands"] = log
    result["wall_s"] = round(time.time() - t_start, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def bpb_from_loss(r: dict, steps: list[int]) -> dict[int, float]:
    """Russian bits per byte at the --steps before the last, from the eval loss (nats/token on the held-out lines).

    Every init of an extension shares one tokenizer and one held-out text, so bits per byte = loss × (tokens per
    byte / ln 2), a constant; it is taken from the same init's own exact `ruadapt eval` figure at the last step
    (the two evaluations window the text differently, so the inits' ratios agree to ≈ 0.3 %, not exactly)."""
    last = r["eval_loss_at"].get(str(steps[-1]))
    if not last:
        return {}
    ratio = r["final"]["ru"]["mean"] / last
    return {n: r["eval_loss_at"][str(n)] * ratio for n in steps[:-1] if r["eval_loss_at"].get(str(n)) is not None}


def report(result: dict) -> str:
    """Markdown tables: the start of every init per extension, then bpb after CPT and steps to the target."""
    f = "{:.3f}".format
    out = []
    for size, ext in result["extensions"].items():
        b = ext["base_bpb"]
        out += ["", f"## +{size} tokens — base: ru {f(b['ru'])}, en {f(b['en'])} bits/byte", ""]
        rows = []
        for init, r in ext["inits"].items():
            ru, en = r["start"]["ru"], r["start"]["en"]
            rows.append(
                {
                    "init (input/lm_head)": init,
                    "ru bpb": f(ru["bpb"]),
                    "ru gap": f"{100 * ru['gap']:+.1f} %",
                    "gap ÷ mean/mean": f(r["gap_ratio_to_reference"]) if r["gap_ratio_to_reference"] else "",
                    "en bpb": f(en["bpb"]),
                    "ru bytes in new": f"{100 * ru['new_byte_share']:.0f} %",
                    "ru bpb new/old": f"{f(ru['bpb_new'])} / {f(ru['bpb_old'])}",
                    "greedy new": f"{100 * ru['new_prediction_share']:.1f} %",
                    "never predicted": f"{ru['new_never_predicted']}",
                }
            )
        out.append(table(rows, list(rows[0])))
        if ext.get("cpt_inits"):
            steps = result["steps"]
            rows = []
            for init in ext["cpt_inits"]:
                r = ext["inits"][init]
                row = {"init": init}
                for n in steps:
                    v = r["eval_loss_at"].get(str(n))
                    row[f"ru loss @{n}"] = "" if v is None else f(v)
                fin = r["final"]
                for n, v in bpb_from_loss(r, steps).items():
                    row[f"ru bpb @{n}*"] = f(v)
                row[f"ru bpb @{steps[-1]}"] = f"{f(fin['ru']['mean'])} ({100 * fin['ru']['gap']:+.1f} %)"
                row[f"en bpb @{steps[-1]}"] = f"{f(fin['en']['mean'])} ({100 * fin['en']['gap']:+.1f} %)"
                s_ = r.get("steps_to_target")
                t = ext["target_eval_loss"]
                row[f"steps to loss {f(t) if t else '?'}"] = "not reached" if s_ is None else f"{s_:.0f}"
                rows.append(row)
            out += [
                "",
                f"CPT stage 1, one {steps[-1]}-step run per init and seed (seeds {result['seeds']}, the same "
                f"data order for every init): eval loss (nats/token) on held-out Russian lines at each step, "
                f"`ruadapt eval` bits per byte at the end (gap to the base); target: {result['reference']}'s loss "
                f"at step {result['target_step']}. *: bits per byte at earlier steps from the eval loss, scaled by "
                "the run's own bpb ÷ loss at the end (one tokenizer and text: the ratio is tokens per byte / ln 2)",
                "",
                table(rows, list(rows[0])),
            ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
