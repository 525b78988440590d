"""Tiny models of real architectures with the *real* base tokenizers, and where the tests' data lives.

Shared by the test modules (import as ``from tiny import ...``). Weights are random but seeded; the embedding
matrices have the padded row counts of the released checkpoints (e.g. Qwen2.5: 151,665 tokens, 151,936 rows).

The test data (base tokenizers and real text, never copied into the repository: see their licences) is read from
one folder, ``$RUADAPT_TEST_DATA``, default ``../shared`` beside the repository; this module is the one place
that reads the variable. Without the files, conftest.py skips the tests that use them, with ``data_skip_reason()``
saying where each one comes from publicly (docs/testing.md has the same list with checksums).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA_VAR = "RUADAPT_TEST_DATA"
SHARED = Path(os.environ.get(DATA_VAR) or ROOT.parent / "shared").resolve()
SHARED_TOKENIZERS = SHARED / "tokenizers"
SHARED_DATA = SHARED / "data"

# every file the tests read below SHARED -> where it comes from publicly. The tokenizer files are byte-identical to
# the Hub's (the sha256 pins the file where no Hub revision was recorded); the texts are extracted from the named
# corpora's public GitHub repositories, as docs/testing.md lists with commits, licences and each file's sha256.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
FIXTURES: dict[str, str] = {
    **{
        f"tokenizers/qwen2.5/{f}": "Hub Qwen/Qwen2.5-1.5B-Instruct (revision not recorded; tokenizer.json "
        "sha256 c0382117ea329cdf…, as in every Qwen2.5 repo)"
        for f in TOKENIZER_FILES
    },
    **{
        f"tokenizers/llama-3/{f}": "Hub meta-llama/Meta-Llama-3-8B (gated; mirror NousResearch/Meta-Llama-3-8B; "
        "revision not recorded; tokenizer.json sha256 e134af98b985517b…)"
        for f in TOKENIZER_FILES
    },
    **{
        f"tokenizers/mistral-nemo/{f}": "Hub mistralai/Mistral-Nemo-Instruct-2407 at revision "
        "04d8a90549d23fc6bd7f642064003592df51e9b3 (tokenizer.json sha256 e11c71726323d33d…)"
        for f in TOKENIZER_FILES
    },
    **{
        f"tokenizers/gemma-3/{f}": "Hub google/gemma-3-27b-it or unsloth/gemma-3-1b-it (revision not recorded; "
        "tokenizer.json sha256 4667f2089529e8e7…)"
        for f in TOKENIZER_FILES
    },
    **{
        f"tokenizers/testvectors/llama.cpp/ggml-vocab-{v}.gguf.{x}": "llama.cpp commit 0c1e57098bba43ac29e6e3b677cdc"
        "eebdd22334f, models/ (as vendored in PyPI llama_cpp_python-0.3.36)"
        for v in ("qwen2", "llama-bpe", "gemma-4")
        for x in ("inp", "out")
    },
    "data/ru_train.txt": "UD Russian-Taiga/GSD/Poetry, XQuAD ru, Tatoeba (OPUS-MT-testsets), NEREL v1.1, WMT ru",
    "data/ru_eval.txt": "UD Russian-GSD/Taiga/Poetry test, TICO-19 test ru, NTREX-128 ru",
    "data/en_eval.txt": "UD English-EWT dev+test, TICO-19 test en, NTREX-128 en",
    "data/en_train.txt": "Tatoeba eng-rus, XQuAD en, WMT newstest en",
    "data/ru_en_parallel.tsv": "NTREX-128, TICO-19 test, Tatoeba eng-rus v2021-08-07, XQuAD (ru/en pairs)",
}


def missing_fixtures() -> list[str]:
    """The FIXTURES files that are not below SHARED (all of them when the folder does not exist)."""
    return [rel for rel in FIXTURES if not (SHARED / rel).is_file()]


def data_skip_reason(missing: list[str]) -> str:
    """One skip reason: which folder was looked in, how to point elsewhere, and the public source of each missing
    file (tokenizer folders and test vectors collapsed to one entry each)."""
    sources: dict[str, str] = {}
    for rel in missing:
        key = rel.rsplit("/", 1)[0] if rel.startswith("tokenizers/") else rel
        sources.setdefault(key, FIXTURES[rel])
    where = f"{DATA_VAR}={os.environ[DATA_VAR]}" if os.environ.get(DATA_VAR) else f"{SHARED} (default; set {DATA_VAR})"
    listed = "; ".join(f"{k}: {v}" for k, v in sources.items())
    return f"test data not found in {where}: {len(missing)} files missing; public sources: {listed} (docs/testing.md)"


# model_type -> (tokenizer folder in SHARED/tokenizers, matrix rows as in the released checkpoints, tied default)
ARCHS: dict[str, tuple[str, int]] = {
    "qwen2": ("qwen2.5", 151936),
    "qwen3": ("qwen2.5", 151936),
    "llama": ("llama-3", 128256),
    "mistral": ("mistral-nemo", 131072),
    "gemma2": ("gemma-3", 262208),
    "gemma3_text": ("gemma-3", 262208),
}


def copy_tokenizer(name: str, dst: Path) -> Path:
    """Copy a real base tokenizer from SHARED (read-only there) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        shutil.copyfile(SHARED_TOKENIZERS / name / f, dst / f)
    return dst


@functools.cache
def special_token_ids(name: str) -> dict[str, int | None]:
    """bos/eos/pad ids (config keys ``bos_token_id``...) of the base tokenizer ``name`` in SHARED, as its
    tokenizer_config.json names them; cached, since a 262k-token tokenizer.json takes a second to parse."""
    tok_dir = SHARED_TOKENIZERS / name
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    tj = json.loads((tok_dir / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tj["added_tokens"]}
    ids: dict[str, int | None] = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        ids[f"{key}_id"] = (added.get(value, tj["model"]["vocab"].get(value))) if value else None
    return ids


def tiny_config(model_type: str, *, rows: int, hidden: int = 16, layers: int = 2, positions: int = 256, **extra):
    """A ``model_type`` config of ``layers`` × ``hidden`` with two heads, one key/value head and ``rows`` embedding
    rows; the per-architecture keys (head_dim, Gemma's query_pre_attn_scalar) follow ``hidden``. ``extra`` overrides
    or adds config keys (``tie_word_embeddings``, token ids, soft-capping...)."""
    from transformers import AutoConfig

    kwargs = dict(
        vocab_size=rows,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=positions,
    )
    if model_type in ("qwen3", "gemma2", "gemma3_text"):
        kwargs["head_dim"] = hidden // 2
    if model_type in ("gemma2", "gemma3_text"):
        kwargs["query_pre_attn_scalar"] = hidden // 2
    return AutoConfig.for_model(model_type, **{**kwargs, **extra})


def seeded_model(config, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The causal LM of ``config`` with every parameter drawn from N(0, 0.5²) after ``torch.manual_seed(seed)``:
    some inits leave zeros or tiny values, and the tests need every row distinct and O(1)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


def make_tiny_model(
    out: Path,
    model_type: str = "qwen2",
    *,
    tied: bool | None = None,
    tokenizer: str | None = None,
    rows: int | None = None,
    hidden: int = 16,
    layers: int = 2,
    max_shard_size: str = "300KB",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Build, seed and save a tiny ``model_type`` with a real tokenizer; returns the model dir."""
    tok_name, default_rows = ARCHS[model_type]
    tok_name = tokenizer or tok_name
    out = Path(out)
    copy_tokenizer(tok_name, out)
    extra: dict = dict(special_token_ids(tok_name))
    if tied is not None:
        extra["tie_word_embeddings"] = tied
    config = tiny_config(model_type, rows=rows or default_rows, hidden=hidden, layers=layers, **extra)
    model = seeded_model(config, seed=seed, dtype=dtype)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    return out


def tensor_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of every tensor's bytes in a safetensors model dir, by name."""
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            for name in h.keys():
                t = h.get_tensor(name)
                out[name] = hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    return out


def dir_hash(path: Path) -> str:
    """sha256 over every file (names and bytes) below ``path``: proves an input was not modified."""
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(path)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def fill_hub_cache(
    cache: Path, repo_id: str, source: Path, *, refs: tuple[str, ...] = ("main",), files: tuple[str, ...] | None = None
) -> Path:
    """Store the files of ``source`` in a Hugging Face hub cache as ``repo_id``, laid out as huggingface_hub's
    ``snapshot_download`` writes it, and return the snapshot dir:

        models--Org--Name/blobs/<git sha1, or sha256 for LFS files>      the bytes, once
        models--Org--Name/snapshots/<commit>/<file> -> ../../blobs/<id>  relative symlinks
        models--Org--Name/refs/<ref>                                     the commit, no newline
        models--Org--Name/trees/<commit>.json                            the tree listing (offline completeness check)

    ``files`` (relative names) stores only those while the tree still lists them all: an incomplete snapshot.
    The commit is a hash of the contents, so the same model gives the same commit."""
    import os

    source, cache = Path(source), Path(cache)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    listing = sorted(p for p in source.rglob("*") if p.is_file())
    entries, blobs = {}, {}
    for p in listing:
        data = p.read_bytes()
        rel = p.relative_to(source).as_posix()
        entry = {"size": len(data), "blob_id": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
        if p.suffix == ".safetensors":  # stored in LFS on the Hub: the blob is named by its sha256
            entry.update(lfs_sha256=hashlib.sha256(data).hexdigest(), lfs_size=len(data))
        entries[rel] = entry
        blobs[rel] = (entry.get("lfs_sha256") or entry["blob_id"], data)
    commit = hashlib.sha1(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    snap = repo / "snapshots" / commit
    for rel, (blob_id, data) in blobs.items():
        if files is not None and rel not in files:
            continue
        blob = repo / "blobs" / blob_id
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    snap.mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    (repo / "trees").mkdir(exist_ok=True)
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": entries}, indent=1))
    return snap
