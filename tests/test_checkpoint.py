"""The checkpoint reader/writer: round trips, byte budgets, pass-through bit-identity, atomic outputs."""

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny import make_tiny_model, tensor_hashes

from ruadapt.errors import RuadaptError
from ruadapt.io.checkpoint import (
    CheckpointReader,
    CheckpointWriter,
    RowBlocks,
    parse_size,
    read_header,
    write_with_replacements,
)
from ruadapt.io.outdir import atomic_output_dir, atomic_output_file


def _tensors(n=7, rows=50, d=8):
    g = torch.Generator().manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(rows, d, generator=g) for i in range(n)}


def test_writer_fills_shards_up_to_budget_and_reader_round_trips(tmp_path):
    tensors = _tensors()
    one = 50 * 8 * 4
    w = CheckpointWriter(tmp_path, max_shard_bytes=3 * one)
    for k, v in tensors.items():
        w.add(k, v)
    shards = w.finish()
    assert [s.name for s in shards] == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 7 * one
    (tmp_path / "config.json").write_text("{}")
    r = CheckpointReader(tmp_path)
    assert r.names == list(tensors)
    assert r.info("layer.3.weight").shape == (50, 8)
    for k, v in tensors.items():
        assert torch.equal(r.get(k), v)
    assert torch.equal(r.get_rows("layer.0.weight", 5, 9), tensors["layer.0.weight"][5:9])


def test_written_files_are_valid_safetensors_for_every_dtype_and_shape(tmp_path):
    """The writer lays out safetensors itself: safetensors' own reader must accept the files and return every
    tensor bit-identically, including mixed dtypes (alignment), 0-d, empty and shared-storage tensors, and
    tensors copied as byte ranges from an input shard next to in-memory ones."""
    from safetensors import safe_open
    from safetensors.torch import load, save_file

    g = torch.Generator().manual_seed(1)
    base = torch.randn(7, 3, generator=g)
    tensors = {
        "odd_bf16": torch.randn(5, 3, generator=g).to(torch.bfloat16),  # 30 bytes: the f64 after it needs alignment
        "f64": torch.randn(3, 3, generator=g, dtype=torch.float64),
        "f16": torch.randn(11, generator=g).to(torch.float16),
        "i64": torch.arange(-5, 6, dtype=torch.int64),
        "u8": torch.randint(0, 255, (9,), generator=g, dtype=torch.uint8),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "view_a": base[2:5],  # non-contiguous owner, shared storage with view_b
        "view_b": base.t(),
    }
    src = tmp_path / "src.safetensors"
    save_file(
        {"copied_bf16": torch.randn(13, 5, generator=g).to(torch.bfloat16), "copied_f32": torch.randn(4, generator=g)},
        str(src),
    )
    (tmp_path / "in").mkdir()
    src.rename(tmp_path / "in" / "model.safetensors")
    reader = CheckpointReader(tmp_path / "in", need_config=False)
    w = CheckpointWriter(tmp_path / "out_dir", max_shard_bytes=10**9)
    (tmp_path / "out_dir").mkdir()
    for k, v in tensors.items():
        w.add(k, v)
    for name in reader.names:
        w.add_from(reader.info(name))
    [out] = w.finish()
    with safe_open(out, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(tensors) | {"copied_bf16", "copied_f32"}
        for k, v in tensors.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k
        for name in reader.names:
            assert torch.equal(f.get_tensor(name), reader.get(name)), name
    assert torch.equal(load(out.read_bytes())["odd_bf16"], tensors["odd_bf16"])
    header, data_start = read_header(out)
    assert data_start % 8 == 0
    for name, e in json.loads(header).items():  # every tensor starts at a multiple of its element size
        if name != "__metadata__":
            size = {"F64": 8, "I64": 8, "F32": 4, "BF16": 2, "F16": 2}.get(e["dtype"], 1)
            assert e["data_offsets"][0] % size == 0, name


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "read-write fallback"])
def test_row_blocks_are_written_as_the_matrix_they_describe(tmp_path, monkeypatch, kernel_copy):
    """A matrix given as runs of an input tensor's rows (copied from the file) and in-memory rows is written
    bit-identically to the same matrix assembled in memory, next to an unchanged tensor of the same shard;
    also where ``copy_file_range`` fails (other OS or file system) and the writer falls back to read/write."""
    from safetensors.torch import save_file

    if not kernel_copy:

        def refuse(*args, **kwargs):
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)

    g = torch.Generator().manual_seed(2)
    old = torch.randn(40, 6, generator=g).to(torch.bfloat16)
    other = torch.randn(3, generator=g)
    (tmp_path / "in").mkdir()
    save_file({"emb": old, "other": other}, str(tmp_path / "in" / "model.safetensors"))
    reader = CheckpointReader(tmp_path / "in", need_config=False)
    new_rows = [torch.randn(n, 6, generator=g).to(torch.bfloat16) for n in (2, 5, 1)]
    blocks = [new_rows[0], (0, 17), new_rows[1], (30, 10), (17, 1), new_rows[2]]
    expected = torch.cat([old[b[0] : b[0] + b[1]] if isinstance(b, tuple) else b for b in blocks])
    rb = RowBlocks(reader.info("emb"), blocks)
    assert rb.shape == tuple(expected.shape)
    (tmp_path / "out").mkdir()
    w = CheckpointWriter(tmp_path / "out", max_shard_bytes=10**9)
    w.add("emb", rb)
    w.add_from(reader.info("other"))
    w.finish()
    out = CheckpointReader(tmp_path / "out", need_config=False)
    assert torch.equal(out.get("emb"), expected)
    assert torch.equal(out.get("other"), other)
    with pytest.raises(ValueError, match="does not fit"):
        RowBlocks(reader.info("emb"), [torch.zeros(2, 5, dtype=torch.bfloat16)])


def test_single_shard_is_model_safetensors(tmp_path):
    w = CheckpointWriter(tmp_path, max_shard_bytes=parse_size("1GB"))
    w.add("a", torch.ones(3))
    assert [p.name for p in w.finish()] == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("64KiB") == 65536
    assert parse_size(123) == 123
    with pytest.raises(RuadaptError):
        parse_size("lots")


def test_write_with_replacements_copies_untouched_shards_bit_identically(tmp_path):
    src = make_tiny_model(tmp_path / "m", "qwen2", max_shard_size="100KB")
    r = CheckpointReader(src)
    new_embed = torch.zeros(10, 16)
    with atomic_output_dir(tmp_path / "out", [src]) as tmp:
        write_with_replacements(r, tmp, {"model.embed_tokens.weight": new_embed, "lm_head.weight": None})
    before, after = tensor_hashes(src), tensor_hashes(tmp_path / "out")
    assert set(after) == set(before) - {"lm_head.weight"}
    for name in after:
        if name != "model.embed_tokens.weight":
            assert after[name] == before[name], name
    assert torch.equal(
        CheckpointReader(tmp_path / "out", need_config=False).get("model.embed_tokens.weight"), new_embed
    )


def test_reader_refuses_pickle_truncated_and_missing_shards(tmp_path):
    d = tmp_path / "pickle"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(RuadaptError, match="pickle weights.*convert"):
        CheckpointReader(d)

    src = make_tiny_model(tmp_path / "m", "llama", max_shard_size="100KB")
    shard = sorted(src.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-7])
    with pytest.raises(RuadaptError, match=f"{shard.name}.*not a readable safetensors"):
        CheckpointReader(src)
    shard.unlink()
    with pytest.raises(RuadaptError, match=f"names shard {shard.name} which is missing"):
        CheckpointReader(src)


def test_atomic_output_dir_refuses_nonempty_and_inputs(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RuadaptError, match="not empty"):
        with atomic_output_dir(tmp_path / "full"):
            pass
    with pytest.raises(RuadaptError, match="must not be an input"):
        with atomic_output_dir(tmp_path / "full" / "sub", [tmp_path / "full"]):
            pass
    with pytest.raises(ZeroDivisionError):
        with atomic_output_dir(tmp_path / "new") as tmp:
            (tmp / "half").write_text("written")
            1 / 0
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


def test_sigkill_leaves_no_output_and_next_run_cleans_up(tmp_path):
    code = (
        "import os, signal, sys; sys.path.insert(0, %r)\n"
        "from ruadapt.io.outdir import atomic_output_dir\n"
        "with atomic_output_dir(%r) as t:\n"
        "    (t / 'part').write_text('x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    ) % (str(os.getcwd()), str(tmp_path / "out"))
    p = subprocess.run([sys.executable, "-c", code])
    assert p.returncode == -9
    assert not (tmp_path / "out").exists()
    assert any(".ruadapt-tmp-" in x.name for x in tmp_path.iterdir())
    with atomic_output_dir(tmp_path / "out") as t:
        (t / "ok").write_text("y")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]


def test_atomic_output_file_replaces_whole_and_cleans_killed_runs(tmp_path):
    out = tmp_path / "m.gguf"
    (tmp_path / f".m.gguf.ruadapt-tmp-{2**22 + 7}").write_bytes(b"left by a killed run")  # no such PID
    with atomic_output_file(out) as tmp:
        assert not tmp.exists() and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    with pytest.raises(RuadaptError, match="exists.*--overwrite"):
        with atomic_output_file(out):
            pass
    with pytest.raises(ZeroDivisionError):
        with atomic_output_file(out, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            1 / 0
    assert out.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    with atomic_output_file(out, overwrite=True) as tmp:
        tmp.write_bytes(b"newer")
    assert out.read_bytes() == b"newer"
    with pytest.raises(RuadaptError, match="must not be an input"):
        with atomic_output_file(tmp_path / "model" / "x.gguf", [tmp_path / "model"]):
            pass
    with pytest.raises(RuadaptError, match="is a directory"):
        with atomic_output_file(tmp_path):
            pass


def test_output_that_cannot_be_created_is_a_user_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RuadaptError, match="cannot be created"):
        with atomic_output_dir(blocker / "out"):
            pass
    assert blocker.read_text() == "x"
