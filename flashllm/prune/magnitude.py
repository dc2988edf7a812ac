"""Magnitude pruning: per output row, zero the smallest |w|."""

import math

import torch


def check_sparsity(sparsity: float) -> float:
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return sparsity


def zero_count(sparsity: float, n: int) -> int:
    """How many of n entries to zero: nearest integer to sparsity * n, halves rounded up."""
    return math.floor(check_sparsity(sparsity) * n + 0.5)


def prune_rows_by_score(weight: torch.Tensor, score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the `zero_count(sparsity, in)` lowest-scoring entries of every row of weight [out, in].

    topk picks exactly k indices even among ties, so every row ends with exactly k zeros
    (more only if the row already held more zeros than that).
    """
    if weight.dim() != 2 or score.shape != weight.shape:
        raise ValueError(f"expected a 2-D weight and a score of its shape, "
                         f"got {tuple(weight.shape)} and {tuple(score.shape)}")
    k = zero_count(sparsity, weight.shape[1])
    pruned = weight.clone()
    if k:
        drop = torch.topk(score, k, dim=1, largest=False).indices
        pruned.scatter_(1, drop, 0)
    return pruned


def magnitude_prune(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """weight [out, in] -> a copy with round(sparsity * in) zeros per row, the smallest |w| of each row."""
    return prune_rows_by_score(weight, weight.abs(), sparsity)
