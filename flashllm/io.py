"""Save and load compressed weights as safetensors (validated on load)."""

from __future__ import annotations

import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .formats import SparseWeight

_SEP = "::"  # joins a weight's name and its tensor's name; never appears in a module path


def save(obj: SparseWeight | dict[str, SparseWeight], path: str | os.PathLike) -> None:
    """Write one SparseWeight, or a dict name -> SparseWeight, to a safetensors file."""
    single = isinstance(obj, SparseWeight)
    items = {"": obj} if single else obj
    if not isinstance(items, dict) or not all(isinstance(v, SparseWeight) for v in items.values()):
        raise TypeError("save() takes a SparseWeight or a dict of them")
    flat = {}
    for name, w in items.items():
        if _SEP in name:
            raise ValueError(f"weight name {name!r} must not contain {_SEP!r}")
        for key, t in w.state_dict().items():
            flat[f"{name}{_SEP}{key}"] = t.detach().contiguous().cpu()
    save_file(flat, os.fspath(path), metadata={"flashllm": "single" if single else "dict"})


def load(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Read what `save` wrote; every weight is validated before it is returned."""
    path = os.fspath(path)
    try:
        flat = load_file(path)
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            kind = (f.metadata() or {}).get("flashllm")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if kind not in ("single", "dict"):
        raise ValueError(f"{path}: not a flashllm weight file (no 'flashllm' metadata)")
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        name, sep, sub = key.rpartition(_SEP)
        if not sep:
            raise ValueError(f"{path}: unexpected tensor {key!r}")
        grouped.setdefault(name, {})[sub] = t
    out = {}
    for name, d in grouped.items():
        try:
            out[name] = SparseWeight.from_state_dict(d).to(device)
        except ValueError as e:
            raise ValueError(f"{path}: weight {name or '<single>'!r}: {e}") from e
    if kind == "single":
        if list(out) != [""]:
            raise ValueError(f"{path}: expected one weight, found {len(out)}")
        return out[""]
    return out
