"""``ruadapt trim``: shrink a vocabulary to the tokens a corpus uses.

* :mod:`.tokenizer` – which tokens must stay (specials, alphabet, BPE closure) and the rebuilt tokenizer.json;
* :mod:`.corpus`    – token counts, chars/token and segmentation changes before/after;
* :mod:`.stage`     – :func:`trim_model` (weights + tokenizer) and :func:`trim_tokenizer` (tokenizer only).
"""

from .stage import ID_MAP_FILE, format_report, plan_trim, select_tokens, trim_model, trim_tokenizer, write_trim

__all__ = ["ID_MAP_FILE", "format_report", "plan_trim", "select_tokens", "trim_model", "trim_tokenizer", "write_trim"]
