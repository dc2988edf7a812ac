"""flashllm.save / flashllm.load: safetensors round trips, and bad files rejected by name."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import flashllm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pruned(m, k, sparsity, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g)
    w[torch.rand(m, k, generator=g) < sparsity] = 0
    w[0, 0] = float("nan")
    return w.to(dtype)


def same_numbers(a, b):
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


def assert_same_weight(got, want):
    assert (got.format, got.shape, got.dtype, got.nnz, got.nbytes, got.max_block_bytes) == \
        (want.format, want.shape, want.dtype, want.nnz, want.nbytes, want.max_block_bytes)
    for name, t in want.tensors.items():
        assert torch.equal(got.tensors[name], t), name


def tensor_span(path: Path, key: str) -> tuple[int, int]:
    """Absolute byte range of one tensor inside a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    begin, end = json.loads(raw[8:8 + n])[key]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def rewrite_header(path: Path, edit) -> None:
    """Apply `edit` to the parsed JSON header of a safetensors file and write it back."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def patch(path: Path, at: int, new: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at:at + len(new)] = new
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl", "sell", "pairmap"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_single_round_trip(tmp_path, fmt, dtype):
    w = pruned(100, 130, 0.7, dtype)
    sw = flashllm.compress(w, fmt)
    path = tmp_path / "w.safetensors"
    flashllm.save(sw, path)
    back = flashllm.load(path)
    assert isinstance(back, flashllm.SparseWeight)
    assert_same_weight(back, sw)
    assert same_numbers(back.to_dense(), w)
    assert same_numbers(flashllm.load(str(path), device="cpu").to_dense(), w)  # str paths too


def test_dict_round_trip(tmp_path):
    weights = {
        "model.decoder.layers.0.self_attn.q_proj": flashllm.compress(pruned(64, 64, 0.5), "bitmap"),
        "model.decoder.layers.0.fc1": flashllm.compress(pruned(200, 64, 0.9, torch.bfloat16), "tiled_csl"),
        "lm_head": flashllm.compress(pruned(3, 300, 0.0)),
        "": flashllm.compress(pruned(1, 1, 1.0)),
    }
    path = tmp_path / "model.safetensors"
    flashllm.save(weights, path)
    back = flashllm.load(path)
    assert isinstance(back, dict) and set(back) == set(weights)
    for name, sw in weights.items():
        assert_same_weight(back[name], sw)


def test_empty_dict_round_trip(tmp_path):
    flashllm.save({}, tmp_path / "empty.safetensors")
    assert flashllm.load(tmp_path / "empty.safetensors") == {}


def test_save_rejects_bad_objects(tmp_path):
    sw = flashllm.compress(pruned(8, 8, 0.5))
    with pytest.raises(TypeError, match="SparseWeight or a dict of them"):
        flashllm.save(torch.zeros(3), tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="SparseWeight or a dict of them"):
        flashllm.save({"a": sw, "b": torch.zeros(3)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="must not contain '::'"):
        flashllm.save({"a::b": sw}, tmp_path / "x.safetensors")


# ---- bad files: every one a ValueError that names the file ----

@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "good.safetensors"
    flashllm.save({"fc1": flashllm.compress(pruned(100, 130, 0.7), "bitmap"),
                   "fc2": flashllm.compress(pruned(130, 100, 0.9), "tiled_csl")}, path)
    return path


def load_error(path) -> str:
    with pytest.raises(ValueError) as err:
        flashllm.load(path)
    assert str(path) in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("keep", [0, 4, 8, 100, -1])
def test_truncated(saved, keep):
    raw = saved.read_bytes()
    saved.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    assert "not a readable safetensors file" in load_error(saved)


def test_garbage(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    assert "not a readable safetensors file" in load_error(path)


def test_missing_file(tmp_path):
    load_error(tmp_path / "nowhere.safetensors")


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(4, 4)}, str(path))
    assert "not a flashllm weight file" in load_error(path)
    save_file({"weight": torch.zeros(4, 4)}, str(path), metadata={"format": "pt"})
    assert "not a flashllm weight file" in load_error(path)


def test_flashllm_metadata_on_foreign_tensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(4, 4)}, str(path), metadata={"flashllm": "dict"})
    assert re.search(r"unexpected tensor 'weight'", load_error(path))
    save_file({"w::weight": torch.zeros(4, 4)}, str(path), metadata={"flashllm": "dict"})
    assert re.search(r"weight 'w': state dict has no 'meta' tensor", load_error(path))


def test_single_file_holding_two_weights(tmp_path):
    path = tmp_path / "two.safetensors"
    flashllm.save({"a": flashllm.compress(pruned(8, 8, 0.5)), "b": flashllm.compress(pruned(8, 8, 0.5))}, path)
    rewrite_header(path, lambda h: h["__metadata__"].update(flashllm="single"))
    assert "expected one weight, found 2" in load_error(path)


@pytest.mark.parametrize("key,offset,value,message", [
    ("fc1::block_ptr", 8, 17, r"weight 'fc1': bitmap block_ptr entries must be multiples of 16"),
    ("fc1::data", 0, 255, r"weight 'fc1': bitmap strip ends in a block header disagree with the mask popcounts"),
    ("fc1::data", 100, 1, r"weight 'fc1': bitmap strip ends in a block header disagree with the mask popcounts"),
    ("fc2::words", 3, 0x7F, r"weight 'fc2': tiled_csl word with a location outside its 64x64 tile"),
    ("fc2::tile_ptr", 0, 4, r"weight 'fc2': tiled_csl tile_ptr\[0\] must be 0, got 4"),
    ("fc2::meta", 5 * 8, 1, r"weight 'fc2': tiled_csl nnz \d+ disagrees"),
    ("fc2::meta", 0, 9, r"weight 'fc2': format version 9 not supported"),
    ("fc1::meta", 2 * 8 + 1, 1, r"weight 'fc1': bitmap block_ptr must be int64 of length"),  # M += 256
])
def test_corrupted_contents(saved, key, offset, value, message):
    begin, end = tensor_span(saved, key)
    assert begin + offset < end
    patch(saved, begin + offset, bytes([value]))
    assert re.search(message, load_error(saved)), load_error(saved)


def test_corrupted_tensor_dtype(saved):
    rewrite_header(saved, lambda h: h["fc2::words"].update(dtype="F32"))  # same size, wrong type
    assert re.search(r"weight 'fc2': tiled_csl words must be a 1-D int32 tensor", load_error(saved))


def test_load_validates_before_returning(saved, monkeypatch):
    calls = []
    original = flashllm.SparseWeight.validate
    monkeypatch.setattr(flashllm.SparseWeight, "validate", lambda self: calls.append(self.format) or original(self))
    flashllm.load(saved)
    assert sorted(calls) == ["bitmap", "tiled_csl"]
