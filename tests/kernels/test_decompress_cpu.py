"""The CPU reference path of every format: expand row chunks (64-row blocks) and multiply densely."""

import pytest
import torch

import flashllm
from flashllm.kernels.decompress import dense_matmul


@pytest.mark.parametrize("fmt", flashllm.FORMATS)
@pytest.mark.parametrize("m", [1, 33, 64, 70, 97, 130])  # sell: a last 64-row block of one or two slices
def test_row_chunks_match_dense(fmt, m):
    g = torch.Generator().manual_seed(m)
    w = torch.randn(m, 2100, generator=g).half()
    w[torch.rand(m, 2100, generator=g) < 0.8] = 0
    x = torch.randn(3, 2100, generator=g).half()
    sw = flashllm.compress(w, fmt)
    y = dense_matmul(x, sw, chunk_bytes=64 * 2100 * 2)  # one row block per chunk
    ref = x.float() @ w.float().T
    assert y.shape == (3, m)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-3
