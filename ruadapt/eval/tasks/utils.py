"""Helpers the shipped lm-eval task YAMLs refer to with ``!function utils.<name>``.

Data paths arrive through ``dataset_kwargs`` at run time (lm-eval calls ``custom_dataset`` with the task's
metadata and dataset_kwargs as keyword arguments), so no path is ever written into a YAML.
"""

from __future__ import annotations

from typing import Any

import datasets

from ruadapt.eval.data import read_lines


def lines_dataset(path: str | None = None, max_lines: int | None = None, **_: Any) -> datasets.DatasetDict:
    """The non-empty lines of a UTF-8 text file as a ``test`` split with one ``text`` column."""
    if not path:
        raise ValueError("bpb task: dataset_kwargs.path is not set (ruadapt eval sets it from --text LANG=FILE)")
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": read_lines(path, max_lines=max_lines)})})


def copy_paragraphs(path: str, max_docs: int = 100, min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """The first ``max_docs`` lines of ``path`` with ``min_chars``..``max_chars`` characters."""
    return [line for line in read_lines(path) if min_chars <= len(line) <= max_chars][:max_docs]


def copy_dataset(
    path: str | None = None, max_docs: int = 100, min_chars: int = 40, max_chars: int = 300, **_: Any
) -> datasets.DatasetDict:
    if not path:
        raise ValueError("copy task: dataset_kwargs.path is not set (ruadapt eval sets it from --text ru=FILE)")
    texts = copy_paragraphs(path, max_docs, min_chars, max_chars)
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": texts})})


def copy_scores(answer: str, reference: str) -> dict[str, float]:
    """Exact match after stripping surrounding whitespace, and the length ratio of answer to reference."""
    answer = answer.strip()
    return {"exact_match": float(answer == reference.strip()), "length_ratio": len(answer) / len(reference)}


def copy_results(doc: dict, results: list[str]) -> dict[str, float]:
    return copy_scores(results[0], doc["text"])
