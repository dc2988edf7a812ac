"""q/k/v and gate/up fused into one linear each: the same network as unfused, and unfused where they do not stack."""

import gc
import weakref

import pytest
import torch
from torch import nn

from engine_models import PAD, PROMPTS, hf_generate, last_logits, tiny_model
from flashllm.engine import Generator, from_hf, random_model
from flashllm.engine.fuse import fuse_projections, unfuse_block
from flashllm.nn import SparseLinear
from flashllm.sparsify import sparsify_

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IDS = [5, 6, 7, 8, 9, 10, 11]


def stackable_model(kind: str, weights: str):
    """A tiny transformers model whose q, k, v, gate and up all have whole 64-row blocks (compressed ones
    stack only then), dense or pruned and compressed in one format."""
    hf = tiny_model(kind, sparsity=0, hidden_size=128, **({"head_dim": 32} if kind == "llama" else {}))
    if weights != "dense":
        sparsify_(hf, 0.6, "magnitude", format=weights, progress=False)
    return hf


def engine_tokens(model):
    return Generator(model, len(PROMPTS), 32).generate(PROMPTS, 10, pad_token_id=PAD).tokens


def fused_parts(model):
    attn, ffn = model.layers[0].attn, model.layers[0].ffn
    return attn.qkv_proj, attn.q_proj, ffn.gate_up_proj, ffn.up_proj


@pytest.mark.parametrize("weights", ["dense", "bitmap", "tiled_csl", "sell", "pairmap"])
@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_fused_model_computes_what_the_unfused_one_does(kind, weights):
    hf = stackable_model(kind, weights)
    fused, plain = from_hf(hf), from_hf(hf, fuse=False)
    qkv, q, gate_up, up = fused_parts(fused)
    linear = nn.Linear if weights == "dense" else SparseLinear
    assert isinstance(qkv, linear) and q is None
    assert qkv.out_features == (384 if kind == "opt" else 256)  # OPT: 4 KV heads, Llama: 2
    assert (gate_up is not None and up is None) if kind == "llama" else (gate_up is None and up is not None)
    if weights != "dense":
        assert qkv.weight.format == weights and qkv.weight.validate() is qkv.weight
    assert qkv.bias is not None if kind == "opt" else qkv.bias is None
    torch.testing.assert_close(last_logits(fused, IDS), last_logits(plain, IDS))
    assert torch.equal(engine_tokens(fused), hf_generate(hf, max_new_tokens=10))


def test_projections_that_do_not_stack_stay_apart():
    """Dense v next to compressed q and k, and a k of 32 rows before v: attention stays unfused, the FFN fuses."""
    hf = tiny_model("llama", sparsity=0)
    sparsify_(hf, 0.5, "magnitude", exclude=("lm_head", "*.v_proj"), progress=False)
    model = from_hf(hf)
    for block in model.layers:
        assert block.attn.qkv_proj is None and isinstance(block.attn.v_proj, nn.Linear)
        assert block.ffn.gate_up_proj is not None
    model.layers[0].attn.v_proj = SparseLinear.from_linear(model.layers[0].attn.v_proj)
    fuse_projections(model)
    assert model.layers[0].attn.qkv_proj is None  # k_proj has 32 rows: cat_rows cannot stack it
    assert torch.equal(engine_tokens(model), hf_generate(hf, max_new_tokens=10))


@pytest.mark.parametrize("weights", ["dense", "bitmap"])
def test_unfusing_gives_the_parts_back(weights):
    hf = stackable_model("opt", weights)
    plain, fused = from_hf(hf, fuse=False), from_hf(hf)
    unfuse_block(fused.layers[1])
    for name in ("q_proj", "k_proj", "v_proj"):
        want, got = getattr(plain.layers[1].attn, name), getattr(fused.layers[1].attn, name)
        assert type(got) is type(want) and torch.equal(got.bias, want.bias)
        if weights == "dense":
            assert torch.equal(got.weight, want.weight)
        else:
            assert got.weight.format == want.weight.format
            assert torch.equal(got.weight.to_dense(), want.weight.to_dense())
    assert fused.layers[1].attn.qkv_proj is None


def test_fusing_frees_the_unfused_weights():
    model = from_hf(stackable_model("llama", "bitmap"), fuse=False)  # the transformers model is gone
    attn, ffn = model.layers[0].attn, model.layers[0].ffn
    parts = [weakref.ref(m.weight) for m in (attn.q_proj, attn.k_proj, attn.v_proj, ffn.gate_proj, ffn.up_proj)]
    before = model.weight_nbytes()
    fuse_projections(model)
    gc.collect()
    assert all(ref() is None for ref in parts)
    assert model.weight_nbytes() == before - 2 * (2 * 8 + 8)  # per layer, fewer block offsets: one per stacked part


@pytest.mark.parametrize("sparsity", [0.0, 0.7])
@pytest.mark.parametrize("name", ["opt-tiny", "llama-tiny"])
def test_random_models_fuse_unless_asked_not_to(name, sparsity):
    build = dict(sparsity=sparsity, device="cpu", dtype=torch.float32, std=0.1, seed=3)
    fused, _ = random_model(name, **build)
    plain, _ = random_model(name, fuse=False, **build)
    assert fused_parts(fused)[0] is not None and fused_parts(plain)[0] is None
    torch.testing.assert_close(last_logits(fused, IDS), last_logits(plain, IDS))
