"""torch.compile(fullgraph=True) of models with SparseLinear layers on the CPU: one graph, eager's results."""

import pytest
import torch
from torch import nn

import flashllm
from flashllm.formats import FORMATS
from flashllm.nn import SparseLinear

# Under torch.compile flashllm.spmm is one opaque node, the custom op flashllm::spmm, whose CPU kernel is the
# CPU path (its input-dependent branch and its CSR cache stay out of the graph).


def sparse_weight(out_features, in_features, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    return w * (torch.rand(out_features, in_features, generator=g) >= sparsity)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_sparse_linear_stack(fmt, dtype):
    torch._dynamo.reset()
    store = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
    model = nn.Sequential(
        SparseLinear.from_dense(sparse_weight(96, 80, 0.6, 0).to(store), torch.randn(96), format=fmt),
        nn.ReLU(),
        SparseLinear.from_dense(sparse_weight(72, 96, 0.9, 1).to(store), format=fmt),
    ).eval()
    x = torch.randn(2, 5, 80, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model, fullgraph=True)(x)
    assert got.dtype == dtype and got.shape == (2, 5, 72)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_transformers_model_loaded_from_a_flashllm_directory(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    flashllm.sparsify_(model, sparsity=0.6, method="magnitude", progress=False)
    flashllm.save_pretrained(model, tmp_path / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert any(isinstance(m, SparseLinear) for m in model.modules())
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = torch.compile(model, fullgraph=True)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
