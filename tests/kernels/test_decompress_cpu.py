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


@pytest.mark.parametrize("chunk_blocks", [1, 2, 3, 5])
def test_balanced_chunks_write_every_column_with_bias(chunk_blocks):
    """Five row blocks in chunks of 1-5 blocks (balanced: 3 blocks a chunk become 3 + 2): every output column
    is written once, straight into y, with its bias; leading dims and an fp32 x (fp32 compute) too."""
    g = torch.Generator().manual_seed(chunk_blocks)
    m, k = 300, 96
    w = torch.randn(m, k, generator=g).half()
    w[torch.rand(m, k, generator=g) < 0.6] = 0
    bias = torch.randn(m, generator=g).half()
    sw = flashllm.compress(w, "bitmap")
    for x in (torch.randn(2, 3, k, generator=g).half(), torch.randn(4, k, generator=g)):
        y = dense_matmul(x, sw, chunk_bytes=chunk_blocks * 64 * k * 2, bias=bias)
        ref = x.float() @ w.float().T + bias.float()
        assert y.shape == (*x.shape[:-1], m) and y.dtype == x.dtype
        assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-3
