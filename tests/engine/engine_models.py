"""Tiny transformers models with random, magnitude-pruned weights, and Hugging Face greedy as the reference."""

from __future__ import annotations

import warnings

import torch

PAD = 1
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18], [20, 21, 22]]  # lengths differ: left padding


def tiny_config(kind: str, **overrides):
    """OPT (pre- and post-LN), Llama (GQA, Llama 3.1 RoPE), Qwen2 (q/k/v bias), Mistral (sliding window).
    No eos token: reference runs must not stop early."""
    from transformers import LlamaConfig, MistralConfig, OPTConfig, Qwen2Config
    common = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256, eos_token_id=None, bos_token_id=None, pad_token_id=PAD)
    llama_like = dict(intermediate_size=128, num_key_value_heads=2)
    configs = {
        "opt": lambda: OPTConfig(ffn_dim=128, word_embed_proj_dim=64, **common),
        "opt-post-ln": lambda: OPTConfig(ffn_dim=128, word_embed_proj_dim=32, do_layer_norm_before=False, **common),
        "llama": lambda: LlamaConfig(**llama_like, **common, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}),
        "qwen2": lambda: Qwen2Config(**{**llama_like, "num_key_value_heads": 1}, **common),
        "mistral": lambda: MistralConfig(**llama_like, **common, sliding_window=4),
    }
    config = configs[kind]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_model(kind: str, sparsity: float = 0.5, seed: int = 0, **overrides):
    """A transformers model in fp32 with weights large enough that greedy text does not collapse
    into one repeated token, pruned by magnitude (every linear but lm_head becomes a SparseLinear)."""
    from transformers import AutoModelForCausalLM

    from flashllm.sparsify import sparsify_
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, **overrides)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5 * (1 if "embed" in name else 3))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    if sparsity:
        sparsify_(model, sparsity, method="magnitude", progress=False)
    return model


def compressed_projections(model) -> int:
    """How many of the blocks' projections are SparseLinears, a fused linear counting once per part."""
    from flashllm.engine.fuse import GROUPS
    from flashllm.nn import SparseLinear
    parts = {fused: len(names) for _, fused, names in GROUPS}
    return sum(parts.get(name.rsplit(".", 1)[-1], 1) for name, m in model.layers.named_modules()
               if isinstance(m, SparseLinear))


def left_padded(prompts=PROMPTS, pad=PAD):
    t = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def hf_generate(model, prompts=PROMPTS, max_new_tokens=16, **kwargs) -> torch.Tensor:
    """transformers' greedy continuation: [B, max_new_tokens] (fewer if every sequence stopped)."""
    ids, mask = left_padded(prompts)
    device = next(model.parameters()).device
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=PAD, **kwargs)
    return out[:, ids.shape[1]:].cpu()


def last_logits(model, ids: list[int]) -> torch.Tensor:
    """fp32 logits of our engine model after `ids` (one eager prefill; on a tensor-parallel model every
    rank must call it together)."""
    from flashllm.engine import Generator
    gen = Generator(model, 1, len(ids) + 1, cuda_graph=False)
    dev = model.device
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=dev), torch.arange(len(ids), device=dev),
                       torch.zeros(1, dtype=torch.int64, device=dev), gen.max_seq)
    gen.close()
    return logits[0].float()
