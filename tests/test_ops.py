"""flashllm.spmm(x, w) against fp64 dense math: y = x @ W^T, fp32 accumulate, x's dtype out."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flashllm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}


def pruned(m, k, sparsity, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, k, generator=g)
    w[torch.rand(m, k, generator=g) < sparsity] = 0
    return w.to(dtype)


def assert_matches_fp64(y, x, w_dense):
    """|y - x @ W^T| within fp32 accumulation over K terms plus one rounding to y's dtype."""
    x64, w64 = x.double(), w_dense.double()
    ref = x64 @ w64.T
    k = w_dense.shape[1]
    u = UNIT_ROUNDOFF[y.dtype]
    bound = u * ref.abs() + (k + 2) * 2.0**-24 * (x64.abs() @ w64.abs().T) * (1 + u) + torch.finfo(y.dtype).tiny
    err = (y.double() - ref).abs()
    assert bool((err <= bound).all()), f"max error {float(err.max())}, worst excess {float((err - bound).max())}"


@given(m=st.integers(1, 200), k=st.integers(1, 200), sparsity=st.floats(0.0, 1.0),
       fmt=st.sampled_from(["bitmap", "tiled_csl"]),
       w_dtype=st.sampled_from([torch.float16, torch.bfloat16]),
       x_dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
       lead=st.lists(st.integers(0, 4), max_size=3), layout=st.sampled_from(["contiguous", "strided", "transposed"]),
       seed=st.integers(0, 2**31 - 1))
def test_spmm_matches_fp64_dense(m, k, sparsity, fmt, w_dtype, x_dtype, lead, layout, seed):
    w = pruned(m, k, sparsity, w_dtype, seed)
    sw = flashllm.compress(w, fmt)
    g = torch.Generator().manual_seed(seed + 1)
    if layout == "strided":  # every other element of a wider buffer
        x = torch.randn(*lead, 2 * k, generator=g).to(x_dtype)[..., ::2]
    elif layout == "transposed":  # K is not the fastest dimension
        x = torch.randn(k, *lead, generator=g).to(x_dtype).movedim(0, -1)
    else:
        x = torch.randn(*lead, k, generator=g).to(x_dtype)
    y = flashllm.spmm(x, sw)
    assert y.shape == (*lead, m) and y.dtype == x_dtype and y.device == x.device
    assert_matches_fp64(y.reshape(-1, m), x.reshape(-1, k), w)


def test_spmm_one_dimensional_x():
    w = pruned(40, 70, 0.6)
    x = torch.randn(70, dtype=torch.float16)
    y = flashllm.spmm(x, flashllm.compress(w))
    assert y.shape == (40,)
    assert_matches_fp64(y[None], x[None], w)


def test_spmm_no_tokens():
    sw = flashllm.compress(pruned(40, 70, 0.6))
    assert flashllm.spmm(torch.empty(0, 70, dtype=torch.float16), sw).shape == (0, 40)
    assert flashllm.spmm(torch.empty(3, 0, 70, dtype=torch.bfloat16), sw).shape == (3, 0, 40)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_spmm_all_zero_weight(fmt):
    sw = flashllm.compress(torch.zeros(65, 130, dtype=torch.bfloat16), fmt)
    y = flashllm.spmm(torch.randn(5, 130, dtype=torch.bfloat16), sw)
    assert torch.equal(y, torch.zeros(5, 65, dtype=torch.bfloat16))


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_nan_and_inf_propagate_as_in_dense_math(fmt):
    w = pruned(70, 100, 0.8)
    w[3, 5] = float("nan")
    w[10, 7] = float("inf")
    w[11, 8] = float("-inf")
    w[12, 9] = float("inf")
    x = torch.rand(6, 100, dtype=torch.float16) + 0.1  # positive: Inf * x stays Inf
    x[0, 9] = 0  # token 0: Inf * 0 = NaN in row 12
    y = flashllm.spmm(x, flashllm.compress(w, fmt))
    ref = x.double() @ w.double().T
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert y[:, 3].isnan().all() and (y[:, 10] == float("inf")).all() and (y[:, 11] == float("-inf")).all()
    assert y[0, 12].isnan() and (y[1:, 12] == float("inf")).all()
    finite = ref.isfinite()
    assert bool(((y.double() - ref).abs()[finite] <= 1e-2 * ref.abs()[finite] + 1e-3).all())


def test_spmm_output_overflows_like_dense():
    w = torch.full((2, 64), 60000.0, dtype=torch.float16)
    y = flashllm.spmm(torch.ones(1, 64, dtype=torch.float16), flashllm.compress(w))
    assert (y == float("inf")).all()  # 3.8e6 does not fit fp16; fp32 accumulation does not hide it


# ---- errors ----

W = flashllm.compress(pruned(32, 48, 0.5))


@pytest.mark.parametrize("shape", [(48 + 1,), (4, 47), (2, 3, 32), (48, 4)])
def test_shape_mismatch_names_both_shapes(shape):
    x = torch.zeros(shape, dtype=torch.float16)
    msg = re.escape(f"x {tuple(shape)}") + ".*" + re.escape("(32, 48)")
    with pytest.raises(ValueError, match=msg):
        flashllm.spmm(x, W)


def test_scalar_x():
    with pytest.raises(ValueError, match=r"shape mismatch: x \(\)"):
        flashllm.spmm(torch.tensor(1.0, dtype=torch.float16), W)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool, torch.complex64, torch.float64])
def test_x_dtype(dtype):
    with pytest.raises(ValueError, match=rf"x must be fp16, bf16 or fp32, got {dtype}"):
        flashllm.spmm(torch.zeros(4, 48, dtype=dtype), W)


def test_device_mismatch_names_both_devices():
    x = torch.empty(4, 48, dtype=torch.float16, device="meta")
    with pytest.raises(ValueError, match=r"x is on meta but the weight is on cpu"):
        flashllm.spmm(x, W)


def test_wrong_argument_types():
    with pytest.raises(TypeError, match=r"w must be a flashllm.SparseWeight, got Tensor"):
        flashllm.spmm(torch.zeros(4, 48), torch.zeros(32, 48))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        flashllm.spmm([[0.0] * 48], W)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_bias_is_added_before_the_one_rounding(fmt):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(70, 48, generator=g).half()
    w[torch.rand(70, 48, generator=g) < 0.6] = 0
    sw = flashllm.compress(w, fmt)
    x = torch.randn(3, 5, 48, generator=g).half()
    bias = torch.randn(70, generator=g).half() * 3
    y = flashllm.spmm(x, sw, bias)
    exact = (x.double() @ w.double().T + bias.double()).half()
    assert y.shape == (3, 5, 70)
    assert (y.float() - exact.float()).abs().max() <= 2e-3 * exact.float().abs().max()
    # same as the un-biased product plus the bias, up to the extra rounding that saves
    assert torch.allclose(y.float(), flashllm.spmm(x, sw).float() + bias.float(), rtol=2e-3, atol=1e-2)


def test_bias_errors_are_clear():
    sw = flashllm.compress(torch.eye(8).half(), "bitmap")
    x = torch.randn(2, 8).half()
    with pytest.raises(ValueError, match=r"bias has shape \(7,\), expected \(8,\)"):
        flashllm.spmm(x, sw, torch.zeros(7).half())
    with pytest.raises(TypeError, match="bias must be a torch.Tensor"):
        flashllm.spmm(x, sw, [0.0] * 8)
