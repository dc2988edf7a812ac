"""The CPU path of `flashllm.spmm`: each weight converted once to compressed sparse rows, multiplied by MKL.

The GPU formats are laid out for tensor-core fragments and shared-memory banks; a CPU gains nothing from
that layout and pays for decoding it, so a weight's first CPU multiplication converts it to a torch
sparse CSR matrix - fp32 values (exactly the 16-bit ones), int32 column indices and row offsets - and
keeps it beside the SparseWeight for the calls after. torch's CPU CSR matmul (MKL's sparse BLAS) reads
only the non-zeros: 8 bytes each, so the cache is O(nnz) (at 80% sparsity 1.6 bytes per weight, the
dense fp16 weight's 2.0) and no dense copy of the weight is kept. MKL's sparse kernels take fp32 or
fp64 only, and torch's fp16/bf16 dense matmuls on a CPU are slower than its fp32 ones, so the CPU path
computes in fp32 and rounds once to x's dtype, like the reference.

`cache_nbytes(w)` gives the cache's size; `drop_cache(w)` frees it.
"""

from __future__ import annotations

import math
import warnings
import weakref

import torch

from .formats import SparseWeight
from .kernels.reference import spmm_reference

# MKL's sparse-times-dense kernel is fastest with the dense operand row-major [K, P] and P a multiple
# of 4: SmolLM2-135M's linears at 50% sparsity, one thread, 51 ms a token as [K, 4] (three zero
# columns) against 80-89 ms as [K, 1] or [K, 3]; 80%: 23 against 31 ms. So x's tokens become columns,
# padded with zero columns to a multiple of COLUMN_MULTIPLE.
COLUMN_MULTIPLE = 4
# Tokens per MKL call: past ~64 columns the dense operand outgrows the caches and the cost per token
# rises (3072x576 at 50%, 512 tokens: 28 ms in chunks of 64, 34 ms in one call; 4096x4096: 232 vs 874).
CHUNK_TOKENS = 64
# Rows converted at a time when the cache is built: bounds the int64 temporaries of `nonzero`.
_SLAB_ELEMENTS = 1 << 22
# SparseWeight -> (its tensors' versions, CSR). Held beside the weight rather than on it, so copies,
# pickles and state dicts of the weight never carry it, and it goes when the weight goes.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _versions(w: SparseWeight) -> tuple[int, ...]:
    """The tensors' in-place modification counters: a cache built from other contents is stale."""
    return tuple(t._version for t in w.tensors.values())


def _build_csr(w: SparseWeight) -> torch.Tensor:
    m, k = w.shape
    # Normal mode and no autograd: a cache built under inference_mode would be an inference tensor,
    # which autograd refuses to save when a later call's x requires grad.
    with torch.inference_mode(False), torch.no_grad():
        dense = w.to_dense()  # 16-bit, this one weight, dropped on return
        rows = max(1, _SLAB_ELEMENTS // k)
        counts, cols, vals = [], [], []
        for r in range(0, m, rows):
            slab = dense[r:r + rows]
            nz = slab != 0  # NaN and Inf are values, as in the formats
            counts.append(nz.sum(1, dtype=torch.int32))
            cols.append(nz.nonzero()[:, 1].to(torch.int32))
            vals.append(slab[nz].to(torch.float32))
        del dense
        crow = torch.zeros(m + 1, dtype=torch.int32)
        torch.cumsum(torch.cat(counts), 0, out=crow[1:])
        with warnings.catch_warnings():  # "sparse CSR support is in beta": every op used here is tested
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, torch.cat(cols), torch.cat(vals), (m, k), dtype=torch.float32,
                                           check_invariants=False)


def csr_of(w: SparseWeight) -> torch.Tensor:
    """W as an fp32 sparse CSR tensor (int32 indices), built on first use and cached for as long as `w` lives."""
    if w.device.type != "cpu":
        raise ValueError(f"the CPU cache needs a weight on the CPU, got {w.device}")
    if w.nnz >= 2**31:
        raise ValueError(f"weight {w.shape} has {w.nnz} non-zeros: more than int32 CSR indices can address")
    cached = _CACHE.get(w)
    versions = _versions(w)
    if cached is not None and cached[0] == versions:
        return cached[1]
    _CACHE.pop(w, None)  # a stale cache is freed before its successor is built
    csr = _build_csr(w)
    _CACHE[w] = (versions, csr)
    return csr


def cache_nbytes(w: SparseWeight) -> int:
    """Bytes of w's CPU cache (0 when none is built): values, column indices and row offsets."""
    cached = _CACHE.get(w)
    if cached is None:
        return 0
    csr = cached[1]
    return sum(t.numel() * t.element_size() for t in (csr.values(), csr.col_indices(), csr.crow_indices()))


def drop_cache(w: SparseWeight) -> None:
    """Free w's CPU cache; the next CPU call builds it again."""
    _CACHE.pop(w, None)


def _columns(x: torch.Tensor) -> torch.Tensor:
    """x [n, K] as fp32 [K, P]: tokens as columns, zero-padded to a multiple of COLUMN_MULTIPLE."""
    n, k = x.shape
    p = -(-n // COLUMN_MULTIPLE) * COLUMN_MULTIPLE
    cols = x.new_zeros(k, p, dtype=torch.float32)
    cols[:, :n] = x.T
    return cols


def spmm_cpu(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, K] @ W^T (+ bias [M]) -> [N, M] on the CPU: fp32 accumulate, rounded once to x's dtype."""
    n = x.shape[0]
    out = x.new_empty(n, w.shape[0])
    if n == 0:
        return out
    # A zero weight times Inf or NaN is NaN in dense math; the sparse product never multiplies the
    # zeros, so an x holding either is left to the reference. The sum is non-finite exactly then (or on
    # fp32 overflow of finite values, which the reference handles as well).
    if not math.isfinite(x.sum(dtype=torch.float32).item()):
        return spmm_reference(x, w, bias)
    csr = csr_of(w)
    parts = [(csr @ _columns(x[i:i + CHUNK_TOKENS]))[:, :min(CHUNK_TOKENS, n - i)].T
             for i in range(0, n, CHUNK_TOKENS)]
    y = parts[0] if len(parts) == 1 else torch.cat(parts)  # [N, M] fp32
    if bias is not None:
        y = y + bias  # promoted to fp32: the bias joins before the one rounding
    return out.copy_(y)  # contiguous, rounded once to x's dtype
