"""A lean decoder-only transformer for the OPT and Llama families.

Every linear layer of a block (q, k, v, o, FFN gate/up/down) is whatever module sits in its slot:
`nn.Linear` runs dense (cuBLAS), `flashllm.nn.SparseLinear` runs the compressed weight through
`flashllm.spmm`. There is one code path; the module type decides. Module names follow Hugging
Face's Llama (q_proj, ..., gate_proj, up_proj, down_proj) so the mapping in `load.py` stays a table.
Built models then fuse q/k/v into `qkv_proj` and gate/up into `gate_up_proj` where they can (`fuse.py`);
the forward runs either form.

`forward(tokens, slots, starts, attn_len)` runs T new tokens per sequence: it writes their keys and
values into the static cache at `slots` and attends to cache slots [0, attn_len). See `kv_cache.py`
for the left-padded layout that `starts` describes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.attention import decode_attention
from ..kernels.norm import row_norm
from ..nn import SparseLinear
from .args import ModelArgs
from .kv_cache import KVCache
from .rope import apply_rope, rope_tables

OPT_POSITION_OFFSET = 2  # OPT's learned position table starts at row 2 (a fairseq legacy)
ACTIVATIONS = {"relu": F.relu, "silu": F.silu, "swish": F.silu, "gelu": F.gelu,
               "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = row_norm(x, self.weight, None, self.eps, rms=True)  # one kernel on the GPU (same rounding)
        if y is not None:
            return y
        # In fp32, cast back before the scale: the order transformers uses, so fp16 results match.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose GPU forward is one CTA per row: at decode torch's kernel takes ~13 us for
    8 rows of 7168, twice a layer (see kernels/csrc/norm.cu)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = row_norm(x, self.weight, self.bias, self.eps, rms=False) if len(self.normalized_shape) == 1 else None
        return y if y is not None else super().forward(x)


def make_norm(args: ModelArgs) -> nn.Module:
    if args.family == "opt":
        return LayerNorm(args.dim, eps=args.norm_eps, elementwise_affine=args.norm_affine)
    return RMSNorm(args.dim, args.norm_eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, window: int | None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.window = window
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=args.qkv_bias)
        self.qkv_proj = None  # q, k and v in one linear once `fuse.py` fused them
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=args.o_bias)
        # OPT scales q right after its projection (and not in the softmax); Llama in the softmax.
        self.q_scale = args.head_dim ** -0.5 if args.family == "opt" else None
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor, rope) -> torch.Tensor:
        """x [B, T, dim]; mask [B, 1, T, L] bool (True = attend); rope (cos, sin) [B, 1, T, D] or None."""
        b, t, _ = x.shape
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.fused_sizes, -1)  # views; .view below splits only their last dim
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_scale is not None:
            q = q * self.q_scale
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        keys, values = self.kv_cache.update(slots, k, v)
        attn_len = mask.shape[-1]
        y = grouped_attention(q, keys[:, :, :attn_len], values[:, :, :attn_len], mask,
                              1.0 if self.q_scale is not None else self.head_dim ** -0.5)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    @property
    def fused_sizes(self) -> list[int]:
        """Output widths of q, k and v (this rank's heads under tensor parallelism)."""
        kv = self.n_kv_heads * self.head_dim
        return [self.n_heads * self.head_dim, kv, kv]


def grouped_attention(q, k, v, mask, scale) -> torch.Tensor:
    """SDPA with grouped-query attention, without copying K/V per query head.

    q [B, H, T, D], k/v [B, H_kv, L, D], mask [B, 1, T, L]. The H / H_kv query heads that share a KV
    head (heads kv*rep .. kv*rep+rep-1, as transformers' repeat_kv pairs them) are folded into the
    query length, so SDPA reads each cached key once.
    """
    if q.shape[2] == 1:  # decode: one CTA per (sequence, head) beats SDPA's kernels 2-3x (kernels/attention.py)
        y = decode_attention(q, k, v, mask, scale)
        if y is not None:
            return y
    b, h, t, d = q.shape
    rep = h // k.shape[1]
    if rep > 1:
        q = q.reshape(b, k.shape[1], rep * t, d)
        if t > 1:
            mask = mask.repeat(1, 1, rep, 1)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return y.reshape(b, h, t, d)  # not view: CUDA kernels return [B, H, T, D] laid out as [B, T, H, D]


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.act = ACTIVATIONS[args.activation]
        self.gate_proj = nn.Linear(args.dim, args.ffn_dim, bias=args.ffn_bias) if args.gated_ffn else None
        self.up_proj = nn.Linear(args.dim, args.ffn_dim, bias=args.ffn_bias)
        self.gate_up_proj = None  # gate and up in one linear once `fuse.py` fused them
        self.down_proj = nn.Linear(args.ffn_dim, args.dim, bias=args.ffn_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).split(self.fused_sizes, -1)
        elif self.gate_proj is not None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            return self.down_proj(self.act(self.up_proj(x)))
        return self.down_proj(self.act(gate) * up)

    @property
    def fused_sizes(self) -> list[int]:
        """Output widths of gate and up (this rank's rows under tensor parallelism)."""
        return [self.down_proj.in_features] * 2


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.pre_norm = args.pre_norm
        self.attn_norm = make_norm(args)
        self.attn = Attention(args, args.layer_windows[layer])
        self.ffn_norm = make_norm(args)
        self.ffn = FeedForward(args)

    def forward(self, x, slots, mask, rope):
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), slots, mask, rope)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attn(x, slots, mask, rope))
        return self.ffn_norm(x + self.ffn(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.word_dim)
        opt = args.family == "opt"
        self.embed_positions = nn.Embedding(args.max_positions + OPT_POSITION_OFFSET, args.dim) if opt else None
        self.project_in = nn.Linear(args.word_dim, args.dim, bias=False) if args.embed_dim else None
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = make_norm(args) if args.final_norm else None
        self.project_out = nn.Linear(args.dim, args.word_dim, bias=False) if args.embed_dim else None
        self.lm_head = nn.Linear(args.word_dim, args.vocab_size, bias=False)
        self.rope_cos = self.rope_sin = None
        self.max_batch = self.max_seq = 0
        self.tp = None  # a tp.TPInfo once tp.shard_model cut this model down to one rank's part

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def setup_caches(self, max_batch: int, max_seq: int) -> None:
        """Allocate the KV cache of every layer (and the RoPE tables) for max_batch sequences of max_seq slots."""
        if self.args.family == "opt" and max_seq > self.args.max_positions:
            raise ValueError(f"max_seq {max_seq} exceeds the model's {self.args.max_positions} positions")
        self.free_caches()
        for block in self.layers:
            block.attn.kv_cache = KVCache(max_batch, block.attn.n_kv_heads, max_seq, self.args.head_dim,
                                          self.dtype, self.device)
        if self.args.family == "llama":
            self.rope_cos, self.rope_sin = rope_tables(max_seq, self.args.head_dim, self.args.rope_theta,
                                                       self.args.rope_scaling, self.device)
        self.max_batch, self.max_seq = max_batch, max_seq

    def free_caches(self) -> None:
        for block in self.layers:
            block.attn.kv_cache = None
        self.rope_cos = self.rope_sin = None
        self.max_batch = self.max_seq = 0

    @property
    def kv_cache_nbytes(self) -> int:
        return sum(b.attn.kv_cache.nbytes for b in self.layers if b.attn.kv_cache is not None)

    def forward(self, tokens: torch.Tensor, slots: torch.Tensor, starts: torch.Tensor, attn_len: int) -> torch.Tensor:
        """tokens [B, T] -> logits [B, vocab] of the last token (model dtype).

        slots [T] int64: cache slots of the T tokens (the same for every sequence); starts [B] int64:
        each sequence's first real slot; attn_len: attend to slots [0, attn_len), which must cover slots.
        """
        positions = (slots[None, :] - starts[:, None]).clamp_min(0)  # [B, T]; left padding sits at 0
        masks = self._masks(slots, starts, attn_len)
        x = self.embed_tokens(tokens)
        if self.project_in is not None:
            x = self.project_in(x)
        rope = None
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions + OPT_POSITION_OFFSET)
        else:
            rope = (self.rope_cos[positions].to(x.dtype)[:, None], self.rope_sin[positions].to(x.dtype)[:, None])
        for block in self.layers:
            x = block(x, slots, masks[block.attn.window], rope)
        x = x[:, -1]
        if self.norm is not None:
            x = self.norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return self.lm_head(x)

    def _masks(self, slots, starts, attn_len) -> dict:
        """{window: [B, 1, T, L] bool}: causal, from the sequence's first real slot on.

        A padding slot's query also sees itself, so no row is empty: an empty row makes SDPA return
        NaN, and a NaN value in the cache would poison real rows (0 * NaN) even where masked.
        """
        keys = torch.arange(attn_len, device=slots.device)
        query = slots[:, None]                                   # [T, 1]
        causal = (keys[None, :] <= query)[None]                  # [1, T, L]
        real = keys[None, None, :] >= starts[:, None, None]      # [B, 1, L]
        itself = (keys[None, :] == query)[None]
        masks = {None: ((causal & real) | itself)[:, None]}
        for window in set(self.args.layer_windows) - {None}:
            recent = (keys[None, :] > query - window)[None]
            masks[window] = ((causal & real & recent) | itself)[:, None]
        return masks

    def weight_nbytes(self, per_step: bool = False) -> int:
        """Bytes of every weight (SparseWeights counted compressed, shared tensors once). per_step:
        only what one decode step reads, i.e. without the embedding tables (unless lm_head reads one)."""
        seen, total = set(), 0
        skip = set()
        if per_step:
            skip = {id(self.embed_tokens.weight)} - {id(getattr(self.lm_head, "weight", None))}
            if self.embed_positions is not None:
                skip.add(id(self.embed_positions.weight))
        for module in self.modules():
            if isinstance(module, SparseLinear) and id(module.weight) not in seen:
                seen.add(id(module.weight))
                total += module.weight.nbytes
            for p in module.parameters(recurse=False):
                if id(p) not in seen and id(p) not in skip:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
        return total
