"""Building engine models: from checkpoint directories, from transformers models, from random weights."""

import pytest
import torch
from torch import nn

from engine_models import PAD, PROMPTS, compressed_projections, hf_generate, tiny_model
from flashllm.engine import (PRESETS, Generator, ModelArgs, from_hf, load_model, preset, random_model, supports,
                             to_hf_config, with_dense_linears)
from flashllm.models import from_pretrained, save_pretrained
from flashllm.nn import SparseLinear

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def engine_tokens(model, n=12):
    return Generator(model, 3, 32).generate(PROMPTS, n, pad_token_id=PAD).tokens


def test_load_a_flashllm_checkpoint(tmp_path):
    hf = tiny_model("opt")
    save_pretrained(hf, tmp_path / "ckpt")
    model = load_model(tmp_path / "ckpt", device="cpu")
    assert compressed_projections(model) == 12
    assert torch.equal(engine_tokens(model), hf_generate(hf, max_new_tokens=12))


def test_load_a_dense_checkpoint_holding_zeros(tmp_path):
    """A pruned model saved dense (how llm-compressor writes them): compressed while loading."""
    hf = tiny_model("llama", sparsity=0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 2 and ".layers." in name:
                p.mul_(torch.rand(p.shape) >= 0.6)
    hf.save_pretrained(tmp_path / "dense")
    model = load_model(tmp_path / "dense", device="cpu")
    assert compressed_projections(model) == 14
    reference = from_pretrained(tmp_path / "dense", device="cpu")  # the same values (fp16-stored), in transformers
    assert torch.equal(engine_tokens(model), hf_generate(reference, max_new_tokens=12))


def test_unsupported_models_are_refused_before_loading(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    assert not supports(gpt2.config) and supports(tiny_model("qwen2", sparsity=0).config)
    with pytest.raises(NotImplementedError, match="gpt2"):
        from_hf(gpt2)
    gpt2.save_pretrained(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "model.safetensors").write_bytes(b"not read")
    with pytest.raises(NotImplementedError, match="gpt2"):
        load_model(tmp_path / "gpt2", device="cpu")


def test_from_hf_shares_weights_instead_of_copying():
    hf = tiny_model("llama")
    model = from_hf(hf)
    assert model.layers[1].attn.o_proj is hf.model.layers[1].self_attn.o_proj
    assert from_hf(hf, fuse=False).layers[1].ffn.up_proj is hf.model.layers[1].mlp.up_proj  # fusing copies
    assert model.layers[0].ffn_norm.weight is hf.model.layers[0].post_attention_layernorm.weight
    assert model.embed_tokens.weight is hf.model.embed_tokens.weight


@pytest.mark.parametrize("name", ["opt-tiny", "llama-tiny"])
def test_random_sparse_model(name):
    model, report = random_model(name, sparsity=0.8, device="cpu", dtype=torch.float32)
    linears = [m for m in model.layers.modules() if isinstance(m, SparseLinear)]
    assert len(linears) == 2 * 4 and compressed_projections(model) == 2 * (7 if model.args.gated_ffn else 6)
    assert all(abs(m.weight.sparsity - 0.8) < 0.02 for m in linears)
    assert abs(report.sparsity - 0.8) < 0.01 and report.formats == {"pairmap": compressed_projections(model)}
    assert report.weight_bytes < 0.6 * report.dense_bytes and report.seconds > 0
    assert isinstance(model.lm_head, nn.Linear)
    if model.args.tie_embeddings:
        assert model.lm_head.weight is model.embed_tokens.weight
    out = Generator(model, 2, 16).generate([[3, 4, 5], [6]], 5)
    assert out.tokens.shape == (2, 5)
    # The dense twin computes with exactly the stored values.
    assert torch.equal(Generator(with_dense_linears(model), 2, 16).generate([[3, 4, 5], [6]], 5).tokens, out.tokens)


def test_random_dense_model_and_layer_override():
    assert preset("opt-30b", n_layers=1).replace(n_layers=48) == PRESETS["opt-30b"]
    model, report = random_model("llama-tiny", sparsity=0.0, device="cpu", n_layers=3)
    assert model.args.n_layers == 3 and len(model.layers) == 3 and model.dtype == torch.float16
    assert not any(isinstance(m, SparseLinear) for m in model.modules())
    assert report.weight_bytes == report.dense_bytes and report.formats == {}
    opt, report = random_model("opt-tiny", device="cpu")  # lm_head tied to the embeddings: counted once
    assert opt.lm_head.weight is opt.embed_tokens.weight and report.weight_bytes == report.dense_bytes
    with pytest.raises(ValueError, match="sparsity"):
        random_model("opt-tiny", sparsity=1.0, device="cpu")
    with pytest.raises(ValueError, match="preset"):
        random_model("opt-7", device="cpu")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_transformers_configs(name):
    assert ModelArgs.from_hf_config(to_hf_config(PRESETS[name])) == PRESETS[name]


def test_with_dense_linears_matches_on_a_pruned_transformers_model():
    sparse = from_hf(tiny_model("qwen2"))
    dense = with_dense_linears(sparse)
    assert not any(isinstance(m, SparseLinear) for m in dense.modules())
    assert dense.embed_tokens.weight is sparse.embed_tokens.weight
    assert torch.equal(engine_tokens(dense), engine_tokens(sparse))
    assert dense.weight_nbytes() > sparse.weight_nbytes()
