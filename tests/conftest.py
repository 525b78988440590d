"""Test-wide settings, the offline hub cache fixture, and the skip of the tests whose data is not there.

The data (real base tokenizers and text) lives in one folder, ``$RUADAPT_TEST_DATA`` (default ``../shared``), read
by tiny.py. Without it the suite still collects, and every test that uses it is skipped with one reason naming
the folder and the public source of each missing file, instead of failing with a FileNotFoundError. A test uses
the data when its function, one of its fixtures or a module-level helper they call names one of ``DATA_NAMES`` or
a module constant that is a path inside the folder (checked on the compiled code, so nothing has to be
remembered), or when it is marked ``needs_data`` (a test that reaches the data only through a subprocess)."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import inspect  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from tiny import SHARED, data_skip_reason, missing_fixtures  # noqa: E402

TESTS = Path(__file__).resolve().parent
# the names of tiny.py through which a test reaches the data folder
DATA_NAMES = frozenset({"SHARED", "SHARED_DATA", "SHARED_TOKENIZERS", "make_tiny_model", "copy_tokenizer"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_data: reads $RUADAPT_TEST_DATA in a way the code scan cannot see "
        "(e.g. through a subprocess); skipped when the data is missing",
    )


def _code_names(code: types.CodeType) -> Iterator[str]:
    """Every global or attribute name a code object and the code nested in it (lambdas, inner functions) load."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _under_data(path: str | Path) -> bool:
    """Whether a module constant names something inside the test data folder."""
    try:
        return Path(path).resolve().is_relative_to(SHARED)
    except (OSError, ValueError):
        return False


def uses_data(item: pytest.Item) -> bool:
    """Whether a test reaches the data folder: a ``needs_data`` marker, or DATA_NAMES in the code of the test
    function, its fixtures (those defined under tests/) or the module-level functions of tests/ they call."""
    if item.get_closest_marker("needs_data"):
        return True
    todo: list[Callable] = [getattr(item, "function", None)]
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    for defs in fixtureinfo.name2fixturedefs.values() if fixtureinfo else ():
        todo += [d.func for d in defs]
    seen: set[int] = set()
    while todo:
        f = todo.pop()
        f = inspect.unwrap(f) if f is not None else None
        code = getattr(f, "__code__", None)
        if code is None or id(f) in seen or not Path(code.co_filename).resolve().is_relative_to(TESTS):
            continue
        seen.add(id(f))
        for name in _code_names(code):
            if name in DATA_NAMES:
                return True
            g = f.__globals__.get(name)
            if isinstance(g, (str, Path)) and _under_data(g):  # a module constant such as QWEN = SHARED / ...
                return True
            g = inspect.unwrap(g) if callable(g) else g  # through functools.cache and other wrappers
            if inspect.isfunction(g):
                todo.append(g)
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = missing_fixtures()
    if not missing:
        return
    skip = pytest.mark.skip(reason=data_skip_reason(missing))
    for item in items:
        if uses_data(item):
            item.add_marker(skip)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in offline mode (fill it with ``tiny.fill_hub_cache``)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
