"""A Hugging Face tokenizer directory: find it, load it, copy it, and keep token ids in configs consistent.

Both a tokenizer-only dir and a model dir holding the tokenizer files are accepted wherever ``--tokenizer`` or
``--base`` is asked for.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from ..errors import RuadaptError
from .checkpoint import read_json

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)
# ids that configs carry and that move when the vocabulary is replaced or trimmed
TOKEN_ID_KEYS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "unk_token_id",
    "decoder_start_token_id",
    "sep_token_id",
)


def tokenizer_json_path(directory: Path | str, option: str = "--tokenizer") -> Path:
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise RuadaptError(f"{directory}: {option} directory not found")
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise RuadaptError(
            f"{directory}: no tokenizer.json ({option} needs a fast tokenizer; save one with "
            "AutoTokenizer.from_pretrained(dir).save_pretrained(dir))"
        )
    return path


def load_tokenizer(directory: Path | str, option: str = "--tokenizer") -> Tokenizer:
    """The raw ``tokenizers.Tokenizer`` of a directory, with a one-line error if it is missing or broken."""
    path = tokenizer_json_path(directory, option)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise RuadaptError(f"{path}: not a readable tokenizer.json ({e})") from None


def tokenizer_size(tok: Tokenizer) -> int:
    """``len(tokenizer)`` as transformers counts it: highest id + 1 over model vocab and added tokens."""
    ids = list(tok.get_vocab(with_added_tokens=True).values())
    return max(ids) + 1 if ids else 0


def copy_tokenizer_files(src: Path, dst: Path, *, fallback_chat_template_from: Path | None = None) -> list[str]:
    """Copy the tokenizer files of ``src`` into ``dst`` (never the slow vocab.json/merges.txt of another
    vocabulary). If ``src`` has no chat template, take the one of ``fallback_chat_template_from``."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied.append(name)
    if fallback_chat_template_from is not None and chat_template(Path(dst)) is None:
        template = chat_template(Path(fallback_chat_template_from))
        if template is not None:
            set_chat_template(Path(dst), template)
            copied.append("chat_template (from base)")
    return copied


def chat_template(directory: Path) -> str | dict | None:
    """The chat template a directory carries (chat_template.jinja, chat_template.json or tokenizer_config.json)."""
    directory = Path(directory)
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    if (directory / "chat_template.json").is_file():
        return read_json(directory / "chat_template.json").get("chat_template")
    cfg = directory / "tokenizer_config.json"
    if cfg.is_file():
        return read_json(cfg).get("chat_template")
    return None


def set_chat_template(directory: Path, template: str | dict) -> None:
    """Store ``template`` in ``tokenizer_config.json`` (replacing any separate template file)."""
    directory = Path(directory)
    for name in ("chat_template.jinja", "chat_template.json"):
        (directory / name).unlink(missing_ok=True)
    cfg_path = directory / "tokenizer_config.json"
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    cfg["chat_template"] = template
    write_json(cfg_path, cfg)


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def sync_added_tokens_decoder(directory: Path, tok: Tokenizer) -> None:
    """Make ``tokenizer_config.json``'s ``added_tokens_decoder`` list exactly the added tokens (and ids) of
    ``tok``, so transformers cannot re-add a token under another id."""
    cfg_path = Path(directory) / "tokenizer_config.json"
    if not cfg_path.is_file():
        return
    cfg = read_json(cfg_path)
    if "added_tokens_decoder" not in cfg:
        return
    cfg["added_tokens_decoder"] = {
        str(i): {
            "content": t.content,
            "lstrip": t.lstrip,
            "normalized": t.normalized,
            "rstrip": t.rstrip,
            "single_word": t.single_word,
            "special": t.special,
        }
        for i, t in sorted(tok.get_added_tokens_decoder().items())
    }
    write_json(cfg_path, cfg)


def remap_token_ids(config: dict, old: Tokenizer, new: Tokenizer, *, where: str = "config.json") -> dict[str, list]:
    """Rewrite every token id in ``config`` (bos/eos/pad/...; ints or lists) from ``old``'s id to the id the same
    token string has in ``new``. Returns ``{key: [old, new]}`` for what changed; a token ``new`` lacks is an error."""
    changes: dict[str, list] = {}

    def one(key: str, i: int) -> int:
        token = old.id_to_token(i)
        if token is None:
            return i  # not a real token of the old vocabulary (e.g. a padding id past it): leave as is
        j = new.token_to_id(token)
        if j is None:
            raise RuadaptError(f"{where}: {key} {i} is token {token!r}, which the new tokenizer lacks")
        return j

    for key in TOKEN_ID_KEYS:
        value = config.get(key)
        if value is None:
            continue
        new_value: int | list[int]
        if isinstance(value, list):
            new_value = [one(key, int(v)) for v in value]
        else:
            new_value = one(key, int(value))
        if new_value != value:
            changes[key] = [value, new_value]
            config[key] = new_value
    return changes


def remap_model_configs(
    model_dir: Path, config: dict, old: Tokenizer, new: Tokenizer
) -> tuple[dict, dict | None, dict]:
    """Copies of ``config`` (the parsed config.json of ``model_dir``) and of its generation_config.json (``None``
    when absent) with every token id moved from ``old``'s ids to ``new``'s (:func:`remap_token_ids`), and
    ``{file: {key: [old, new]}}`` of what changed. The one place swap, LEP and trim keep configs and vocabulary in
    step."""
    model_dir = Path(model_dir)
    config = dict(config)
    gen_path = model_dir / "generation_config.json"
    gen_config = read_json(gen_path) if gen_path.is_file() else None
    changes = {"config.json": remap_token_ids(config, old, new, where=str(model_dir / "config.json"))}
    if gen_config is not None:
        changes["generation_config.json"] = remap_token_ids(gen_config, old, new, where=str(gen_path))
    return config, gen_config, changes


# tokenizer_config.json keys that name special tokens (LEP takes them from the instruct model with its template)
SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "additional_special_tokens",
    "extra_special_tokens",
)


@dataclass
class TokenizerFiles:
    """How a stage's output tokenizer is made: the files of ``source``, holding exactly ``tokenizer``.

    ``rewrite``: save ``tokenizer`` as tokenizer.json instead of copying the source's bytes (trim renumbers ids).
    ``chat_from``: a directory whose chat template, special-token keys and special_tokens_map win over the
    source's (LEP: the instruct model's); ``fallback_chat_from``: used only when the source has no template
    (swap: the base model's)."""

    source: Path
    tokenizer: Tokenizer
    rewrite: bool = False
    chat_from: Path | None = None
    fallback_chat_from: Path | None = None


def write_tokenizer(dst: Path, spec: TokenizerFiles, rows: int | None = None) -> list[str]:
    """Write the tokenizer files of ``spec`` into ``dst`` and check them (:func:`check_written_tokenizer`).
    Returns what was written, for the stage record."""
    dst = Path(dst)
    copied = copy_tokenizer_files(spec.source, dst, fallback_chat_template_from=spec.fallback_chat_from)
    if spec.rewrite:
        spec.tokenizer.save(str(dst / "tokenizer.json"))
        copied.append("tokenizer.json (rewritten)")
    if spec.chat_from is not None:
        src = Path(spec.chat_from)
        template = chat_template(src)
        if template is not None:
            set_chat_template(dst, template)
            copied.append(f"chat_template (from {src.name})")
        if (src / "special_tokens_map.json").is_file():
            shutil.copyfile(src / "special_tokens_map.json", dst / "special_tokens_map.json")
            copied.append(f"special_tokens_map.json (from {src.name})")
        src_cfg, dst_cfg = src / "tokenizer_config.json", dst / "tokenizer_config.json"
        if src_cfg.is_file() and dst_cfg.is_file():
            theirs, ours = read_json(src_cfg), read_json(dst_cfg)
            ours.update({k: theirs[k] for k in SPECIAL_TOKEN_KEYS if k in theirs})
            write_json(dst_cfg, ours)
    sync_added_tokens_decoder(dst, spec.tokenizer)
    check_written_tokenizer(
        dst, spec.tokenizer, rows, copied_from=None if spec.rewrite else tokenizer_json_path(spec.source)
    )
    return copied


def check_written_tokenizer(
    directory: Path, expected: Tokenizer, rows: int | None = None, copied_from: Path | None = None
) -> None:
    """The one check of a written tokenizer (docs/design.md: always verify after saving): tokenizer.json reloads
    with every token (added ones included) at the id the matrices were built for, and no id lies past ``rows``.
    A file byte-identical to ``copied_from`` (the tokenizer.json ``expected`` was loaded from) needs no reload: equal
    bytes prove equal ids, and a 262k-token Gemma file takes seconds to parse."""
    path = Path(directory) / "tokenizer.json"
    if copied_from is not None and same_bytes(path, Path(copied_from)):
        vocab = expected.get_vocab(with_added_tokens=True)
    else:
        try:
            vocab = Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
        except Exception as e:
            raise RuadaptError(f"{path}: the written tokenizer does not load ({e}); output not written") from None
        if vocab != expected.get_vocab(with_added_tokens=True):
            raise RuadaptError(f"{path}: token ids changed on reload; output not written")
    if rows is not None and vocab and max(vocab.values()) >= rows:
        raise RuadaptError(
            f"{path}: token id {max(vocab.values())} lies past the {rows} embedding rows; output not written"
        )


def same_bytes(p: Path, q: Path) -> bool:
    """Two files with equal bytes (sizes compared first)."""
    return p.stat().st_size == q.stat().st_size and p.read_bytes() == q.read_bytes()


def tokenizer_pipeline(tokenizer_json: Path) -> dict:
    """The parts of a tokenizer.json that decide how text is cut before BPE and glued after it: model type,
    normalizer, pre-tokenizer and decoder. A new vocabulary only fits a model's embeddings when these are
    the model's own (a Llama-3 vocabulary on a Qwen model shares byte strings, not meanings)."""
    data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    return {
        "model": (data.get("model") or {}).get("type"),
        "normalizer": data.get("normalizer"),
        "pre_tokenizer": data.get("pre_tokenizer"),
        "decoder": data.get("decoder"),
    }
