"""Model shapes by name, for random-weight builds and benchmarks, and their transformers configs."""

from __future__ import annotations

from .args import ModelArgs


def opt(dim: int, layers: int, heads: int, ffn: int, vocab: int = 50272, positions: int = 2048) -> ModelArgs:
    return ModelArgs(family="opt", vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=heads,
                     head_dim=dim // heads, ffn_dim=ffn, max_positions=positions, activation="relu",
                     qkv_bias=True, o_bias=True, ffn_bias=True, tie_embeddings=True)


def llama(dim: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int = 128256,
          positions: int = 131072, theta: float = 500000.0, llama3_scaling: bool = True) -> ModelArgs:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192} if llama3_scaling else None
    return ModelArgs(family="llama", vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                     head_dim=dim // heads, ffn_dim=ffn, max_positions=positions, norm_eps=1e-5, activation="silu",
                     gated_ffn=True, tie_embeddings=False, rope_theta=theta, rope_scaling=scaling)


# Shapes from the published configs (facebook/opt-*, meta-llama/Llama-3.*).
PRESETS = {
    "opt-tiny": opt(256, 2, 4, 1024, vocab=1024, positions=512),
    "llama-tiny": llama(256, 2, 4, 2, 512, vocab=1024, positions=512),
    "opt-1.3b": opt(2048, 24, 32, 8192),
    "opt-6.7b": opt(4096, 32, 32, 16384),
    "opt-13b": opt(5120, 40, 40, 20480),
    "opt-30b": opt(7168, 48, 56, 28672),
    "opt-66b": opt(9216, 64, 72, 36864),
    "opt-175b": opt(12288, 96, 96, 49152),
    "llama-3-8b": llama(4096, 32, 32, 8, 14336),
    "llama-3-70b": llama(8192, 80, 64, 8, 28672),
}


def preset(name: str, n_layers: int | None = None) -> ModelArgs:
    """A preset's args, optionally with fewer (or more) layers for quick runs."""
    try:
        args = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}") from None
    return args.replace(n_layers=n_layers) if n_layers else args


def to_hf_config(args: ModelArgs):
    """A transformers OPTConfig / LlamaConfig describing the same network (for HF baselines)."""
    if args.family == "opt":
        from transformers import OPTConfig
        return OPTConfig(vocab_size=args.vocab_size, hidden_size=args.dim, num_hidden_layers=args.n_layers,
                         ffn_dim=args.ffn_dim, num_attention_heads=args.n_heads,
                         max_position_embeddings=args.max_positions, do_layer_norm_before=args.pre_norm,
                         word_embed_proj_dim=args.word_dim, enable_bias=args.qkv_bias,
                         activation_function=args.activation, layer_norm_elementwise_affine=args.norm_affine,
                         tie_word_embeddings=args.tie_embeddings, _remove_final_layer_norm=args.pre_norm
                         and not args.final_norm, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    from transformers import LlamaConfig
    if set(args.layer_windows) != {None}:
        raise NotImplementedError("no transformers config for sliding-window presets")
    return LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.ffn_dim,
                       num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                       num_key_value_heads=args.n_kv_heads, head_dim=args.head_dim,
                       max_position_embeddings=args.max_positions, rms_norm_eps=args.norm_eps,
                       hidden_act=args.activation, attention_bias=args.qkv_bias, mlp_bias=args.ffn_bias,
                       tie_word_embeddings=args.tie_embeddings, rope_theta=args.rope_theta,
                       rope_scaling=dict(args.rope_scaling) if args.rope_scaling else None,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
