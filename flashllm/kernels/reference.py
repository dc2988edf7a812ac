"""The reference SpMM: runs anywhere, defines what every kernel must compute."""

from __future__ import annotations

import torch

from ..formats import SparseWeight


def spmm_reference(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, K] @ W^T (+ bias [M]) -> [N, M], accumulated in fp32, rounded once to x's dtype."""
    dense = w.to_dense().to(x.device, torch.float32)
    y = x.to(torch.float32) @ dense.T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)
