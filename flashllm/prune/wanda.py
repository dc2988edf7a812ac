"""Wanda (Sun et al. 2023, arXiv:2306.11695): score |W_ij| * ||X_j||, prune per output row."""

import torch

from .magnitude import prune_rows_by_score


def wanda_prune(weight: torch.Tensor, input_norm: torch.Tensor, sparsity: float) -> torch.Tensor:
    """weight [out, in], input_norm [in] = L2 norm of each input feature over the calibration tokens.

    A small weight on a feature that carries large activations still moves the output a lot;
    multiplying by the norm ranks weights by the size of their contribution instead.
    """
    if input_norm.shape != (weight.shape[1],):
        raise ValueError(f"input_norm must have shape ({weight.shape[1]},), got {tuple(input_norm.shape)}")
    score = weight.abs().float() * input_norm.to(weight.device, torch.float32)
    return prune_rows_by_score(weight, score, sparsity)
