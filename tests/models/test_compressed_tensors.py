"""flashllm's own sparse-bitmask reader against files written by real compressed-tensors releases."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from flashllm.models import compressed_tensors as ct

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures").glob("ct_bitmask_v*"))


def test_fixtures_exist():
    assert {p.name for p in FIXTURES} >= {"ct_bitmask_v0.5.0", "ct_bitmask_v0.8.1", "ct_bitmask_v0.9.4"}


def _decoded_by_parameter(path: Path, parameter_names) -> dict:
    decoded = ct.decode_file(str(path))
    groups, _ = ct.group_keys(list(safe_open(str(path), "pt").keys()))
    return {ct.parameter_name(k, parameter_names) if k in groups else k: v for k, v in decoded.items()}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("stem", ["tensors", "llama"])
def test_fixture_decodes_to_reference(fixture, stem):
    reference = load_file(fixture / f"{stem}_reference.safetensors")
    compressed = fixture / ("tensors.safetensors" if stem == "tensors" else "llama/model.safetensors")
    decoded = _decoded_by_parameter(compressed, reference)
    assert decoded.keys() == reference.keys()
    for name, want in reference.items():
        assert decoded[name].dtype == want.dtype, name
        assert torch.equal(decoded[name], want), name


def test_key_namings_differ_between_releases():
    """<= 0.8 prefixes are parameter names and every tensor is compressed; >= 0.9 module names, Linear only."""
    def groups(version):
        with safe_open(str(Path(FIXTURES[0]).parent / f"ct_bitmask_v{version}/llama/model.safetensors"), "pt") as f:
            return ct.group_keys(list(f.keys()))
    old_groups, old_plain = groups("0.8.1")
    new_groups, new_plain = groups("0.9.4")
    assert "model.layers.0.mlp.up_proj.weight" in old_groups and "model.norm.weight" in old_groups
    assert old_plain == []
    assert "model.layers.0.mlp.up_proj" in new_groups and "model.norm.weight" in new_plain
    assert ct.parameter_name("model.norm.weight", {"model.norm.weight"}) == "model.norm.weight"
    assert ct.parameter_name("model.layers.0.mlp.up_proj", {"model.norm.weight"}) == "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize("version,section", [("0.5.0", "compression_config"), ("0.8.1", "quantization_config"),
                                             ("0.9.4", "quantization_config")])
def test_sparsity_config_under_both_key_namings(version, section):
    config = json.loads((Path(FIXTURES[0]).parent / f"ct_bitmask_v{version}/llama/config.json").read_text())
    assert section in config
    sparsity = ct.sparsity_config_of(config)
    assert sparsity is not None and ct.format_of(sparsity) == "sparse-bitmask"


@pytest.mark.parametrize("name,message", [("sparse-24-bitmask", "not supported"), ("marlin-24", "not supported"),
                                          ("os.system", "unknown"), ("../../evil", "unknown"), (None, "unknown"),
                                          (["sparse-bitmask"], "unknown")])
def test_format_names_are_whitelisted(name, message):
    with pytest.raises(ValueError, match=message):
        ct.format_of({"format": name})


def _group(name="odd_cols"):
    with safe_open(str(FIXTURES[-1] / "tensors.safetensors"), "pt") as f:
        return {s: f.get_tensor(f"{name}.{s}") for s in ct.SUFFIXES}


def _corrupt(**changes):
    group = _group()
    for suffix, fn in changes.items():
        group[suffix] = fn(group[suffix].clone())
    return group


def _set(index, value):
    def fn(t):
        t.view(-1)[index] = value
        return t
    return fn


@pytest.mark.parametrize("changes,message", [
    (dict(shape=lambda t: t[:1].repeat(3)), "shape must be"),
    (dict(shape=lambda t: torch.tensor([7, -13])), r"outside \[1, 2\*\*31\)"),
    (dict(shape=lambda t: torch.tensor([7, 2**40])), r"outside \[1, 2\*\*31\)"),
    (dict(shape=lambda t: t.float()), "shape must be"),
    (dict(shape=lambda t: torch.tensor([7, 24])), "bitmask must be uint8"),  # 24 columns need 3 bytes/row
    (dict(shape=lambda t: torch.tensor([8, 13])), "bitmask must be uint8"),
    (dict(bitmask=lambda t: t.to(torch.int16)), "bitmask must be uint8"),
    (dict(bitmask=lambda t: t[:-1]), "bitmask must be uint8"),
    (dict(bitmask=_set(1, 0xE0)), "padding bits"),  # 13 columns: bits 5..7 of each row's 2nd byte are padding
    (dict(bitmask=_set(0, 0xFF)), "row_offsets"),
    (dict(row_offsets=_set(3, 10**9)), r"row_offsets\[3\]"),
    (dict(row_offsets=_set(0, -1)), r"row_offsets\[0\]"),
    (dict(row_offsets=lambda t: t.flip(0)), "row_offsets"),
    (dict(row_offsets=lambda t: t[:-1]), "row_offsets must be int64 with 7"),
    (dict(compressed=lambda t: t[:-1]), "compressed has 41 values but the bitmask marks 42"),
    (dict(compressed=lambda t: torch.cat([t, t[:1]])), "compressed has 43 values"),
    (dict(compressed=lambda t: t.to(torch.int8)), "fp8 values are not supported"),
    (dict(compressed=lambda t: t.reshape(6, 7)), "1-D"),
])
def test_corrupt_groups_are_refused(changes, message):
    with pytest.raises(ValueError, match=message) as info:
        ct.decode(_corrupt(**changes), "layer.x")
    assert "layer.x" in str(info.value)


def test_corrupt_value_is_caught_not_decoded_silently():
    """Sanity check on the fixture group itself: unmodified it decodes, and each field matters."""
    good = ct.decode(_group(), "odd_cols")
    assert good.shape == (7, 13) and int((good != 0).sum()) == 42


def test_missing_suffix_names_the_prefix():
    with pytest.raises(ValueError, match=r"layer\.q: .*missing \.row_offsets"):
        ct.group_keys(["layer.q.bitmask", "layer.q.compressed", "layer.q.shape", "other.weight"])
    # a plain tensor that merely ends in ".shape" is not a group
    groups, plain = ct.group_keys(["model.shape", "model.weight"])
    assert groups == {} and plain == ["model.shape", "model.weight"]


@pytest.mark.parametrize("rows,cols,density", [(1, 1, 1.0), (3, 8, 0.5), (5, 17, 0.3), (64, 100, 0.05), (4, 9, 0.0)])
def test_decode_matches_numpy_packbits(rows, cols, density):
    """Same packing as the library used (numpy.packbits, little bit order), on shapes the fixtures lack."""
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    dense = torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < density)
    mask = (dense != 0).numpy()
    counts = torch.from_numpy(mask.sum(1))
    group = {"shape": torch.tensor([rows, cols]), "compressed": dense[dense != 0],
             "bitmask": torch.from_numpy(np.packbits(mask, axis=-1, bitorder="little")),
             "row_offsets": counts.cumsum(0) - counts}
    assert torch.equal(ct.decode(group), dense)
