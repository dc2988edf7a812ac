"""Pruning: dense weight [out, in] (+ calibration statistics) -> dense weight with zeros in place.

Packing the zeros into a SparseWeight is a separate step (flashllm.compress); any pruner's output,
ours or another tool's, can be compressed the same way.
"""

from .calibration import (InputStats, calibrate_sequentially, calibration_windows, prepare_samples, read_corpus,
                          record_inputs)
from .magnitude import magnitude_prune, zero_count
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_prune

__all__ = [
    "InputStats",
    "calibrate_sequentially",
    "calibration_windows",
    "magnitude_prune",
    "prepare_samples",
    "read_corpus",
    "record_inputs",
    "sparsegpt_prune",
    "wanda_prune",
    "zero_count",
]
