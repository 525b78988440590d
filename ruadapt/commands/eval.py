"""``ruadapt eval --model NAME=DIR ... --text LANG=FILE ... --out DIR``"""

from __future__ import annotations

import argparse
import sys

from ..eval.data import parse_named
from ..options import EvalOptions, SpeedMode
from . import add_parser, add_revision, choices, path_arg, resolve_named

EXIT_FAILED = 1  # the report was written but a measure in it has no number (2 = bad input, nothing written)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "eval",
        help="bits per byte, generation speed and lm-eval tasks for one or more models, side by side",
        description="Compare models (e.g. a base and its Russian adaptation) on the same bytes: bits per byte on "
        "plain text (every token scored, first after BOS/EOS) and on the assistant turns of chat JSONL (prompt as "
        "context), chars/token and bytes/token, greedy generation speed in chars/s and tokens/s (models alternating, "
        "warm-up excluded), and lm-eval tasks: ruadapt's offline ones (bpb_<LANG>, copy_ru), your own task YAMLs "
        "(--include-path) or lm-eval's registry tasks. Writes report.json, "
        "report.md, bpb.png, speed.png and ruadapt_eval.json into --out. Exit status: 0 when every measure has a "
        "number; 1 when one has none (NaN bits per byte, an lm-eval task that scored nothing: listed on stderr and "
        'under "failures" in report.json, the rest of the report is written); 2 on bad input (nothing written).',
        examples="""\
ruadapt eval --model base=./Qwen2.5-7B --model ru=./Qwen2.5-7B-ru \\
    --text ru=data/ru_eval.txt --text en=data/en_eval.txt --device cuda --out runs/eval
ruadapt eval --model inst=./inst --model lep=./lep --chat ru_chat=heldout.jsonl --out runs/eval-chat
ruadapt eval --model base=./base --model ru=./ru --text ru=data/ru_eval.txt \\
    --tasks bpb_ru,copy_ru --task-limit 50 --out runs/eval-tasks
ruadapt eval --model inst=./inst --model lep=./lep --include-path ./my_tasks \\
    --tasks ru_qa --out runs/eval-my-tasks            # ./my_tasks/*.yaml, lm-eval's task format
ruadapt eval --model base=./base --model ru=./ru --tasks belebele_rus_Cyrl,arc_ru \\
    --task-limit 200 --out runs/eval-bench            # lm-eval's registry (data from the Hub or its cache)
ruadapt eval --model inst=./inst --include-path ./my_tasks --tasks ru_qa \\
    --system-instruction "Отвечай кратко, по-русски." --out runs/eval-sys
ruadapt eval --model base=./base --model swapped=./swapped --start-base base --speed-prompts 0 \\
    --text ru=data/ru_eval.txt --text en=data/en_eval.txt --out runs/eval-start   # a swap's start, docs/init.md""",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a model directory or Hub repo id (repeat; the first is the baseline of speed ratios)",
    )
    p.add_argument("--text", action="append", metavar="LANG=FILE", help="plain text, one document per line (repeat)")
    p.add_argument(
        "--chat",
        action="append",
        metavar="LANG=FILE",
        help='chat JSONL {"messages": [...]}: bpb of assistant turns, conversation before them as context',
    )
    p.add_argument(
        "--prompts", type=path_arg, metavar="FILE", help="speed prompts, one per line (default: the --text ru file)"
    )
    p.add_argument(
        "--tasks",
        default="",
        metavar="T1,T2",
        help="lm-eval tasks: ruadapt's bpb_<LANG> for each --text LANG and copy_ru (needs --text ru or "
        "--copy-file), tasks of --include-path dirs, or any task of lm-eval's registry (e.g. "
        "belebele_rus_Cyrl; its dataset must be reachable or in the Hugging Face cache)",
    )
    p.add_argument(
        "--include-path",
        action="append",
        type=path_arg,
        default=[],
        metavar="DIR",
        help="a directory of your own lm-eval task YAMLs whose task names --tasks may use "
        "(repeat; as lm-eval's --include_path)",
    )
    p.add_argument(
        "--system-instruction",
        default=None,
        metavar="TEXT",
        help="system message for the lm-eval tasks' prompts (as lm-eval's --system_instruction): "
        "through the chat template for generation tasks, else prepended as text",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda when torch sees a GPU, else cpu), cpu, cuda or cuda:N; the record keeps the one used",
    )
    p.add_argument(
        "--dtype", default="auto", help="auto (float32 on cpu, bfloat16 on cuda), float32, bfloat16, float16"
    )
    p.add_argument(
        "--window",
        type=int,
        default=1024,
        help="tokens per forward pass for bpb and lm-eval (capped by every model's max positions)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="window step for long texts (default = window: lm-eval's loglikelihood_rolling policy)",
    )
    p.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per bpb forward batch")
    p.add_argument("--max-lines", type=int, default=None, help="use only the first N lines of each --text/--chat file")
    p.add_argument("--speed-prompts", type=int, default=8, help="prompts for the speed test (0 = skip it)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt in the speed test")
    p.add_argument(
        "--speed-mode",
        default="greedy",
        choices=choices(SpeedMode),
        help="greedy: the model's own continuation; reference: forced to the rest of the prompt line "
        "(real Russian text even from an untrained body)",
    )
    p.add_argument(
        "--speed-rounds",
        type=int,
        default=5,
        help="rounds of the speed test (every prompt on every model each round); figures are medians "
        "over rounds with their spread",
    )
    p.add_argument("--copy-file", type=path_arg, metavar="FILE", help="paragraphs for copy_ru (default: --text ru)")
    p.add_argument(
        "--task-batch-size",
        type=int,
        default=1,
        help="requests per lm-eval batch (lm-eval's --batch_size); generation pads on the left",
    )
    p.add_argument("--task-limit", type=int, default=None, help="documents per lm-eval task (default: all)")
    p.add_argument(
        "--start-base",
        default=None,
        metavar="NAME",
        help="the --model the others were swapped from: adds, per --text, the share of bytes in tokens it "
        "lacks, bpb at new vs old tokens, greedy predictions of new tokens, new tokens never predicted",
    )
    p.add_argument("--out", type=path_arg, required=True, help="new output directory")
    add_revision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.run import plan_eval, run_eval

    options = EvalOptions(
        models=resolve_named(args.model, "--model", args.revision),
        out=args.out,
        texts=parse_named(args.text, "--text"),
        chats=parse_named(args.chat, "--chat"),
        prompts=args.prompts,
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        device=args.device,
        dtype=args.dtype,
        window=args.window,
        stride=args.stride,
        batch_tokens=args.batch_tokens,
        max_lines=args.max_lines,
        speed_prompts=args.speed_prompts,
        new_tokens=args.new_tokens,
        speed_mode=args.speed_mode,
        speed_rounds=args.speed_rounds,
        copy_file=args.copy_file,
        task_limit=args.task_limit,
        task_batch_size=args.task_batch_size,
        include_paths=tuple(args.include_path),
        system_instruction=args.system_instruction,
        start_base=args.start_base,
    )
    report = run_eval(plan_eval(options))
    print((args.out / "report.md").read_text(encoding="utf-8"))
    sys.stdout.flush()  # the report first, then what failed in it
    for failure in report["failures"]:
        print(f"ruadapt eval: failed: {failure}", file=sys.stderr)
    return EXIT_FAILED if report["failures"] else 0
