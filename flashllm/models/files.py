"""The files of a Hugging Face-style checkpoint directory, read as untrusted input: JSON, and the
safetensors shards (single file or index), opened lazily and memory-mapped. Shard names must be plain
file names inside the directory; every failure is a CheckpointError naming the file (and tensor)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

CONFIG_NAME, INDEX_NAME, SINGLE_NAME = "config.json", "model.safetensors.index.json", "model.safetensors"
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.safetensors")
_ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                  "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and, where there is one, the tensor."""


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _inside(root: Path, name: str, referrer: Path) -> Path:
    """`root/name`, refusing names that are not plain file names or that resolve outside `root`."""
    if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
        raise CheckpointError(f"{referrer}: shard name {name!r} is not a plain .safetensors file name in the directory")
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise CheckpointError(f"{referrer}: shard {name!r} points outside {root}")
    if not path.is_file():
        raise CheckpointError(f"{referrer}: shard {name!r} does not exist in {root}")
    return path


class Shards:
    """The safetensors files of a checkpoint directory, opened lazily (memory-mapped, read on demand)."""

    def __init__(self, root: Path):
        self.root, self._handles, self.location = root, {}, {}
        index = root / INDEX_NAME
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index}: 'weight_map' must be a non-empty object")
            for name, file in weight_map.items():
                self.location[name] = _inside(root, file, index)
            for path in set(self.location.values()):
                present = set(self._open(path).keys())
                lost = [n for n, p in self.location.items() if p == path and n not in present]
                if lost:
                    raise CheckpointError(f"{path}: tensor {lost[0]!r} listed in {INDEX_NAME} is not in this file")
        elif (root / SINGLE_NAME).is_file():
            path = _inside(root, SINGLE_NAME, root)
            self.location = dict.fromkeys(self._open(path).keys(), path)
        else:
            raise CheckpointError(f"{root}: no {SINGLE_NAME} or {INDEX_NAME} (only safetensors weights are read: "
                                  "pickled .bin files can run code)")

    def _open(self, path: Path):
        if path not in self._handles:
            from safetensors import safe_open
            try:
                self._handles[path] = safe_open(str(path), framework="pt", device="cpu")
            except Exception as e:  # safetensors raises its own error types for truncated or malformed headers
                raise CheckpointError(f"{path}: not a readable safetensors file: {e}") from e
        return self._handles[path]

    def names(self) -> list[str]:
        return list(self.location)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self.location[name]).get_slice(name).get_shape())

    def nbytes(self, name: str) -> int:
        """Stored size, from the header alone."""
        dtype = self._open(self.location[name]).get_slice(name).get_dtype()
        return math.prod(self.shape(name)) * _ELEMENT_BYTES.get(dtype, 0)

    def get(self, name: str) -> torch.Tensor:
        path = self.location[name]
        try:
            return self._open(path).get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor {name!r}: {e}") from e

    def error(self, name: str, message: str) -> CheckpointError:
        return CheckpointError(f"{self.location.get(name, self.root)}: tensor {name!r}: {message}")
