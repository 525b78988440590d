"""Names, defaults and purposes of the rules that start a new vocabulary row (docs/init.md).

Kept free of torch so that ``ruadapt swap --help`` lists them without loading it; the arithmetic is in
:func:`ruadapt.vocab.pieces.averaged_rows`. A rule is a weighting of the token's pieces' rows under the base
tokenizer, optionally rescaled and/or pulled halfway towards ō, the mean of all old token rows.
"""

from __future__ import annotations

from typing import Literal, get_args

PURPOSE = {
    "mean": "the pieces' mean (FVT, the 2022 baseline)",
    "weighted": "weights halving from the first piece on",
    "first": "the first piece's row (tokensurgeon's lm_head rule)",
    "last": "the last piece's row (tokensurgeon's input rule: the body continues from where the pieces end)",
    "mean-norm": "the pieces' mean rescaled to the pieces' mean row norm (averaging shrinks norms)",
    "all": "ō, the mean of all old rows: the new token's logit is the model's average one",
    "mean-all": "halfway between the pieces' mean and ō",
    "first-all": "halfway between the first piece and ō (the untied lm_head default)",
    "last-all": "halfway between the last piece and ō (for a tied row, which is input and lm_head at once)",
}
PIECE_RULES = ("mean", "weighted", "first", "last")
# the choices of `ruadapt swap --init-input` and `--init-output` / `--init` (ruadapt.options.SwapOptions)
InputRule = Literal["mean", "weighted", "first", "last", "mean-norm"]
OutputRule = Literal["mean", "weighted", "first", "last", "mean-norm", "all", "mean-all", "first-all", "last-all"]
INPUT_RULES: tuple[str, ...] = get_args(InputRule)
OUTPUT_RULES: tuple[str, ...] = get_args(OutputRule)
RULES = OUTPUT_RULES
ALL_SHARE = 0.5  # the weight of ō in the *-all rules

# Defaults, chosen by bench/init.py (docs/init.md, 2026-12-07) on the demo's base and its tied twin, +8,000 and +2,000
# tokens. Untied: the pair with the best start on held-out Russian (+8,000: ru gap to the base +0.2 % against +12.0 %
# for mean/mean) and the fastest through CPT stage 1 of the rules that start well (mean/mean's 150-step loss in 90 /
# 132 steps; last/mean-all, the default before, 112 / 141; 2 seeds x 300 steps, English the same). last/first, which
# starts at +19-23 %, draws level by ~150 steps and ends 1,000 steps lowest, so the untied model recipes pass
# --init-output first (their SWAP_ARGS); the default here is for no CPT or a short one. Tied: the pieces'
# mean — `mean-all` starts far better (+0.5 % against +9.8 %) but then stalls, and mean of pieces passes it after
# ≈ 70 CPT steps and reaches a given loss in about half the steps (150 against 282).
DEFAULT_INPUT = "last"
DEFAULT_OUTPUT = "first-all"
DEFAULT_TIED = "mean"


def rule_parts(rule: str) -> tuple[str, float, bool]:
    """``rule`` → (piece weighting, share of ō, rescale to the pieces' mean norm)."""
    if rule not in RULES:
        raise ValueError(f"unknown init rule {rule!r}; use one of {', '.join(RULES)}")
    if rule == "all":
        return "mean", 1.0, False
    if rule.endswith("-all"):
        return rule[: -len("-all")], ALL_SHARE, False
    if rule == "mean-norm":
        return "mean", 0.0, True
    return rule, 0.0, False
