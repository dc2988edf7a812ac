"""SparseGPT (Frantar & Alistarh 2023, arXiv:2301.00774): prune with second-order (OBS) weight updates.

Columns are processed left to right in blocks. Within a block the mask is chosen once, from
w^2 / [H^-1]_jj^2 (the OBS saliency), then each column's pruning error is spread over the not yet
processed columns so the layer output on the calibration inputs moves as little as possible.
"""

import warnings

import torch

from .magnitude import check_sparsity, zero_count


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    block_size: int = 128,
    dampening_frac: float = 0.01,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """weight [out, in], hessian [in, in] = X^T X over the calibration tokens (any positive scale).

    Returns a copy with exactly zero_count(sparsity, out * in) zeros in the whole layer, the
    remaining weights updated. The count is exact per layer, not per row: like the paper, each
    block's mask is chosen over all its rows, so rows may end with different sparsities.
    mask: bool [out, in], True where to prune: these weights are zeroed instead of the ones the
    saliency picks (sparsity is then unused), and the others updated to make up for them.
    """
    check_sparsity(sparsity)
    if mask is not None and mask.shape != weight.shape:
        raise ValueError(f"mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must have shape ({cols}, {cols}), got {tuple(hessian.shape)}")
    w = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(w.device, torch.float32).clone()

    # An input feature that was always zero gives a zero row/column in H. Its weights cannot change
    # the calibration output, so pruning them is free: rank them first, and give H a unit diagonal
    # there so it stays invertible.
    dead = torch.diagonal(h) == 0
    dead_idx = dead.nonzero().squeeze(1)
    h[dead_idx, dead_idx] = 1.0
    # The inverse and its Cholesky factor in float64: a Hessian over many tokens with a few huge
    # activation features is ill-conditioned enough that float32 factorization loses the small
    # directions (or fails and forces far more dampening than asked for).
    u = _upper_cholesky_of_inverse(h.double(), dampening_frac).to(torch.float32)

    total = zero_count(sparsity, rows * cols)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        # Zeros given to this block: the rounded running share of `total`, so the blocks add up exactly.
        k = _share(total, end, cols) - _share(total, start, cols)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        d = u_block.diagonal()

        if mask is not None:
            prune = mask[:, start:end].to(w.device, torch.bool)
        else:
            saliency = block.square() / d.square()
            saliency[:, dead[start:end]] = 0.0
            prune = torch.zeros(block.numel(), dtype=torch.bool, device=w.device)
            if k:
                prune[torch.topk(saliency.flatten(), k, largest=False).indices] = True
            prune = prune.view_as(block)

        err = torch.empty_like(block)
        for i in range(end - start):
            col = block[:, i]
            kept = torch.where(prune[:, i], 0.0, col)
            err[:, i] = (col - kept) / d[i]
            block[:, i] = kept
            # Row i of the Cholesky factor is the OBS update for removing column i given the columns
            # before it are already fixed.
            block[:, i + 1:] -= err[:, i:i + 1] * u_block[i, i + 1:]
        w[:, start:end] = block
        # Lazy batch update: columns past the block get all of this block's errors in one matmul.
        w[:, end:] -= err @ u[start:end, end:]
    return w.to(weight.dtype)


def _share(total: int, col: int, cols: int) -> int:
    return (2 * total * col + cols) // (2 * cols)


def _upper_cholesky_of_inverse(h: torch.Tensor, dampening_frac: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp*I)^-1, damp = dampening_frac * mean(diag H).

    Dampening keeps H invertible when the calibration set spans fewer directions than H has
    columns. If rounding still leaves it indefinite we retry with 10x more dampening, with a
    warning, rather than fail the whole model.
    """
    eye = torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
    damp = dampening_frac * torch.diagonal(h).mean()
    for _ in range(6):
        lower, info = torch.linalg.cholesky_ex(h + damp * eye)
        if info.item() == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if info.item() == 0:
                if damp > dampening_frac * torch.diagonal(h).mean():
                    warnings.warn(f"SparseGPT: the Hessian needed dampening {float(damp):.3g} "
                                  f"({float(damp / torch.diagonal(h).mean()):.3g} of its mean diagonal) to factor")
                return upper
        damp = damp * 10
    raise RuntimeError("SparseGPT: the calibration Hessian is not positive definite even with heavy dampening")
