"""`ModelArgs`: the few numbers the engine's transformer needs, read from a Hugging Face config.

Two families cover the supported models:
  opt    OPT: learned positions (offset 2), LayerNorm before or after each sublayer, ReLU FFN, biases.
  llama  Llama 2/3, Mistral, Qwen2: RoPE, grouped-query attention, SwiGLU FFN, RMSNorm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FAMILIES = {"opt": "opt", "llama": "llama", "mistral": "llama", "qwen2": "llama"}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class ModelArgs:
    family: str                       # "opt" or "llama"
    vocab_size: int
    dim: int                          # hidden size
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    max_positions: int
    norm_eps: float = 1e-5
    activation: str = "relu"
    gated_ffn: bool = False           # SwiGLU: down(act(gate(x)) * up(x))
    qkv_bias: bool = False
    o_bias: bool = False
    ffn_bias: bool = False
    pre_norm: bool = True             # OPT-350m normalizes after each sublayer instead
    final_norm: bool = True
    norm_affine: bool = True          # OPT's layer_norm_elementwise_affine
    embed_dim: int | None = None      # OPT's word_embed_proj_dim when it differs from dim (project_in/out)
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3"|"linear", "factor": ..., ...}
    layer_windows: tuple = field(default_factory=tuple)  # per layer: sliding-window size or None

    def __post_init__(self):
        if self.family not in ("opt", "llama"):
            raise ValueError(f"family must be 'opt' or 'llama', got {self.family!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if not self.layer_windows:
            self.layer_windows = (None,) * self.n_layers
        self.layer_windows = tuple(self.layer_windows)
        if len(self.layer_windows) != self.n_layers:
            raise ValueError(f"layer_windows has {len(self.layer_windows)} entries for {self.n_layers} layers")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if self.family == "llama" and rope_type not in ROPE_TYPES:
            raise NotImplementedError(f"RoPE type {rope_type!r} is not supported (only {ROPE_TYPES})")

    @property
    def word_dim(self) -> int:
        """Width of the token embeddings and of the lm_head input."""
        return self.embed_dim or self.dim

    def replace(self, **changes) -> "ModelArgs":
        """A copy with some fields changed; a new n_layers keeps a window shared by every layer."""
        if "n_layers" in changes and "layer_windows" not in changes:
            if len(set(self.layer_windows)) > 1:
                raise ValueError("changing n_layers of a model whose layers have different windows: "
                                 "pass layer_windows too")
            changes["layer_windows"] = self.layer_windows[:1] * changes["n_layers"]
        return ModelArgs(**{**asdict(self), **changes})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_hf_config(cls, config) -> "ModelArgs":
        """From a transformers OPT, Llama, Mistral or Qwen2 config (4.x or 5.x attribute names)."""
        model_type = getattr(config, "model_type", None)
        if model_type not in FAMILIES:
            raise NotImplementedError(f"model_type {model_type!r} is not supported by the engine "
                                      f"(supported: {sorted(FAMILIES)})")
        if FAMILIES[model_type] == "opt":
            return _opt_args(config)
        return _llama_args(config, model_type)


def supports(config) -> bool:
    """Whether the engine can run a model with this transformers config."""
    try:
        ModelArgs.from_hf_config(config)
    except (NotImplementedError, ValueError):
        return False
    return True


def _opt_args(c) -> ModelArgs:
    pre = bool(c.do_layer_norm_before)
    return ModelArgs(
        family="opt", vocab_size=c.vocab_size, dim=c.hidden_size, n_layers=c.num_hidden_layers,
        n_heads=c.num_attention_heads, n_kv_heads=c.num_attention_heads,
        head_dim=c.hidden_size // c.num_attention_heads, ffn_dim=c.ffn_dim,
        max_positions=c.max_position_embeddings, norm_eps=1e-5, activation=c.activation_function,
        qkv_bias=c.enable_bias, o_bias=c.enable_bias, ffn_bias=c.enable_bias, pre_norm=pre,
        final_norm=pre and not getattr(c, "_remove_final_layer_norm", False),
        norm_affine=getattr(c, "layer_norm_elementwise_affine", True),
        embed_dim=c.word_embed_proj_dim if c.word_embed_proj_dim != c.hidden_size else None,
        tie_embeddings=getattr(c, "tie_word_embeddings", True))


def _llama_args(c, model_type: str) -> ModelArgs:
    heads = c.num_attention_heads
    attention_bias = getattr(c, "attention_bias", False)
    return ModelArgs(
        family="llama", vocab_size=c.vocab_size, dim=c.hidden_size, n_layers=c.num_hidden_layers,
        n_heads=heads, n_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, ffn_dim=c.intermediate_size,
        max_positions=c.max_position_embeddings, norm_eps=c.rms_norm_eps, activation=c.hidden_act,
        gated_ffn=True, qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=model_type == "llama" and attention_bias,
        ffn_bias=model_type == "llama" and getattr(c, "mlp_bias", False), pre_norm=True, final_norm=True,
        tie_embeddings=getattr(c, "tie_word_embeddings", False), **_rope_of(c),
        layer_windows=_windows_of(c, model_type))


def _rope_of(c) -> dict:
    """transformers 5 keeps RoPE settings in `rope_parameters`; 4.x in `rope_theta` + `rope_scaling`."""
    params = dict(getattr(c, "rope_parameters", None) or {})
    theta = params.pop("rope_theta", None) or getattr(c, "rope_theta", None) or 10000.0
    if not params or params.get("rope_type", params.get("type")) in (None, "default"):
        params = dict(getattr(c, "rope_scaling", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise NotImplementedError("partial_rotary_factor != 1 is not supported")
    scaling = None if rope_type == "default" else {**params, "rope_type": rope_type}
    if scaling is not None:
        scaling.pop("type", None)
        scaling.pop("rope_theta", None)
        scaling.setdefault("original_max_position_embeddings", c.max_position_embeddings)
    return {"rope_theta": float(theta), "rope_scaling": scaling}


def _windows_of(c, model_type: str) -> tuple:
    window = getattr(c, "sliding_window", None)
    types = getattr(c, "layer_types", None)
    if types:
        return tuple(window if t == "sliding_attention" else None for t in types)
    if model_type == "mistral" and window:
        return (window,) * c.num_hidden_layers
    return (None,) * c.num_hidden_layers
