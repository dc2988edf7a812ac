"""`flashllm.spmm`: the one entry point; checks inputs, then picks the GPU kernel, the CPU path
(`flashllm.cpu`) or, on any other device, the reference."""

from __future__ import annotations

import torch

from .cpu import spmm_cpu
from .formats import SparseWeight
from .kernels.spmm import op_weight, spmm_cuda, spmm_custom_op, spmm_op
from .kernels.reference import spmm_reference


@spmm_custom_op.register_kernel("cpu")
def _spmm_custom_op_cpu(x, data, ptr, fmt, m, k, bf16, max_block_bytes, bias):
    """The custom op on the CPU (what torch.compile calls): the CPU path, which finds its cached CSR matrix
    by the weight's tensors."""
    return spmm_cpu(x, op_weight(data, ptr, fmt, m, k, bf16, max_block_bytes), bias)


def check_spmm_args(x, w) -> None:
    if not isinstance(w, SparseWeight):
        raise TypeError(f"w must be a flashllm.SparseWeight, got {type(w).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"x must be fp16, bf16 or fp32, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)} needs last dim K = {w.shape[1]} "
                         f"to multiply W {tuple(w.shape)} (y = x @ W^T)")
    if x.device != w.device:
        raise ValueError(f"x is on {x.device} but the weight is on {w.device}")


def check_bias(bias, x, w) -> None:
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.shape != (w.shape[0],):
        raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({w.shape[0]},) (one per output row of W)")
    if bias.device != x.device:
        raise ValueError(f"bias is on {bias.device} but x is on {x.device}")


def spmm(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W^T (+ bias) for x [..., K] and a compressed W [M, K]: y [..., M] in x's dtype, fp32
    accumulate; the bias is added before the one rounding to x's dtype."""
    check_spmm_args(x, w)
    if bias is not None:
        check_bias(bias, x, w)
        if bias.dtype != x.dtype or not bias.is_contiguous():
            bias = bias.to(x.dtype).contiguous()
    if x.is_cuda and x.dim() == 2:  # no reshapes: an eager call's host time counts (kernels/spmm.py)
        return spmm_cuda(x, w, bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, w.shape[1])
    if x.is_cuda:
        y = spmm_cuda(x2, w, bias)
    elif torch.compiler.is_compiling():  # one opaque graph node; the custom op's CPU kernel is spmm_cpu
        y = spmm_op(x2, w, bias)
    elif x.device.type == "cpu":
        y = spmm_cpu(x2, w, bias)
    else:
        y = spmm_reference(x2, w, bias)
    return y.reshape(*lead, w.shape[0])
