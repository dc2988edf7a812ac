"""`save_pretrained`: write a model with SparseLinear layers as a Hugging Face-style directory.

config.json gets a `sparsity_config` entry (producer, version, format, per-layer records, tied and shared
layers); each SparseLinear is stored as its SparseWeight's tensors under `<module>.weight.<key>`, sharded
like transformers does. `checkpoint.py` reads it back. A model with sparse layers also gets
`quantization_config: {"quant_method": "flashllm"}` and the guard of `flashllm/hf.py`, so the same
directory loads with transformers' from_pretrained once flashllm is imported (and fails without it).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from .. import hf
from ..nn import SparseLinear
from . import compressed_tensors as ct
from .checkpoint import PRODUCER, SPARSITY_KEY
from .files import CONFIG_NAME, INDEX_NAME, SINGLE_NAME, _nbytes

COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja")

# ---------------------------------------------------------------------------------------------- saving

def save_pretrained(model: nn.Module, save_directory, max_shard_size: int | str = "5GB", tokenizer=None) -> Path:
    """Write `model` (a transformers model, possibly holding SparseLinear layers) to `save_directory`.

    Tensors are copied to the CPU one shard at a time, so saving needs at most one shard of host memory.
    Tokenizer files next to the model's source (`config._name_or_path`) are copied, or `tokenizer` saved.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        raise TypeError("save_pretrained needs a transformers model (one with a .config)")
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    layers, shared = _sparse_layers(model)
    state = {k: v for k, v in model.state_dict().items() if not any(k.startswith(d + ".") for d in shared)}
    tensors, aliases = _unique_tensors(state)
    shards = _plan_shards(tensors, layers, parse_size(max_shard_size))
    for old in list(out.glob("model*.safetensors")) + [out / INDEX_NAME]:
        old.unlink(missing_ok=True)  # shards of an earlier save would mix with ours

    from safetensors.torch import save_file
    weight_map = {}
    for i, names in enumerate(shards):
        file = SINGLE_NAME if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n].detach().to("cpu").contiguous() for n in names}, out / file,
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    if len(shards) > 1:
        total = sum(_nbytes(t) for t in tensors.values())
        _write_json(out / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})

    config_dict = json.loads(config.to_json_string(use_diff=False))
    if not config_dict.get("architectures"):  # a model built from a config has none: record what to rebuild
        config_dict["architectures"] = [type(model).__name__]
    for key in ("quantization_config", "compression_config"):
        # A compressed-tensors entry that only described sparsity is now stale: our format replaced it.
        if ct.sparsity_config_of({key: config_dict.get(key)}) and not config_dict[key].get("config_groups"):
            config_dict.pop(key)
    config_dict[SPARSITY_KEY] = _sparsity_entry(layers, aliases, shared)
    hf.mark_config(config_dict, bool(layers or shared))  # quant_method "flashllm": transformers loads it too
    _write_json(out / CONFIG_NAME, config_dict)
    _save_side_files(model, out, tokenizer)
    return out


def _unique_tensors(state: dict[str, torch.Tensor]):
    """Drop repeated views of one tensor (tied weights), which safetensors refuses; return the aliases."""
    seen, tensors, aliases = {}, {}, {}
    for name, t in state.items():
        if t.device.type == "meta":
            raise ValueError(f"cannot save {name}: it is on the meta device (never loaded)")
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t
    return tensors, aliases


def _sparse_layers(model: nn.Module) -> tuple[dict, dict]:
    """{module name: record} of the SparseLinear layers, and {second name: first name} of one registered twice."""
    layers, shared = {}, {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, SparseLinear):
            first = next((n for n in layers if model.get_submodule(n) is m), None)
            if first is None:
                layers[name] = _layer_record(m)
            else:
                shared[name] = first
    return layers, shared


def sparsity_entry_of(model: nn.Module) -> dict:
    """config.json's `sparsity_config` for `model` as it is (tied tensors left to transformers)."""
    layers, shared = _sparse_layers(model)
    return _sparsity_entry(layers, {}, shared)


def _layer_record(layer: SparseLinear) -> dict:
    w = layer.weight
    return {"format": w.format, "shape": list(w.shape), "dtype": str(w.dtype).removeprefix("torch."),
            "sparsity": round(w.sparsity, 6), "nbytes": w.nbytes}


def _sparsity_entry(layers: dict, aliases: dict, shared: dict) -> dict:
    import flashllm  # at call time: flashllm/__init__.py may import this module
    formats = {r["format"] for r in layers.values()}
    elements = sum(math.prod(r["shape"]) for r in layers.values())
    zeros = sum(r["sparsity"] * math.prod(r["shape"]) for r in layers.values())
    return {"producer": PRODUCER, "flashllm_version": flashllm.__version__,
            "format": formats.pop() if len(formats) == 1 else ("mixed" if formats else "dense"),
            "sparsity": round(zeros / elements, 6) if elements else 0.0,
            "layers": layers, "aliases": aliases, "shared_layers": shared}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a size like '500MB', '2GB' or '1.5GiB'; ValueError for anything else or < 1 byte."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), re.IGNORECASE)
        if not match:
            raise ValueError(f"max_shard_size {size!r}: expected bytes or a size like '500MB' or '2GB'")
        unit = (match.group(2) or "B").upper()
        scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
        value = int(float(match.group(1)) * scale)
    if value < 1:
        raise ValueError(f"max_shard_size {size!r}: must be at least 1 byte")
    return value


def _plan_shards(tensors: dict, layers: dict, limit: int) -> list[list[str]]:
    """Greedy shards under `limit` bytes; a SparseLinear's tensors stay together (one over-size unit
    gets a shard of its own)."""
    units: dict[str, list[str]] = {}
    for name in tensors:
        owner = next((p for p in _prefixes(name) if p in layers), name)
        units.setdefault(owner, []).append(name)
    shards, current, size = [], [], 0
    for names in units.values():
        unit_size = sum(_nbytes(tensors[n]) for n in names)
        if current and size + unit_size > limit:
            shards.append(current)
            current, size = [], 0
        current += names
        size += unit_size
    return shards + [current] if current or not shards else shards


def _prefixes(name: str):
    parts = name.split(".")
    return (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1))


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")  # unsorted: layers stay in model order


def _save_side_files(model, out: Path, tokenizer) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    source = Path(str(getattr(model.config, "_name_or_path", "") or ""))
    if source.is_dir() and source.resolve() != out.resolve():
        for name in COPIED_FILES:
            if (source / name).is_file() and not (out / name).exists():
                shutil.copyfile(source / name, out / name)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)


# --------------------------------------------------------------------------------------------- reading
