"""Next-token choice from logits, without host syncs (so it can live inside a CUDA graph)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy (argmax); top_k / top_p apply in that order, as transformers does."""
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """logits [B, V] -> token ids [B] (int64)."""
    if s.greedy:
        return logits.argmax(-1)
    logits = logits.float() / s.temperature
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p is not None and s.top_p < 1:
        logits = _top_p(logits, s.top_p)
    probs = torch.softmax(logits, dim=-1)
    # argmax(p / E) with E ~ Exp(1) draws from p exactly (the exponential race) and, unlike
    # torch.multinomial, never waits for the host. The clamp keeps 0 / 0 (a masked token) at 0.
    noise = torch.empty_like(probs).exponential_(1).clamp_min_(1e-20)
    return (probs / noise).argmax(-1)


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose mass reaches top_p: drop a token once the tokens ranked
    above it already hold top_p (the best token always stays)."""
    ranked, order = logits.sort(dim=-1, descending=True)
    probs = ranked.softmax(-1)
    before = probs.cumsum(-1) - probs
    ranked = ranked.masked_fill(before >= top_p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, ranked)
