"""cat_rows stacks compressed weights along M without decompressing: it decodes to torch.cat of the parts."""

import pytest
import torch

from flashllm.formats import cat_rows, compress
from sparse_weights import DTYPES, FORMATS, assert_same_numbers, make_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rows", [(64, 128, 64), (128, 64, 37), (64, 1), (200,)], ids=str)
def test_decodes_to_the_rows_stacked(fmt, dtype, rows):
    parts = [make_weight(m, 100, 0.7, dtype=dtype, seed=i, specials=True) for i, m in enumerate(rows)]
    compressed = [compress(p, fmt) for p in parts]
    stacked = cat_rows(compressed)
    assert stacked.validate() is stacked
    assert (stacked.format, stacked.shape, stacked.dtype) == (fmt, (sum(rows), 100), dtype)
    assert stacked.nnz == sum(c.nnz for c in compressed)
    assert stacked.max_block_bytes == max(c.max_block_bytes for c in compressed)
    assert stacked.nbytes == sum(c.nbytes for c in compressed) - 8 * (len(rows) - 1)  # one shared end offset
    assert_same_numbers(stacked.to_dense(), torch.cat(parts))


@pytest.mark.parametrize("fmt", FORMATS)
def test_equals_compressing_the_stacked_rows(fmt):
    parts = [make_weight(m, 70, 0.8, seed=m) for m in (64, 192, 5)]
    stacked = cat_rows([compress(p, fmt) for p in parts])
    whole = compress(torch.cat(parts), fmt)
    for key, t in whole.state_dict().items():
        assert torch.equal(t, stacked.state_dict()[key]), key


def sparse(m, k=64, fmt="bitmap", dtype=torch.float16):
    return compress(make_weight(m, k, 0.5, dtype=dtype), fmt)


@pytest.mark.parametrize("parts,match", [
    ([sparse(32), sparse(64)], "part 0 has M = 32, not a multiple of 64"),
    ([sparse(64), sparse(64, k=65)], "part 1 has K 65"),
    ([sparse(64), sparse(64, fmt="tiled_csl")], "part 1 has format tiled_csl"),
    ([sparse(64), sparse(64, dtype=torch.bfloat16)], "part 1 has dtype torch.bfloat16"),
    ([], "at least one weight"),
])
def test_refuses_parts_that_do_not_stack(parts, match):
    with pytest.raises(ValueError, match=match):
        cat_rows(parts)


def test_refuses_what_is_not_a_sparse_weight():
    with pytest.raises(TypeError, match="part 1 is a Tensor"):
        cat_rows([sparse(64), torch.zeros(64, 64)])
