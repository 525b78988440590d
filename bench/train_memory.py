"""Bench: memory of the whole ``ruadapt train`` process tree on a big and a small corpus (issue 25, point 7).

Claim: rank memory does not grow with the corpus. The token files are memory-mapped and every per-item lookup is
arithmetic on the map (no per-document or per-token array on a rank), so on a ~600 MB corpus each rank stays within
0.5 GB of what it uses on a ~6 MB one, and the summed proportional memory (PSS) of every process of the run
(``ruadapt train``, its tokenizer workers, the DeepSpeed runner, ``launch.py``, the ranks) stays ≤ 3 GB.

The small corpus is ``../shared/data`` train text (ru + en lines, repeated up to the size asked) and is prepared
by ``ruadapt train`` from an empty token cache; the big one is the small file repeated k times, and its token file
is the small one's repeated k times (exact for a repeated file; ``--tokenize-big`` lets ``ruadapt train`` tokenize
it instead, which takes hours on 2 busy cores). The model is a tiny Qwen2 (hidden 16, 2 layers, the real Qwen2.5
tokenizer and its 151,936 rows, untied: ≈ 5 M parameters), trained for a few steps, stage embeddings, ZeRO-2.
The tree is sampled every ``--interval`` seconds with psutil (PSS and USS from ``/proc/PID/smaps_rollup``).

    DS_ACCELERATOR=cpu .venv/bin/python bench/train_memory.py                      # 600 MB and 6 MB
    DS_ACCELERATOR=cpu .venv/bin/python bench/train_memory.py --big-mb 60 --steps 2   # a quicker look

Prints per-process peaks and a summary table; writes bench/results/train_memory.json (``--json``). The work
dir is a temp dir removed at the end unless ``--workdir`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MB = 1 << 20
GB = 1 << 30


def build_corpus(path: Path, megabytes: float) -> dict:
    """``megabytes`` of real train text: the ru and en train lines of ``../shared/data``, repeated as needed."""
    lines = []
    for name in ("ru_train.txt", "en_train.txt"):
        with open(SHARED / "data" / name, encoding="utf-8") as f:
            lines += [ln for ln in f if ln.strip()]
    want = int(megabytes * MB)
    written = docs = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < want:
            for ln in lines:
                out.write(ln)
                written += len(ln.encode("utf-8"))
                docs += 1
                if written >= want:
                    break
    return {"path": str(path), "bytes": path.stat().st_size, "documents": docs}


def repeat_corpus(small: Path, big: Path, megabytes: float) -> int:
    """``big`` = ``small`` repeated ``k`` whole times (k from ``megabytes``); returns k."""
    k = max(1, round(megabytes * MB / small.stat().st_size))
    data = small.read_bytes()
    with open(big, "wb") as f:
        f.writelines(data for _ in range(k))
    return k


def prepare_by_repeating(cfg_path: Path, small_entry: Path, k: int) -> Path:
    """Put the big corpus' token file into its cache as ``k`` copies of the small corpus' one, under the key
    ruadapt computes (``prepare_run`` with the encoder replaced), so ``ruadapt train`` finds it prepared.

    Exact, not an approximation: every line is a document encoded on its own and followed by EOS, so the token
    stream of a file repeated k times is the file's stream repeated k times. Why: tokenizing 600 MB takes
    ~3 min on 16 free cores but hours on 2 shared ones; the ranks, whose memory this bench is about, see the same
    files either way (the preparation's own memory is measured on the small corpus, and is per block anyway)."""
    import numpy as np

    import ruadapt.train.prepare as prepare
    from ruadapt.train.config import load_config
    from ruadapt.train.tokenfile import open_token_file

    tf = open_token_file(small_entry)
    lengths = np.diff(np.asarray(tf.offsets))
    real = prepare.write_documents  # the name prepare_run calls (imported there from ruadapt.train.cpt)

    def repeated(tokenizer_json, blocks, writer, **kw) -> dict:
        for _ in range(k):
            writer.add_flat(np.asarray(tf.tokens), lengths)
        return {
            "chars": 0,
            "seconds": 0.0,
            "workers": 0,
            "tokens_per_s": 0.0,
            "repeated_from": str(small_entry),
            "k": k,
        }

    prepare.write_documents = repeated
    try:
        manifest = prepare.prepare_run(load_config(cfg_path), progress=False)
    finally:
        prepare.write_documents = real
    return Path(manifest["train"][0]["entry"])


def role(p: psutil.Process, root: int) -> str:
    """What a process of the tree is, from its command line and environment."""
    if p.pid == root:
        return "ruadapt train"
    try:
        cmd = " ".join(p.cmdline())
        env = p.environ()
    except (psutil.Error, OSError):
        return "?"
    if "ruadapt.train" in cmd and "--local_rank" in cmd or "LOCAL_RANK" in env and "ruadapt.train" in cmd:
        return f"rank {env.get('RANK', '?')}"
    if "deepspeed.launcher.launch" in cmd or "launch.py" in cmd:
        return "launch.py"
    if "multiprocessing" in cmd and "resource_tracker" in cmd:
        return "resource tracker"
    if "multiprocessing" in cmd or "spawn_main" in cmd:
        return "tokenizer worker"
    if "deepspeed" in cmd:
        return "deepspeed runner"
    return cmd[:60]


class TreeSampler(threading.Thread):
    """Samples every process under ``root`` until stopped: per-process peaks and the peak of the tree's sums."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop = threading.Event()
        self.procs: dict[int, dict] = {}  # pid -> role, peak pss/uss/rss
        self.peak_sum = {"pss": 0, "uss": 0, "rss": 0, "t": 0.0, "processes": 0}
        self.peak_sum_training = dict(self.peak_sum)  # while any rank is alive
        self.t0 = time.perf_counter()

    def sample(self) -> None:
        try:
            top = psutil.Process(self.root)
            tree = [top, *top.children(recursive=True)]
        except psutil.Error:
            return
        total = {"pss": 0, "uss": 0, "rss": 0}
        ranks = False
        for p in tree:
            try:
                m = p.memory_full_info()
            except (psutil.Error, OSError):
                continue
            info = self.procs.setdefault(p.pid, {"role": role(p, self.root), "pss": 0, "uss": 0, "rss": 0})
            ranks |= info["role"].startswith("rank")
            for k in total:
                v = int(getattr(m, k, 0) or 0)
                total[k] += v
                info[k] = max(info[k], v)
        t = round(time.perf_counter() - self.t0, 1)
        for peak, on in ((self.peak_sum, True), (self.peak_sum_training, ranks)):
            if on and total["pss"] > peak["pss"]:
                peak.update(total, t=t, processes=len(tree))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(work: Path, name: str, model: Path, corpus: Path, args: argparse.Namespace) -> Path:
    """The run YAML: CPT stage ``embeddings`` under ZeRO-2, its own token cache, no held-out blocks."""
    import yaml

    cfg = {
        "task": "cpt",
        "model": str(model),
        "out": str(work / f"out-{name}"),
        "stage": "embeddings",
        "deepspeed": str(ROOT / "recipes" / "deepspeed" / "zero2.json"),
        "block_size": args.block,
        "data": {"train": [str(corpus)], "eval_blocks": 0, "cache_dir": str(work / f"cache-{name}")},
        "train": {
            "micro_batch_size": args.micro,
            "grad_accum": 1,
            "max_steps": args.steps,
            "lr": 1e-4,
            "warmup_steps": 0,
            "save_steps": args.steps,
            "log_steps": 1,
            "seed": 1,
            **({"logits_mb": args.logits_mb} if args.logits_mb is not None else {}),
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_train(work: Path, name: str, path: Path, args: argparse.Namespace) -> dict:
    """One ``ruadapt train`` launch (with the preparation, unless the token file is there) with its tree sampled."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    cmd = [
        sys.executable,
        "-m",
        "ruadapt.cli",
        "train",
        "--config",
        str(path),
        "--num-gpus",
        str(args.num_gpus),
        "--master-port",
        str(free_port()),
    ]
    t0 = time.perf_counter()
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        sampler = TreeSampler(proc.pid, args.interval)
        sampler.start()
        rc = proc.wait()
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(
            f"{name}: ruadapt train failed ({rc}); see {work / f'{name}.log'}:\n"
            + (work / f"{name}.log").read_text()[-3000:]
        )
    rec = json.loads((work / f"out-{name}" / "ruadapt_train.json").read_text())
    entry = next(p for p in (work / f"cache-{name}").glob("cpt-*") if p.is_dir())
    meta = json.loads((entry / "meta.json").read_text())
    procs = sorted(sampler.procs.values(), key=lambda d: d["role"])
    return {
        "name": name,
        "corpus_bytes": meta["source"]["bytes"],
        "documents": meta["n_docs"],
        "tokens": meta["n_tokens"],
        "prepare_s": meta.get("seconds"),
        "wall_s": round(wall, 1),
        "last_loss": rec["result"]["last_loss"],
        "peak_tree_pss_gb": round(sampler.peak_sum["pss"] / GB, 3),
        "peak_tree_pss_training_gb": round(sampler.peak_sum_training["pss"] / GB, 3),
        "peak_tree": sampler.peak_sum,
        "peak_tree_training": sampler.peak_sum_training,
        "processes": [{**p, **{k: round(p[k] / MB, 1) for k in ("pss", "uss", "rss")}} for p in procs],
    }


def rank_peaks(result: dict, key: str = "pss") -> dict[str, float]:
    """Peak of each rank (MB), by role name."""
    return {p["role"]: p[key] for p in result["processes"] if p["role"].startswith("rank")}


def build_model(path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_tiny_model

    if not (path / "config.json").is_file():
        make_tiny_model(path, "qwen2", tied=False, max_shard_size="20MB")
        # the tiny model says 256 positions; rotary embeddings have no weights, so longer blocks only need the config
        cfg = json.loads((path / "config.json").read_text())
        cfg["max_position_embeddings"] = 4096
        (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None, help="kept after the run (default: a temp dir, removed)")
    ap.add_argument("--big-mb", type=float, default=600.0, help="size of the big corpus (MB)")
    ap.add_argument("--small-mb", type=float, default=6.0, help="size of the small corpus (MB)")
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--logits-mb", type=int, default=None, help="train.logits_mb (default: ruadapt's; 0 = all logits at once)"
    )
    ap.add_argument("--num-gpus", type=int, default=2, help="processes (CPU: DS_ACCELERATOR=cpu)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples of the process tree")
    ap.add_argument("--limit-gb", type=float, default=3.0, help="claim: peak summed PSS of the tree on the big corpus")
    ap.add_argument(
        "--tokenize-big",
        action="store_true",
        help="let ruadapt train tokenize the big corpus too (default: its token file is the small one's "
        "repeated, which is exact for a repeated corpus; tokenizing 600 MB takes hours on 2 busy cores)",
    )
    ap.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "train_memory.json", help="where the figures go"
    )
    ap.add_argument("--rank-slack-gb", type=float, default=0.5, help="claim: each rank's growth big vs small")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ruadapt-train-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = build_model(work / "model")
        small_txt, big_txt = work / "small.txt", work / "big.txt"
        facts = build_corpus(small_txt, args.small_mb)
        print(f"small: {facts['bytes'] / MB:,.1f} MB, {facts['documents']:,} documents; training ...", flush=True)
        small = run_train(work, "small", write_config(work, "small", model, small_txt, args), args)
        big_cfg = write_config(work, "big", model, big_txt, args)
        k = repeat_corpus(small_txt, big_txt, args.big_mb)
        if not args.tokenize_big:
            entry = next(p for p in (work / "cache-small").glob("cpt-*") if p.is_dir())
            prepare_by_repeating(big_cfg, entry, k)
        print(f"big: {big_txt.stat().st_size / MB:,.1f} MB (the small corpus × {k}); training ...", flush=True)
        big = run_train(work, "big", big_cfg, args)
        big["prepared_by"] = "ruadapt train" if args.tokenize_big else f"small token file × {k}"
        results = [small, big]
        growth = {r: round((big_v - rank_peaks(small).get(r, 0.0)) / 1024, 3) for r, big_v in rank_peaks(big).items()}
        ok_tree = big["peak_tree_pss_gb"] <= args.limit_gb
        ok_ranks = all(g <= args.rank_slack_gb for g in growth.values())
        summary = {
            "block": args.block,
            "micro": args.micro,
            "logits_mb": args.logits_mb,
            "steps": args.steps,
            "processes": args.num_gpus,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "runs": results,
            "rank_growth_gb": growth,
            "tree_within_limit": ok_tree,
            "ranks_within_slack": ok_ranks,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        for r in results:
            print(
                f"\n{r['name']}: {r['corpus_bytes'] / MB:,.1f} MB, {r['documents']:,} documents, "
                f"{r['tokens']:,} tokens, "
                f"preparation {r['prepare_s']} s, launch {r['wall_s']} s"
            )
            print("| process | peak PSS MB | peak USS MB | peak RSS MB |\n|---|---|---|---|")
            for p in r["processes"]:
                print(f"| {p['role']} | {p['pss']:,.0f} | {p['uss']:,.0f} | {p['rss']:,.0f} |")
            print(
                f"peak summed PSS of the tree: {r['peak_tree_pss_gb']} GB (while ranks ran: "
                f"{r['peak_tree_pss_training_gb']} GB)"
            )
        print(f"\nrank growth big vs small (GB, PSS): {growth} (claim ≤ {args.rank_slack_gb}: {ok_ranks})")
        print(f"peak summed PSS on the big corpus: {big['peak_tree_pss_gb']} GB (claim ≤ {args.limit_gb}: {ok_tree})")
        print(f"written {args.json}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
