"""Perplexity of a causal LM over a text corpus, in fixed-length windows.

The corpus is tokenized once, as one sequence, and cut into windows of `window` tokens that start
every `stride` tokens; no token is scored twice. With stride == window (the default, as in the
SparseGPT and Wanda papers' WikiText-2 numbers) the windows do not overlap and each window's first
token is context only, never predicted. With stride < window each window scores only the tokens the
previous one did not reach and uses the rest as context (the sliding-window evaluation of the
transformers docs), so every token but the corpus's first is scored. The last window may be shorter.

    perplexity = exp(sum of -log p(token | its window's earlier tokens) / number of scored tokens)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class Perplexity:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    tokens: int  # tokens scored
    windows: int
    window: int
    stride: int
    seconds: float

    def __float__(self) -> float:
        return self.perplexity

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"perplexity {self.perplexity:.4f} (nll {self.nll:.4f} nats/token) over {self.tokens} tokens, "
                f"{self.windows} windows of {self.window} (stride {self.stride}), {self.seconds:.1f} s")


def windows(n_tokens: int, window: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of every window over a sequence of n_tokens.

    Positions are absolute; a window covers [start, end) and scores the tokens in [first, end).
    """
    stride = window if stride is None else stride
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    spans, scored_to = [], 1  # token 0 has no context
    start = 0
    while scored_to < n_tokens:
        end = min(start + window, n_tokens)
        first = max(scored_to, start + 1)
        if first < end:
            spans.append((start, end, first))
            scored_to = end
        start += stride
    return spans


def tokenize(tokenizer, text) -> torch.Tensor:
    """text (a string, or a list of documents joined by blank lines) -> token ids [n] of the whole corpus."""
    if isinstance(text, (list, tuple)):
        text = "\n\n".join(text)
    ids = tokenizer(text, return_attention_mask=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer=None, text=None, *, ids: torch.Tensor | None = None, window: int = 512,
               stride: int | None = None, batch_size: int = 1, max_windows: int | None = None,
               device=None, progress: bool = True) -> Perplexity:
    """Perplexity of `model` on `text` (tokenized with `tokenizer`) or on token ids `ids` [n].

    model: anything called as model(input_ids) that returns logits [B, T, vocab] or an object with
        .logits (a transformers causal LM, dense or with flashllm's SparseLinear layers).
    window / stride: see the module docstring; stride defaults to window (no overlap).
    batch_size: windows of full length run this many at a time (a shorter last window runs alone).
    max_windows: score only the first this many windows (a quick estimate on a long corpus).
    device: where the ids go (default: the model's first parameter's device).
    """
    if ids is None:
        if tokenizer is None or text is None:
            raise ValueError("perplexity needs text with a tokenizer, or token ids (ids=)")
        ids = tokenize(tokenizer, text)
    ids = torch.as_tensor(ids).reshape(-1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spans = windows(ids.numel(), window, stride)
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        spans = spans[:max_windows]
    if not spans:
        raise ValueError(f"the text has {ids.numel()} token(s): perplexity needs at least 2")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))

    was_training = model.training
    model.eval()
    started = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    batches = _batches(spans, batch_size)
    bar = tqdm(total=len(spans), desc="perplexity", unit="window", disable=not progress)
    try:
        for batch in batches:
            inputs = torch.stack([ids[s:e] for s, e, _ in batch]).to(device)
            logits = _logits(model(inputs))
            for row, (s, e, first) in enumerate(batch):
                # logits at position p predict token p + 1; score tokens first..e-1 of this window.
                pred = logits[row, first - s - 1:e - s - 1].float()
                target = inputs[row, first - s:e - s]
                total_nll += float(torch.nn.functional.cross_entropy(pred, target, reduction="sum"))
                total_tokens += e - first
            bar.update(len(batch))
            bar.set_postfix_str(f"ppl {math.exp(total_nll / total_tokens):.3f}", refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    nll = total_nll / total_tokens
    return Perplexity(perplexity=math.exp(nll), nll=nll, tokens=total_tokens, windows=len(spans), window=window,
                      stride=window if stride is None else stride, seconds=time.perf_counter() - started)


def _batches(spans, batch_size):
    batch = []
    for span in spans:
        if batch and span[1] - span[0] != batch[0][1] - batch[0][0]:
            yield batch
            batch = []
        batch.append(span)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _logits(output) -> torch.Tensor:
    logits = getattr(output, "logits", output)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits
