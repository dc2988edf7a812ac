"""The reference SpMM: runs anywhere, defines what every kernel must compute."""

from __future__ import annotations

import torch

from ..formats import SparseWeight


def spmm_reference(x: torch.Tensor, w: SparseWeight) -> torch.Tensor:
    """x [N, K] @ W^T -> [N, M], accumulated in fp32, returned in x's dtype."""
    dense = w.to_dense().to(x.device, torch.float32)
    return (x.to(torch.float32) @ dense.T).to(x.dtype)
