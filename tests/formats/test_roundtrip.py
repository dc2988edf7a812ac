"""compress(w).to_dense() == w, exactly, for any shape, sparsity, dtype and pattern."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flashllm
from flashllm.formats import compress
from sparse_weights import FORMATS, PATTERNS, assert_same_numbers, make_weight, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def check_round_trip(w: torch.Tensor, fmt: str) -> flashllm.SparseWeight:
    sw = compress(w, fmt)
    assert sw.validate() is sw
    assert sw.format == fmt
    assert sw.shape == tuple(w.shape)
    assert sw.dtype == w.dtype
    assert sw.device == w.device
    nnz = int((w != 0).sum())
    assert sw.nnz == nnz
    assert sw.sparsity == pytest.approx(1 - nnz / w.numel(), abs=1e-12)
    assert_same_numbers(sw.to_dense(), w)
    return sw


@pytest.mark.parametrize("fmt", FORMATS)
@given(case=weights())
def test_round_trip(fmt, case):
    _, w = case
    check_round_trip(w, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", [(64, 64), (130, 70)])
def test_round_trip_every_pattern(fmt, pattern, shape):
    for dtype in (torch.float16, torch.bfloat16):
        check_round_trip(make_weight(*shape, 0.7, pattern, dtype, seed=1, specials=True), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_round_trip_larger(fmt, sparsity):
    check_round_trip(make_weight(257, 520, sparsity, "random", torch.bfloat16, seed=2), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_inf_are_values(fmt):
    w = torch.zeros(70, 80, dtype=torch.float16)
    w[0, 0], w[1, 65], w[69, 79], w[64, 3] = float("nan"), float("inf"), float("-inf"), -0.0
    sw = check_round_trip(w, fmt)
    assert sw.nnz == 3
    d = sw.to_dense()
    assert d[0, 0].isnan() and d[1, 65] == float("inf") and d[69, 79] == float("-inf") and d[64, 3] == 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 150), k=st.integers(1, 150),
       sparsity=st.floats(0.0, 1.0))
def test_fp32_stored_as_requested_dtype(fmt, stored, seed, m, k, sparsity):
    w32 = make_weight(m, k, sparsity, "random", torch.float32, seed, specials=True)
    w32[0, 0] = 1e-30  # a non-zero that narrows to zero: the weight it stands for has a zero there
    sw = compress(w32, fmt, dtype=stored).validate()
    assert sw.dtype == stored
    want = w32.to(stored)
    assert sw.nnz == int((want != 0).sum())
    assert_same_numbers(sw.to_dense(), want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp16_to_bf16_on_request(fmt):
    w = make_weight(90, 100, 0.6, seed=3)
    sw = compress(w, fmt, dtype=torch.bfloat16)
    assert sw.dtype == torch.bfloat16
    assert_same_numbers(sw.to_dense(), w.to(torch.bfloat16))


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_contiguous_and_grad_weights(fmt):
    base = make_weight(200, 150, 0.8, seed=4)
    for w in (base.T, base[::3, 1::2], base.clone().requires_grad_(True)):
        sw = compress(w, fmt).validate()
        assert_same_numbers(sw.to_dense(), w.detach().contiguous())


@pytest.mark.parametrize("fmt", FORMATS)
def test_compress_does_not_modify_input(fmt):
    w = make_weight(100, 100, 0.5, seed=5, specials=True)
    before = w.clone()
    compress(w, fmt)
    assert torch.equal(w.view(torch.int16), before.view(torch.int16))


@given(case=weights(max_dim=200))
def test_auto_picks_by_sparsity_else_the_smaller(case):
    _, w = case
    sizes = {fmt: compress(w, fmt).nbytes for fmt in FORMATS}
    auto = compress(w)  # format="auto" is the default
    assert flashllm.formats.predicted_nbytes(w) == sizes
    if (w != 0).sum() <= (1 - flashllm.formats.PAIRMAP_MIN_SPARSITY) * w.numel():
        assert auto.format == "pairmap"
    else:
        assert auto.format in ("bitmap", "tiled_csl")
        assert auto.nbytes == min(sizes["bitmap"], sizes["tiled_csl"])
    assert sizes[auto.format] == auto.nbytes
    assert_same_numbers(auto.to_dense(), w)


def test_auto_choice_follows_sparsity():
    # bitmap costs 2 bytes/non-zero + 1/8 per element; Tiled-CSL 4 bytes/non-zero; pairmap from 65%
    assert compress(make_weight(128, 128, 0.5, seed=6), "auto").format == "bitmap"
    assert compress(make_weight(128, 128, 0.6, seed=6), "auto").format == "bitmap"
    assert compress(make_weight(128, 128, 0.8, seed=6), "auto").format == "pairmap"
    assert compress(make_weight(128, 128, 0.9, seed=6), "auto").format == "pairmap"


@pytest.mark.parametrize("max_tokens, sparsity, expected", [
    (None, 0.9, "pairmap"), (1, 0.9, "sell"), (16, 0.9, "sell"), (17, 0.9, "pairmap"), (64, 0.9, "pairmap"),
    (8, 0.8, "pairmap"), (8, 0.5, "bitmap")])
def test_auto_takes_sell_only_for_few_tokens(max_tokens, sparsity, expected):
    # sliced ELL's cost grows with every token: from 85% it is "auto"'s choice only for <= 16 tokens a call
    w = make_weight(128, 128, sparsity, seed=6)
    assert compress(w, "auto", max_tokens=max_tokens).format == expected
    assert flashllm.formats.auto_format(w, max_tokens) == expected
    assert compress(w, "bitmap", max_tokens=8).format == "bitmap"  # an explicit format ignores the hint


def test_auto_rejects_a_token_count_below_one():
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        compress(make_weight(64, 64, 0.9, seed=6), "auto", max_tokens=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_to_and_state_dict_round_trip(fmt):
    w = make_weight(100, 300, 0.75, dtype=torch.bfloat16, seed=7, specials=True)
    sw = compress(w, fmt)
    moved = sw.to("cpu")
    assert_same_numbers(moved.to_dense(), w)
    sd = sw.state_dict()
    assert set(sd) == {"meta", *sw.tensors}
    back = flashllm.SparseWeight.from_state_dict({k: v.clone() for k, v in sd.items()})
    assert (back.format, back.shape, back.dtype, back.nnz, back.nbytes, back.max_block_bytes) == \
        (sw.format, sw.shape, sw.dtype, sw.nnz, sw.nbytes, sw.max_block_bytes)
    assert_same_numbers(back.to_dense(), w)
    assert fmt in repr(sw) and "(100, 300)" in repr(sw)
