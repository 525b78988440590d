"""``ruadapt tokenizer train``: a Russian-focused tokenizer from a base one (docs/design.md §2).

* **extend** — continue the base BPE: the corpus is normalized and pre-tokenized exactly as the base does, each
  word segmented by the base model, then the most frequent adjacent pair merged until N new tokens exist
  (:mod:`ruadapt.tokenizer.bpe`). New merges rank after all base merges, new ids start at ``len(base)``,
  everything else (normalizer, pre-tokenizer, decoder, post-processor, ``ignore_merges``, byte fallback,
  special tokens, chat template) is the base's, byte for byte. llama.cpp's check text keeps the base's
  segmentation (:mod:`ruadapt.vocab.checktext`), so llama.cpp's stock converter still recognises the tokenizer.
* **replace** — a new BPE trained by ``tokenizers`` on the same training words, with the base's
  normalizer/pre-tokenizer/decoder; the base's added (special, chat) tokens appended with the same strings and
  the old → new id of each written to ``token_id_map.json`` for the later stages.

Ids are checked after reloading what was written, with both ``tokenizers`` and transformers ``AutoTokenizer``:
``tokenizers`` gives an added token the id ``model vocab size + k`` unless its content is in the model vocab,
so every added token is also put into the model vocab under its own id.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..errors import RuadaptError, require
from ..io.corpus import check_corpus, corpus_format, iter_documents, refuse_json_as_text
from ..io.outdir import atomic_output_dir, check_output_dir
from ..io.record import StageRecord, sha256_file
from ..io.tokdir import (
    copy_tokenizer_files,
    load_tokenizer,
    sync_added_tokens_decoder,
    tokenizer_json_path,
    tokenizer_size,
    write_json,
)
from ..options import TokenizerTrainOptions
from ..vocab.checktext import CHECK_TEXT, adjacent_pairs, check_text_words
from ..vocab.pieces import BYTE_LEVEL, SENTENCEPIECE, detect_family
from .bpe import MergeResult, learn_merges
from .words import CorpusInfo, count_words, follows_sentencepiece_rules, sentencepiece_piece_ok

log = logging.getLogger(__name__)

TOKEN_ID_MAP = "token_id_map.json"
VERIFY_LINES = 1000  # training lines re-encoded by both libraries after writing


def train_tokenizer(base: Path, corpora: list[Path], out: Path, **options: Any) -> dict:
    """Train a tokenizer from ``base`` on ``corpora`` into ``out`` (atomic); returns the ``ruadapt_tokenizer.json``
    record. ``options``: the other fields of :class:`ruadapt.options.TokenizerTrainOptions`."""
    if "allow" in options:
        options["allow"] = tuple(options["allow"])
    return write_trained(
        plan_tokenizer_train(TokenizerTrainOptions(base=base, corpora=tuple(corpora), out=out, **options))
    )


@dataclass
class TokenizerTrainPlan:
    """What :func:`plan_tokenizer_train` checked and loaded; :func:`write_trained` learns and writes it."""

    options: TokenizerTrainOptions
    base: Path
    corpora: list[Path]
    base_json: Path
    base_tok: Tokenizer
    family: str
    record: StageRecord

    def format_dry_run(self) -> str:
        """What ``tokenizer train --dry-run`` prints: the mode, the base and its size, each corpus with its size on
        disk, the target size and the output folder. Nothing of the corpus is read beyond its first lines."""
        o = self.options
        n_base = tokenizer_size(self.base_tok)
        if o.mode == "extend":
            assert o.new_tokens is not None  # checked by options.check()
            target = f"{o.new_tokens:,} new tokens → at most {n_base + o.new_tokens:,} tokens"
        else:
            assert o.vocab_size is not None
            n_added = len(self.base_tok.get_added_tokens_decoder())
            target = f"a new BPE of {o.vocab_size:,} tokens (the base's {n_added:,} added tokens included)"
        lines = [
            "ruadapt tokenizer train --dry-run: checked the inputs; nothing was written",
            f"mode            {o.mode}",
            f"base            {self.base} ({self.family}, {n_base:,} tokens)",
        ]
        for c in self.corpora:
            fmt, compression = corpus_format(c)
            kind = f"{fmt}, {compression}" if compression else fmt
            lines.append(f"corpus          {c} ({c.stat().st_size:,} bytes, {kind})")
        lines += [
            f"target          {target}; a pair must occur at least {o.min_frequency:,} times",
            f"out             {o.out} (not created)",
            "note            the corpus is counted and the merges are learned by the real run, which also checks "
            "that the base is a BPE"
            + (" and that --vocab-size leaves room for merges" if o.mode == "replace" else "")
            + " (fewer tokens are learned when too few pairs occur often enough)",
        ]
        return "\n".join(lines)


def plan_tokenizer_train(options: TokenizerTrainOptions) -> TokenizerTrainPlan:
    """Check the options, the base tokenizer, every corpus file and the output before the corpus is read."""
    options.check()
    base = Path(options.base).expanduser()
    corpora = [Path(c).expanduser() for c in options.corpora]
    base_json = tokenizer_json_path(base, "--base")
    for c in corpora:
        check_corpus(c)
        refuse_json_as_text(c, "--corpus", options.allow)
    check_output_dir(Path(options.out), [base, *corpora])
    base_tok = load_tokenizer(base, "--base")
    family = detect_family(base_tok)
    record = StageRecord("tokenizer", options.record_options())
    record.input(
        "base", base, tokenizer_json_sha256=sha256_file(base_json), tokens=tokenizer_size(base_tok), family=family
    )
    return TokenizerTrainPlan(options, base, corpora, base_json, base_tok, family, record)


def write_trained(plan: TokenizerTrainPlan) -> dict:
    """Count the corpus's words, learn the new spec, write it atomically and verify it on reload."""
    opts, record, base, corpora, base_tok = plan.options, plan.record, plan.base, plan.corpora, plan.base_tok
    out = Path(opts.out).expanduser()
    with record.timed("count_words"):
        counts, infos = count_words(base_tok, plan.family, corpora, progress=opts.progress)
    record.set("corpora", [i.as_dict() for i in infos])
    record.set("words", {"total": sum(counts.values()), "distinct": len(counts)})

    spec = json.loads(plan.base_json.read_text(encoding="utf-8"))
    id_map: dict[str, list[int]] = {}
    if opts.mode == "extend":
        assert opts.new_tokens is not None  # checked by options.check()
        spec, facts, check_words = extend_spec(
            spec,
            base_tok,
            plan.family,
            counts,
            opts.new_tokens,
            opts.min_frequency,
            record,
            opts.progress,
            keep_check_text=opts.keep_check_text,
        )
    else:
        assert opts.vocab_size is not None
        spec, facts, id_map = replace_spec(
            spec, base_tok, plan.family, counts, opts.vocab_size, opts.min_frequency, record, opts.progress
        )
        check_words = []
    record.update(facts)

    with atomic_output_dir(out, [base, *corpora]) as tmp:
        with record.timed("write"):
            copy_tokenizer_files(base, tmp)
            # written as JSON directly (same key order as the base's file): deterministic, and one parse of a
            # 33 MB Gemma file less than building a Tokenizer first; verify_tokenizer loads it back
            (tmp / "tokenizer.json").write_text(
                json.dumps(spec, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
            )
            if opts.mode == "replace":
                sync_added_tokens_decoder(tmp, Tokenizer.from_file(str(tmp / "tokenizer.json")))
                write_json(tmp / TOKEN_ID_MAP, {"base": str(base.resolve()), "added_tokens": id_map})
        with record.timed("verify"):
            record.set("verify", verify_tokenizer(tmp, base_tok, facts, infos, check_words, id_map))
        record.set("llama_cpp_check_text", facts["llama_cpp_check_text"])  # with the verified segmentation_kept
        record.write(tmp)
    log.info("wrote %s: %d tokens (%s)", out, facts["tokens"], opts.mode)
    return record.data


def _merge_format(spec: dict) -> str:
    merges = spec["model"].get("merges") or []
    return "list" if merges and isinstance(merges[0], list) else "string"


def extend_spec(
    spec: dict,
    base_tok: Tokenizer,
    family: str,
    counts: dict[str, int],
    n_new: int,
    min_frequency: int,
    record: StageRecord,
    progress: bool,
    *,
    keep_check_text: bool = True,
) -> tuple[dict, dict[str, Any], list[tuple[str, list[int]]]]:
    """The base ``tokenizer.json`` dict with ``n_new`` continued-BPE tokens and their merges appended, the facts
    for the record, and (word, segmentation) pairs of the most frequent words that the result must reproduce.

    With ``keep_check_text`` no new merge joins two base tokens that stand side by side in llama.cpp's check text
    (nor, with ``ignore_merges``, makes a check-text word one token), so the check text keeps its base ids."""
    model = spec["model"]
    added = _extendable_added_tokens(model, base_tok)
    n_base = tokenizer_size(base_tok)
    word_list = list(counts)
    word_counts = [counts[w] for w in word_list]
    with record.timed("segment_words"):
        bpe = base_tok.model
        seqs = [[t.id for t in bpe.tokenize(w)] for w in word_list]
    tokens_before = sum(len(s) * c for s, c in zip(seqs, word_counts))

    rules = _MergeRules.of(model, base_tok, family, added, keep_check_text)
    with record.timed("learn_merges"):
        res = _learn_new_merges(seqs, word_counts, word_list, rules, n_base, n_new, min_frequency, progress)
    tokens_after = sum(len(s) * c for s, c in zip(res.words, word_counts))
    _append_new_tokens(spec, added, res)

    facts = {
        "mode": "extend",
        "family": family,
        "base_tokens": n_base,
        "new_tokens": len(res.new_tokens),
        "new_merges": len(res.merges),
        "tokens": n_base + len(res.new_tokens),
        "new_id_range": [n_base, n_base + len(res.new_tokens)],
        "ignore_merges": rules.ignore_merges,
        "merges_skipped_base_result": res.skipped_base_results,
        "sentencepiece_piece_rules": rules.sp_rules,
        "merges_skipped_piece_rules": res.skipped_not_allowed,
        "stopped_early": res.stopped or None,
        "training_tokens_before": tokens_before,
        "training_tokens_after": tokens_after,
        # segmentation_kept is set by verify_tokenizer, after reloading what was written
        "llama_cpp_check_text": {"pairs_forbidden": len(rules.forbidden_pairs), "merges_skipped": res.skipped_forbidden}
        if keep_check_text
        else {},
    }
    top = sorted(range(len(word_list)), key=lambda k: -word_counts[k])[:5000]
    return spec, facts, [(word_list[k], res.words[k]) for k in top]


def _extendable_added_tokens(model: dict, base_tok: Tokenizer) -> dict[str, int]:
    """The base's added tokens (content → id), after checking that the base is a BPE whose added tokens have the
    ids its model vocab gives them (extending would otherwise move one)."""
    require(
        model.get("type") == "BPE",
        f"--base: a {model.get('type')} tokenizer cannot be extended with BPE merges (only BPE tokenizers)",
    )
    vocab: dict[str, int] = model["vocab"]
    added = {t.content: i for i, t in base_tok.get_added_tokens_decoder().items()}
    for content, i in added.items():
        if content in vocab and vocab[content] != i:
            raise RuadaptError(
                f"--base: added token {content!r} has id {i} but model vocab id {vocab[content]}; fix the base "
                "tokenizer.json"
            )
    return added


@dataclass
class _MergeRules:
    """What new merges must respect, read from the base before any is learned (see :func:`learn_merges`)."""

    pieces: dict[int, str]  # id -> vocabulary string
    all_strings: dict[str, int]  # every base string, added tokens included: a merge must not produce one
    blocked: set[int]  # ids never merged: added tokens, byte-fallback pieces, unk
    ignore_merges: bool
    sp_rules: bool  # the base's SentencePiece piece rules (no mixed scripts, no joined digits) apply
    forbidden_pairs: set[tuple[int, int]]  # llama.cpp's check text's adjacent base tokens
    forbidden_words: set[str]  # check-text words that must not become one token (with ignore_merges)

    @classmethod
    def of(
        cls, model: dict, base_tok: Tokenizer, family: str, added: dict[str, int], keep_check_text: bool
    ) -> _MergeRules:
        """The rules of extending ``base_tok`` (its ``tokenizer.json`` model ``model``, not yet extended)."""
        vocab: dict[str, int] = model["vocab"]
        blocked: set[int] = set(added.values())
        if family == SENTENCEPIECE:  # byte-fallback pieces spell bytes, not text: "<0xD0>"+"<0x90>" is no token
            blocked |= {i for p, i in vocab.items() if _byte_piece(p)}
        if model.get("unk_token") in vocab:
            blocked.add(vocab[model["unk_token"]])
        ignore_merges = bool(model.get("ignore_merges"))
        all_strings = dict(vocab)
        all_strings.update(added)
        return cls(
            pieces={i: p for p, i in vocab.items()},
            all_strings=all_strings,
            blocked=blocked,
            ignore_merges=ignore_merges,
            # a SentencePiece-trained base never mixes scripts or joins digits (Gemma: "2020" is 4 tokens, no
            # "'s"): new merges keep that, so text the corpus did not target tokenizes as before
            sp_rules=family == SENTENCEPIECE and follows_sentencepiece_rules(vocab),
            forbidden_pairs=adjacent_pairs(base_tok) if keep_check_text else set(),
            forbidden_words=set(check_text_words(base_tok)) if keep_check_text and ignore_merges else set(),
        )


def _learn_new_merges(
    seqs: list[list[int]],
    word_counts: list[int],
    word_list: list[str],
    rules: _MergeRules,
    n_base: int,
    n_new: int,
    min_frequency: int,
    progress: bool,
) -> MergeResult:
    """Learn up to ``n_new`` merges on the base segmentations ``seqs`` (modified in place), new ids from
    ``n_base``; a warning when fewer were found."""
    t0 = time.perf_counter()
    res = learn_merges(
        seqs,
        word_counts,
        rules.pieces,
        first_id=n_base,
        n_new=n_new,
        min_frequency=min_frequency,
        base_vocab=rules.all_strings,
        blocked=rules.blocked,
        word_strings=word_list if rules.ignore_merges else None,
        allowed=sentencepiece_piece_ok if rules.sp_rules else None,
        forbidden_pairs=rules.forbidden_pairs,
        forbidden_results=rules.forbidden_words,
        progress=progress,
    )
    log.info(
        "learned %d merges (%d new tokens) in %.1f s", len(res.merges), len(res.new_tokens), time.perf_counter() - t0
    )
    if len(res.new_tokens) < n_new:
        log.warning(
            "only %d of %d new tokens: %s (use a larger corpus or a lower --min-frequency)",
            len(res.new_tokens),
            n_new,
            res.stopped,
        )
    return res


def _append_new_tokens(spec: dict, added: dict[str, int], res: MergeResult) -> None:
    """Put the new tokens into the model vocab and their merges after the base's, in the base's merge format;
    every added token goes into the model vocab under its own id, so ``tokenizers`` cannot renumber it."""
    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    # keep every added token's id: tokenizers numbers added tokens absent from the model vocab from its size
    for content, i in added.items():
        vocab.setdefault(content, i)
    for s, i in res.new_tokens.items():
        vocab[s] = i
    fmt = _merge_format(spec)
    for a, b in res.merges:
        if fmt == "string":
            if " " in a or " " in b:
                raise RuadaptError(
                    f"--base: merge pieces {a!r} {b!r} contain a space and cannot be written as 'a b' merges"
                )
            model["merges"].append(f"{a} {b}")
        else:
            model["merges"].append([a, b])


def _byte_piece(p: str) -> bool:
    """A byte-fallback piece, ``<0x00>``..``<0xFF>``."""
    return len(p) == 6 and p.startswith("<0x") and p.endswith(">")


def replace_spec(
    spec: dict,
    base_tok: Tokenizer,
    family: str,
    counts: dict[str, int],
    vocab_size: int,
    min_frequency: int,
    record: StageRecord,
    progress: bool,
) -> tuple[dict, dict[str, Any], dict[str, list[int]]]:
    """The base ``tokenizer.json`` dict with a new BPE model trained by ``tokenizers`` on the training words.

    The words are already normalized and pre-tokenized (SentencePiece-style ones split at ``▁``), so the trainer
    sees each as one pre-token; the base's normalizer, pre-tokenizer, decoder and model flags are kept. Layout:
    the trained vocabulary from 0, then ``<0x00>``..``<0xFF>`` for byte-fallback models, then the base's added
    tokens in their base order (also in the model vocab, so their ids cannot move).
    """
    model = spec["model"]
    require(
        model.get("type") == "BPE",
        f"--base: a {model.get('type')} tokenizer; --mode replace trains BPE and needs a BPE base",
    )
    added = sorted(base_tok.get_added_tokens_decoder().items())
    n_bytes = 256 if model.get("byte_fallback") else 0
    n_model, alphabet = _replacement_model_size(vocab_size, family, len(added), n_bytes)
    with record.timed("learn_merges"):
        trained = _train_bpe(counts, n_model, min_frequency, alphabet, progress)
    _check_trained_size(trained, vocab_size, n_model, len(added), n_bytes, min_frequency)
    vocab: dict[str, int] = dict(sorted(trained["vocab"].items(), key=lambda kv: kv[1]))
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in trained["merges"]]
    for b in range(n_bytes):
        piece = f"<0x{b:02X}>"
        if piece not in vocab:
            vocab[piece] = len(vocab)
    id_map, new_added = _append_added_tokens(vocab, added, spec)
    next_id = len(vocab)

    new_model = dict(model)
    new_model["vocab"] = vocab
    new_model["merges"] = [f"{a} {b}" for a, b in merges] if _merge_format(spec) == "string" else merges
    spec["model"] = new_model
    spec["added_tokens"] = new_added
    _remap_post_processor(spec.get("post_processor"), {c: n for c, (_, n) in id_map.items()})
    facts = {
        "mode": "replace",
        "family": family,
        "base_tokens": tokenizer_size(base_tok),
        "tokens": next_id,
        "trained_tokens": len(trained["vocab"]),
        "merges": len(merges),
        "byte_fallback_pieces": n_bytes,
        "added_tokens": len(added),
        "added_id_range": [next_id - len(added), next_id],
        "llama_cpp_check_text": {},  # renumbered ids: llama.cpp's converter needs `ruadapt gguf` (the base's name)
    }
    return spec, facts, id_map


def _replacement_model_size(vocab_size: int, family: str, n_added: int, n_bytes: int) -> tuple[int, list[str]]:
    """The trained BPE's size (``vocab_size`` less the added tokens and byte-fallback pieces) and its initial
    alphabet (the 256 byte symbols of a byte-level family); a one-line error when that leaves no room for merges."""
    from tokenizers import pre_tokenizers

    n_model = vocab_size - n_added - n_bytes
    alphabet = pre_tokenizers.ByteLevel.alphabet() if family == BYTE_LEVEL else []
    minimum = n_added + n_bytes + max(len(alphabet), 1) + 1
    require(
        n_model > len(alphabet),
        f"--vocab-size {vocab_size}: too small; the base's {n_added} added tokens"
        + (", 256 byte-fallback pieces" if n_bytes else "")
        + (", 256 byte symbols" if alphabet else "")
        + f" and some merges need at least {minimum}",
    )
    return n_model, alphabet


def _train_bpe(counts: dict[str, int], n_model: int, min_frequency: int, alphabet: list[str], progress: bool) -> dict:
    """A BPE of at most ``n_model`` tokens trained by ``tokenizers`` on every training word as often as it occurs;
    its ``tokenizer.json`` model dict (``vocab``, ``merges``)."""
    from tokenizers import models, trainers

    trainer = trainers.BpeTrainer(
        vocab_size=n_model,
        min_frequency=min_frequency,
        show_progress=progress,
        initial_alphabet=alphabet,
        special_tokens=[],
    )
    learner = Tokenizer(models.BPE())
    total = sum(counts.values())

    def words():
        for w, c in counts.items():
            for _ in range(c):
                yield w

    learner.train_from_iterator(words(), trainer=trainer, length=total)
    return json.loads(learner.to_str())["model"]


def _check_trained_size(
    trained: dict, vocab_size: int, n_model: int, n_added: int, n_bytes: int, min_frequency: int
) -> None:
    """An error when the corpus's symbols alone overflow the trained part; a warning when fewer tokens were
    learned than asked for."""
    if len(trained["vocab"]) > n_model:
        raise RuadaptError(
            f"--vocab-size {vocab_size}: too small; the corpus has {len(trained['vocab'])} distinct symbols, plus "
            f"the base's {n_added} added tokens{' and 256 byte-fallback pieces' if n_bytes else ''}: "
            f"use more than {len(trained['vocab']) + n_added + n_bytes}"
        )
    if len(trained["vocab"]) < n_model:
        log.warning(
            "only %d of %d BPE tokens learned: no more pairs occur %d times or more",
            len(trained["vocab"]),
            n_model,
            min_frequency,
        )


def _append_added_tokens(
    vocab: dict[str, int], added: list[tuple[int, Any]], spec: dict
) -> tuple[dict[str, list[int]], list[dict]]:
    """Append the base's added tokens, in their base order, to ``vocab`` (in place); returns content → [old id,
    new id] and the new ``added_tokens`` entries (the base's entries with their new ids)."""
    id_map: dict[str, list[int]] = {}
    new_added = []
    base_added_spec = {t["content"]: t for t in spec.get("added_tokens", [])}
    for old_id, tok in added:
        if tok.content in vocab:
            raise RuadaptError(
                f"--base: added token {tok.content!r} was also learned as a normal token; this should not happen"
            )
        next_id = len(vocab)
        vocab[tok.content] = next_id
        id_map[tok.content] = [old_id, next_id]
        entry = dict(base_added_spec.get(tok.content, {}))
        entry.update({"id": next_id, "content": tok.content})
        new_added.append(entry)
    return id_map, new_added


def _remap_post_processor(node: Any, new_ids: dict[str, int]) -> None:
    """Point the special tokens of a (TemplateProcessing) post-processor at their new ids, in place."""
    if isinstance(node, dict):
        specials = node.get("special_tokens")
        if isinstance(specials, dict):
            for entry in specials.values():
                if isinstance(entry, dict) and "tokens" in entry:
                    entry["ids"] = [new_ids[t] for t in entry["tokens"]]
        for v in node.values():
            _remap_post_processor(v, new_ids)
    elif isinstance(node, list):
        for v in node:
            _remap_post_processor(v, new_ids)


def verify_tokenizer(
    out_dir: Path,
    base_tok: Tokenizer,
    facts: dict,
    infos: list[CorpusInfo],
    check_words: list[tuple[str, list[int]]],
    id_map: dict[str, list[int]],
) -> dict:
    """Reload what was written (``tokenizers`` and transformers) and check ids; a mismatch is an error, so a
    tokenizer that moved an id is never left behind. Returns what was checked, for the record."""
    path = out_dir / "tokenizer.json"
    new_tok = Tokenizer.from_file(str(path))
    checked = _check_reloaded_ids(path, new_tok, base_tok, facts, id_map)
    _check_resegmentation(path, new_tok, base_tok, facts, check_words)
    checked["words_resegmented_identically"] = len(check_words)
    lines = list(itertools.islice(iter_documents(infos[0].path), VERIFY_LINES))
    ids = _check_round_trip(path, new_tok, lines)
    checked["lines_round_trip"] = len(lines)
    checked.update(_check_transformers(out_dir, new_tok, lines, ids))
    return checked


def _check_reloaded_ids(
    path: Path, new_tok: Tokenizer, base_tok: Tokenizer, facts: dict, id_map: dict[str, list[int]]
) -> dict[str, Any]:
    """extend: every base token (added ones too) at its base id; replace: every added token at its mapped id;
    both: the size the facts state."""
    new_vocab = new_tok.get_vocab(with_added_tokens=True)
    new_added = {i: t.content for i, t in new_tok.get_added_tokens_decoder().items()}
    checked: dict[str, Any] = {}
    if facts["mode"] == "extend":
        base_vocab = base_tok.get_vocab(with_added_tokens=True)
        moved = [(s, i, new_vocab.get(s)) for s, i in base_vocab.items() if new_vocab.get(s) != i]
        if moved:
            raise RuadaptError(
                f"{path}: {len(moved)} base tokens changed id after reload (first: {moved[0]}); nothing written"
            )
        base_added = {i: t.content for i, t in base_tok.get_added_tokens_decoder().items()}
        if base_added != new_added:
            raise RuadaptError(f"{path}: added tokens differ from the base's after reload; nothing written")
        checked["base_ids_kept"] = len(base_vocab)
    else:
        wrong = [c for c, (_, n) in id_map.items() if new_added.get(n) != c or new_vocab.get(c) != n]
        if wrong:
            raise RuadaptError(
                f"{path}: {len(wrong)} added tokens are not at their mapped ids after reload (first {wrong[0]!r})"
            )
        checked["added_tokens_remapped"] = len(id_map)
    n = tokenizer_size(new_tok)
    if n != facts["tokens"]:
        raise RuadaptError(f"{path}: {n} tokens after reload, expected {facts['tokens']}")
    return checked


def _check_resegmentation(
    path: Path, new_tok: Tokenizer, base_tok: Tokenizer, facts: dict, check_words: list[tuple[str, list[int]]]
) -> None:
    """The most frequent training words segment as in training, and llama.cpp's check text keeps the base's ids
    where extend forbade the pairs that would change it (``facts["llama_cpp_check_text"]["segmentation_kept"]``
    is set either way)."""
    bad = [w for w, s in check_words if [t.id for t in new_tok.model.tokenize(w)] != s]
    if bad:
        raise RuadaptError(
            f"{path}: {len(bad)} training words segment differently after reload (first {bad[0]!r}); nothing written"
        )
    # llama.cpp's converter hashes the ids of its check text: equal ids -> the base's hash -> a stock conversion works
    kept = new_tok.encode(CHECK_TEXT).ids == base_tok.encode(CHECK_TEXT).ids
    facts["llama_cpp_check_text"]["segmentation_kept"] = kept
    if facts["mode"] == "extend" and facts["llama_cpp_check_text"].get("pairs_forbidden") is not None and not kept:
        raise RuadaptError(
            f"{path}: llama.cpp's check text segments differently from the base despite the forbidden pairs; nothing "
            "written"
        )


def _check_round_trip(path: Path, new_tok: Tokenizer, lines: list[str]) -> list[list[int]]:
    """Every line decodes back to itself; returns the lines' ids."""
    ids = [e.ids for e in new_tok.encode_batch(lines, add_special_tokens=False)]
    not_round = sum(new_tok.decode(x, skip_special_tokens=False) != line for x, line in zip(ids, lines))
    if not_round:
        raise RuadaptError(f"{path}: {not_round} of {len(lines)} training lines do not decode back to themselves")
    return ids


def _check_transformers(out_dir: Path, new_tok: Tokenizer, lines: list[str], ids: list[list[int]]) -> dict[str, Any]:
    """transformers' ``AutoTokenizer`` on the written folder agrees with ``tokenizers``: size, every id, the lines'
    ids and llama.cpp's check text."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(out_dir))
    n = tokenizer_size(new_tok)
    if len(hf) != n:
        raise RuadaptError(f"{out_dir}: transformers AutoTokenizer has {len(hf)} tokens, tokenizers {n}")
    hf_vocab = hf.get_vocab()
    diff = sum(hf_vocab.get(s) != i for s, i in new_tok.get_vocab(with_added_tokens=True).items())
    if diff:
        raise RuadaptError(f"{out_dir}: transformers AutoTokenizer gives {diff} tokens another id than tokenizers")
    hf_ids = hf(lines, add_special_tokens=False)["input_ids"]
    if hf_ids != ids:
        k = sum(a != b for a, b in zip(hf_ids, ids))
        raise RuadaptError(
            f"{out_dir}: transformers AutoTokenizer encodes {k} of {len(lines)} lines differently from tokenizers"
        )
    if hf.encode(CHECK_TEXT) != new_tok.encode(CHECK_TEXT).ids:  # what llama.cpp's converter calls
        raise RuadaptError(
            f"{out_dir}: transformers AutoTokenizer encodes llama.cpp's check text differently from tokenizers"
        )
    return {"lines_same_ids_transformers": len(lines), "transformers_class": type(hf).__name__}
