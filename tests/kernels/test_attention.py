"""Decode attention (kernels/attention.py) against SDPA; on the CPU the engine keeps SDPA."""

import pytest
import torch
import torch.nn.functional as F

from flashllm.kernels.attention import WARP_CHOICES, decode_attention


def sdpa_reference(q, k, v, mask, scale):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale)


def test_cpu_falls_back():
    q, k = torch.randn(2, 4, 1, 64).half(), torch.randn(2, 4, 9, 64).half()
    assert decode_attention(q, k, k, torch.ones(2, 1, 1, 9, dtype=torch.bool), 0.1) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (8, 2), (56, 56)])
@pytest.mark.parametrize("length", [1, 17, 192, 1000])
def test_gpu_decode_attention_matches_sdpa(dtype, d, heads, kv_heads, length):
    g = torch.Generator("cuda").manual_seed(length * heads + d)
    b, max_seq = 3, length + 40
    q = torch.randn(b, heads, 1, d, device="cuda", generator=g).to(dtype)
    cache_k = torch.randn(b, kv_heads, max_seq, d, device="cuda", generator=g).to(dtype)
    cache_v = torch.randn(b, kv_heads, max_seq, d, device="cuda", generator=g).to(dtype)
    k, v = cache_k[:, :, :length], cache_v[:, :, :length]  # strided views, as the engine passes the cache
    mask = torch.rand(b, 1, 1, length, device="cuda", generator=g) > 0.4
    mask[:, :, :, -1] = True  # the query's own slot: no row is empty
    scale = d ** -0.5
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    v.masked_fill_(~mask[:, 0, 0, :][:, None, :, None], float("nan"))  # in the cache: masked keys hold garbage
    for warps in (None, *WARP_CHOICES):  # the dispatched CTA size and every other one
        y = decode_attention(q, k, v, mask, scale, warps=warps)
        assert y is not None and y.shape == (b, heads, 1, d) and y.dtype == dtype
        # masked keys' values are never read (NaN there would poison the sum)
        torch.testing.assert_close(y.float(), sdpa_reference(q, k, v.nan_to_num(0.0), mask, scale), rtol=tol, atol=tol)


@pytest.mark.gpu
def test_gpu_unsupported_shapes_fall_back():
    q = torch.randn(2, 4, 2, 64, device="cuda").half()  # two query tokens (prefill)
    k = torch.randn(2, 4, 9, 64, device="cuda").half()
    assert decode_attention(q, k, k, torch.ones(2, 1, 2, 9, dtype=torch.bool, device="cuda"), 0.1) is None
    q = torch.randn(2, 4, 1, 80, device="cuda").half()  # head dim 80
    k = torch.randn(2, 4, 9, 80, device="cuda").half()
    assert decode_attention(q, k, k, torch.ones(2, 1, 1, 9, dtype=torch.bool, device="cuda"), 0.1) is None
