"""Large weights are encoded in 64-row slabs; the result must be bit-identical to one pass."""

import pytest
import torch

import flashllm.formats as F


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("m,k", [(130, 70), (1000, 900), (64, 5000), (65, 129)])
def test_slabs_match_one_pass(fmt, m, k, monkeypatch):
    g = torch.Generator().manual_seed(m * k)
    w = torch.randn(m, k, generator=g).half()
    w[torch.rand(m, k, generator=g) < 0.7] = 0
    whole = F.codec_for(fmt).encode(w, torch.float16)
    monkeypatch.setattr(F, "CHUNK_ELEMENTS", 64 * 64)  # force many slabs
    sliced = F.compress(w, fmt)
    sliced.validate()
    assert (sliced.nnz, sliced.max_block_bytes) == (whole.nnz, whole.max_block_bytes)
    for key, t in whole.state_dict().items():
        assert torch.equal(t, sliced.state_dict()[key]), key
