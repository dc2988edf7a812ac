"""Whole-model I/O: Hugging Face-style sparse checkpoints and the compressed-tensors `sparse-bitmask` reader."""

from .checkpoint import CheckpointError, describe, from_pretrained
from .save import save_pretrained

__all__ = ["CheckpointError", "describe", "from_pretrained", "save_pretrained"]
