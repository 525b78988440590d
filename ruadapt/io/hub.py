"""Models named as users name them: a local directory, or a Hugging Face Hub repo id such as ``Qwen/Qwen2.5-7B``.

One function, :func:`resolve`, turns what was typed into the directory a stage reads, so every command and the
train config's ``model:`` accept both. The rules, in order:

1. a path that exists is that path (a local folder named ``Qwen/Qwen2.5-7B`` is the folder, never the Hub);
2. a string shaped like ``namespace/name`` (optionally ``namespace/name@revision``) is resolved with
   ``huggingface_hub.snapshot_download`` into the standard hub cache, fetching only what ruadapt reads —
   safetensors, JSON, tokenizer files, chat templates, README/LICENSE. Never pickles (``*.bin``, ``*.pt``:
   loading one can run code) and never the second copies of the weights some repos carry (Mistral's
   ``consolidated.safetensors``, Llama's ``original/``), which would double a 15-50 GB download;
3. anything else is returned unchanged, so the stage's own check names the missing file as before.

A repo id that cannot be resolved is a one-line :class:`RuadaptError` naming the option, the string, the
revision and where it looked. The environment is read at each call rather than at import (huggingface_hub
freezes its constants when first imported): ``HF_HUB_OFFLINE`` (then only the cache is consulted),
``HF_HUB_CACHE`` / ``HF_HOME``, and ``HF_TOKEN`` through huggingface_hub itself.

The snapshot directory's path names the repo and the commit (``models--Org--Name/snapshots/<commit>``), so a
stage record that stores its inputs' paths already pins them; :func:`describe` turns such a path back into
``{"repo_id", "revision", "commit"}`` for a record.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import RuadaptError

log = logging.getLogger(__name__)

MODEL = "model"
TOKENIZER = "tokenizer"
# what ruadapt (and transformers' AutoTokenizer / AutoModelForCausalLM on safetensors) reads from a model repo
TOKENIZER_PATTERNS = (
    "*.json",
    "*.jinja",
    "tokenizer.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
    "README*",
    "LICENSE*",
    "NOTICE*",
    "USE_POLICY*",
)
MODEL_PATTERNS = ("*.safetensors", *TOKENIZER_PATTERNS)
IGNORE_PATTERNS = ("original/*", "consolidated*")  # other formats of the same weights (Llama, Mistral)

# namespace/name as the Hub spells it: letters, digits, "-", "_", "."; no "--" or ".." (huggingface_hub's rules)
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", re.ASCII)
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubSnapshot:
    """Where a repo id was resolved to: what a stage record should say about a model given as a repo id."""

    repo_id: str
    revision: str  # as asked: a branch, a tag or a commit ("main" when none was given)
    commit: str  # the commit the snapshot holds
    path: Path

    def facts(self) -> dict[str, str]:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}


_resolved: dict[Path, HubSnapshot] = {}  # snapshot dir -> how this process resolved it (for describe)


def split_repo_id(text: str) -> tuple[str, str | None] | None:
    """``"Org/Name"`` -> ``("Org/Name", None)``, ``"Org/Name@v1"`` -> ``("Org/Name", "v1")``; None when the
    string is not shaped like a repo id (``./x``, ``/abs/x``, ``~/x``, ``a/b/c``, ``name``)."""
    repo, sep, revision = text.partition("@")
    if sep and not revision:
        return None
    if not _REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo or repo.endswith((".", "-", ".git")):
        return None
    return repo, (revision or None)


def hub_cache() -> Path:
    """The hub cache as huggingface_hub computes it, from the environment as it is now."""
    env = os.environ
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = env.get("HF_HOME") or os.path.join(xdg, "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve(text: str | Path, option: str, *, revision: str | None = None, what: str = MODEL) -> Path:
    """The directory for what the user typed after ``option`` (see the module docstring for the rules).

    ``revision`` applies when ``text`` is a repo id without its own ``@revision``; ``what`` is ``"model"``
    (weights too) or ``"tokenizer"`` (tokenizer and config files only: a tokenizer needs no 15 GB download).
    """
    raw = str(text)
    path = Path(raw).expanduser()
    if path.exists():
        if revision:
            log.warning("%s %s: a local path; --revision %s does not apply to it", option, raw, revision)
        return path
    parsed = split_repo_id(raw)
    if parsed is None:
        return path
    repo_id, own_revision = parsed
    return snapshot(repo_id, own_revision or revision, option=option, text=raw, what=what).path


def snapshot(repo_id: str, revision: str | None, *, option: str, text: str, what: str = MODEL) -> HubSnapshot:
    """Download (or find in the cache) the files ruadapt reads of ``repo_id`` at ``revision``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    cache = hub_cache()
    local_only = offline()
    patterns = MODEL_PATTERNS if what == MODEL else TOKENIZER_PATTERNS
    where = f"{option}{text}" if option.endswith("=") else f"{option} {text}"  # "--model ru=Org/Name"
    if local_only:
        log.info("%s: looking in the hub cache %s (HF_HUB_OFFLINE is set)", where, cache)
    else:
        log.info("%s: fetching %s of %s@%s from the Hugging Face Hub into %s", where, what, repo_id, rev, cache)
    try:
        folder = snapshot_download(
            repo_id,
            revision=rev,
            cache_dir=cache,
            local_files_only=local_only,
            allow_patterns=list(patterns),
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except IncompleteSnapshotError as e:
        missing = re.search(r"(\d+ file\(s\) are missing \([^)]*\))", str(e))
        raise RuadaptError(
            f"{where}: the cached snapshot {e.snapshot_path} of revision {rev} is incomplete"
            f"{' (' + missing.group(1) + ')' if missing else ''}; run with network access to complete it"
        ) from None
    except RevisionNotFoundError:
        raise RuadaptError(
            f"{where}: the Hugging Face repo {repo_id} has no revision {rev!r} (a branch, tag or commit)"
        ) from None
    except RepositoryNotFoundError:
        raise RuadaptError(
            f"{where}: not a directory, and the Hugging Face Hub has no repo {repo_id} this machine may read "
            "(check the name; a gated or private repo needs `hf auth login` or HF_TOKEN)"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError) as e:  # offline or unreachable, nothing usable cached
        why = "HF_HUB_OFFLINE is set" if local_only else f"the Hub could not be reached: {clip(str(e))}"
        raise RuadaptError(
            f"{where}: not a directory, and not found in the hub cache at {cache} "
            f"(revision {rev}{_cached_note(cache, repo_id)}; {why}); run with network access, or "
            f"`hf download {repo_id} --revision {rev}` where there is some and point HF_HUB_CACHE at that cache"
        ) from None
    path = Path(folder)
    found = HubSnapshot(repo_id, rev, path.name, path)
    _resolved[path.resolve()] = found
    log.info("%s: %s (commit %s)", where, path, found.commit)
    return found


def clip(text: str, limit: int = 240) -> str:
    """``text`` on one line, at most ``limit`` characters, cut after a whole word with "…" when shortened: a
    library's message cut mid-word (``cannot find the appropriate snapsh``) reads as a garbled error."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    head = flat[: limit - 1]
    cut = head.rfind(" ")
    return (head[:cut] if cut > limit // 2 else head).rstrip(" ,;:") + "…"


def _cached_note(cache: Path, repo_id: str) -> str:
    """``; cached: main, v1`` — the revisions the cache does hold for ``repo_id`` (empty when none)."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    refs = (
        sorted(p.relative_to(folder / "refs").as_posix() for p in (folder / "refs").rglob("*") if p.is_file())
        if (folder / "refs").is_dir()
        else []
    )
    commits = sorted(p.name[:12] for p in (folder / "snapshots").iterdir()) if (folder / "snapshots").is_dir() else []
    held = refs or commits
    return f"; the cache holds {', '.join(held)}" if held else ""


def describe(path: str | Path) -> dict[str, str]:
    """``{"repo_id", "revision", "commit"}`` when ``path`` is a hub-cache snapshot directory, else ``{}``.

    For a stage record: ``record.input("model", path, **hub.describe(path))``. The revision is the one this
    process asked for, else the cached refs that point at the commit, else the commit itself."""
    p = Path(path).expanduser()
    try:
        p = p.resolve()
    except OSError:
        return {}
    if p in _resolved:
        return _resolved[p].facts()
    repo_dir = p.parent.parent
    if p.parent.name != "snapshots" or not repo_dir.name.startswith("models--") or not _COMMIT.fullmatch(p.name):
        return {}
    repo_id = repo_dir.name[len("models--") :].replace("--", "/")
    refs = (
        sorted(
            r.relative_to(repo_dir / "refs").as_posix()
            for r in (repo_dir / "refs").rglob("*")
            if r.is_file() and r.read_text().strip() == p.name
        )
        if (repo_dir / "refs").is_dir()
        else []
    )
    return {"repo_id": repo_id, "revision": ",".join(refs) or p.name, "commit": p.name}
