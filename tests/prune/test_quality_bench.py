"""flashllm bench quality prunes as sparsify_ does: the same weights, the same stored values."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flashllm.bench.quality import _densified, prune
from flashllm.nn import SparseLinear
from flashllm.sparsify import sparsify_


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_bench_prune_gives_the_weights_sparsify_stores(method):
    torch.manual_seed(0)
    dense = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    windows = [torch.randint(64, (3, 16), generator=torch.Generator().manual_seed(1))]
    pruned, stored_sparsity, _ = prune(dense, method, 0.5, windows)
    reference = LlamaForCausalLM(dense.config).eval()
    reference.load_state_dict(dense.state_dict())
    sparsify_(reference, 0.5, method, calibration=None if method == "magnitude" else windows, progress=False)
    layers = [n for n, m in reference.named_modules() if isinstance(m, SparseLinear)]
    assert len(layers) == 14 and stored_sparsity == pytest.approx(0.5)
    for name in layers:
        assert torch.equal(pruned.get_submodule(name).weight, reference.get_submodule(name).weight.to_dense().float())
    ids = torch.randint(64, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(_densified(reference)(ids).logits, pruned(ids).logits)
