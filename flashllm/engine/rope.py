"""Rotary position embeddings: tables of cos/sin per position, computed the way transformers does
(fp32 products position * inverse frequency, cos/sin in fp32, cast to the activations' dtype)."""

from __future__ import annotations

import math

import torch


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """[head_dim / 2] fp32; `scaling` is None (plain RoPE), {"rope_type": "linear", "factor"} or Llama 3.1's."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        return _llama3(inv_freq, scaling)
    raise NotImplementedError(f"RoPE type {rope_type!r}")


def _llama3(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth ramp in between."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    context = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < context / high) * ~(wavelen > context / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(max_seq: int, head_dim: int, theta: float, scaling: dict | None,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_seq, head_dim] fp32 (each frequency twice: the rotate-half layout)."""
    inv_freq = inverse_frequencies(head_dim, theta, scaling).to(device)
    freqs = torch.arange(max_seq, device=device).float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D]; cos, sin [B, 1, T, D] in x's dtype."""
    return x * cos + rotate_half(x) * sin
