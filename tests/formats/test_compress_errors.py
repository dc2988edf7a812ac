"""Bad input to compress() gets a clear exception before any work."""

from __future__ import annotations

import re

import pytest
import torch

from flashllm.formats import codec_for, compress

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOOD = torch.zeros(8, 8, dtype=torch.float16)


@pytest.mark.parametrize("shape", [(), (8,), (2, 8, 8), (1, 1, 1, 1)])
def test_not_2d(shape):
    with pytest.raises(ValueError, match=re.escape(f"weight must be 2-D [M, K], got shape {tuple(shape)}")):
        compress(torch.zeros(shape, dtype=torch.float16))


@pytest.mark.parametrize("shape", [(0, 8), (8, 0), (0, 0)])
def test_empty(shape):
    with pytest.raises(ValueError, match=r"M, K >= 1"):
        compress(torch.zeros(shape, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
                                   torch.complex64, torch.complex128, torch.float64])
def test_unsupported_dtypes(dtype):
    with pytest.raises(ValueError, match=rf"weight must be fp16, bf16 or fp32, got {dtype}"):
        compress(torch.zeros(8, 8, dtype=dtype))


@pytest.mark.parametrize("fmt", ["auto", "bitmap", "tiled_csl", "sell", "pairmap"])
def test_fp32_needs_dtype(fmt):
    with pytest.raises(ValueError, match=r"pass dtype=torch.float16 or dtype=torch.bfloat16"):
        compress(torch.ones(8, 8), fmt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int16, torch.float8_e4m3fn])
def test_bad_storage_dtype(dtype):
    with pytest.raises(ValueError, match=r"dtype must be torch.float16 or torch.bfloat16"):
        compress(torch.ones(8, 8), dtype=dtype)


@pytest.mark.parametrize("fmt", ["csr", "Bitmap", "", "tiled-csl", None])
def test_unknown_format(fmt):
    expected = re.escape(f"unknown format {fmt!r}; expected one of ('tiled_csl', 'bitmap', 'sell', 'pairmap') or 'auto'")
    with pytest.raises(ValueError, match=expected):
        compress(GOOD, fmt)
    with pytest.raises(ValueError, match=r"unknown format"):
        codec_for(fmt)


def test_unknown_format_reported_before_the_dtype():
    with pytest.raises(ValueError, match=r"unknown format 'csr'"):
        compress(torch.ones(8, 8), "csr")  # fp32 without dtype= is wrong too; the format is named first


@pytest.mark.parametrize("weight", [[[1.0, 0.0]], None, 3.0])
def test_not_a_tensor(weight):
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor"):
        compress(weight)


@pytest.mark.parametrize("shape", [(1, 2**31), (2**31, 1)])
def test_too_large(shape):
    huge = torch.zeros(1, 1, dtype=torch.float16).expand(*shape)  # a view: no memory behind it
    with pytest.raises(ValueError, match=r"too large"):
        compress(huge)
