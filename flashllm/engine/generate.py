"""Prefill and decode with a static KV cache; on CUDA the decode step replays a CUDA graph.

    gen = Generator(model, max_batch_size=8, max_seq_len=192)
    out = gen.generate([[2, 100, 7], [2, 5]], max_new_tokens=128, temperature=0.7, top_p=0.9, seed=0)
    out.tokens         # [B, n] new tokens; after a stop token, pad_token_id
    out.sequences()    # per sequence, the new tokens up to and including the first stop token

Prompts are left-padded into one batch (see `kv_cache.py`). Prefill runs eagerly (its shape changes
with the prompt). A decode step reads its inputs from, and writes its results to, static buffers on
the device (current token, slot, finished flags), so the host only launches: no step waits for the
GPU, except a check every `stop_check_every` steps whether every sequence has stopped (only when
there are stop tokens). Each step attends to the first `attn_len` cache slots, rounded up to a
multiple of `kv_bucket`, so early steps do not read the whole cache; one CUDA graph is captured per
(batch size, attn_len, sampling settings), on first use, all in one memory pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .model import Transformer
from .sampling import Sampling, sample


@dataclass
class GenerationOutput:
    tokens: torch.Tensor          # [B, n] int64 on the CPU: new tokens only, pad after a stop token
    prompt_lengths: list[int]
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int             # decode steps run (n - 1: prefill yields the first token)
    stop_tokens: tuple = ()

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens.numel() / self.seconds if self.seconds else float("nan")

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.decode_seconds / self.decode_steps if self.decode_steps else float("nan")

    def sequences(self) -> list[list[int]]:
        """New tokens of each sequence, up to and including its first stop token."""
        out = []
        for row in self.tokens.tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in self.stop_tokens), len(row))
            out.append(row[:end])
        return out


@dataclass
class _DecodeState:
    """Static device buffers of one batch size; CUDA graphs read and write exactly these."""
    tok: torch.Tensor        # [B] int64: the token to feed next (the last one produced)
    slot: torch.Tensor       # [1] int64: the cache slot that token goes to
    starts: torch.Tensor     # [B] int64: first real slot of each sequence
    done: torch.Tensor       # [B] bool: produced a stop token already
    stops: dict = field(default_factory=dict)  # stop-token tuple -> int64 tensor (kept alive for graphs)
    next_slot: int | None = None  # host copy of `slot` (the host never reads the device's)


@dataclass(frozen=True)
class _StepKey:
    batch: int
    attn_len: int
    sampling: Sampling
    stop: tuple
    pad: int


class Generator:
    """Generation with one `Transformer`: owns its KV cache, decode buffers and CUDA graphs."""

    def __init__(self, model: Transformer, max_batch_size: int, max_seq_len: int, cuda_graph: bool | None = None,
                 kv_bucket: int = 64, stop_check_every: int = 8):
        if max_batch_size < 1 or max_seq_len < 2:
            raise ValueError(f"need max_batch_size >= 1 and max_seq_len >= 2, got {max_batch_size}, {max_seq_len}")
        self.model = model.eval()
        self.device = model.device
        on_cuda = self.device.type == "cuda"
        self.cuda_graph = on_cuda if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and not on_cuda:
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, it is on {self.device}")
        self.kv_bucket = max(8, -(-kv_bucket // 8) * 8)
        self.stop_check_every = max(1, stop_check_every)
        self.max_batch = max_batch_size
        self.max_seq = -(-max_seq_len // 8) * 8  # aligned rows help the fused attention kernels
        if model.args.family == "opt":  # but never round past OPT's position table
            self.max_seq = min(self.max_seq, max(max_seq_len, model.args.max_positions))
        model.setup_caches(max_batch_size, self.max_seq)
        # Graphs hold raw pointers into these caches: keep them alive, and notice if another
        # Generator on the same model replaces them.
        self._caches = [block.attn.kv_cache for block in model.layers]
        self.states: dict[int, _DecodeState] = {}
        self.graphs: dict[_StepKey, torch.cuda.CUDAGraph] = {}
        self._pool = None

    def close(self) -> None:
        """Drop the graphs, buffers and KV cache (their memory returns to PyTorch's allocator)."""
        self.graphs.clear()
        self.states.clear()
        self._pool = None
        if self._owns_caches():
            self.model.free_caches()
        self._caches = []

    def _owns_caches(self) -> bool:
        return bool(self._caches) and all(b.attn.kv_cache is c for b, c in zip(self.model.layers, self._caches))

    def _check_caches(self) -> None:
        if not self._owns_caches():
            raise RuntimeError("this Generator's KV cache is gone (closed, or replaced by another Generator on "
                               "the same model): create a new Generator")

    # ------------------------------------------------------------------------------------- public

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, stop_tokens=(), pad_token_id: int = 0, seed: int | None = None,
                 attention_mask: torch.Tensor | None = None) -> GenerationOutput:
        """Continue each prompt by up to max_new_tokens tokens.

        prompts: a list of token-id lists (or 1-D tensors), or a [B, T] tensor with an optional
            attention_mask (1 = real token; padding on either side is allowed).
        temperature 0 is greedy; top_k, top_p as in transformers. seed: reseeds torch's global
            generators first, as transformers.set_seed does.
        stop_tokens: a sequence that produces one keeps producing pad_token_id; generation ends
            early once every sequence has stopped (checked every `stop_check_every` steps).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        rows = _prompt_rows(prompts, attention_mask)
        tokens, starts = self._left_pad(rows, pad_token_id, max_new_tokens)
        sampling = Sampling(temperature, top_k, top_p)
        stop = tuple(sorted({int(t) for t in ([stop_tokens] if isinstance(stop_tokens, int) else stop_tokens)}))
        if seed is not None:
            torch.manual_seed(seed)
        timer = _Timer(self.device)
        first = self.prefill(tokens, starts, sampling, stop, pad_token_id)
        timer.mark()
        out = torch.empty((len(rows), max_new_tokens), dtype=torch.int64, device=self.device)
        out[:, 0] = first
        n = 1
        while n < max_new_tokens:
            out[:, n] = self.decode_step(len(rows), sampling, stop, pad_token_id)
            n += 1
            if stop and n % self.stop_check_every == 0 and bool(self.states[len(rows)].done.all()):
                break
        timer.mark()
        prefill_s, decode_s = timer.intervals()
        return GenerationOutput(out[:, :n].cpu(), [len(r) for r in rows], prefill_s, decode_s, n - 1, stop)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, starts: torch.Tensor, sampling: Sampling = Sampling(),
                stop: tuple = (), pad: int = 0) -> torch.Tensor:
        """Run left-padded prompts [B, T] (slots 0..T-1) and choose each sequence's first new token.
        Sets up the decode buffers; returns the static token buffer [B] (copy it to keep it)."""
        self._check_caches()
        b, t = tokens.shape
        if b > self.max_batch:
            raise ValueError(f"batch {b} exceeds max_batch_size {self.max_batch}")
        if t >= self.max_seq:
            raise ValueError(f"prompt of {t} tokens leaves no cache slot to decode into (max_seq {self.max_seq})")
        st = self._state(b)
        st.starts.copy_(starts)
        st.done.zero_()
        slots = torch.arange(t, device=self.device)
        logits = self.model(tokens, slots, st.starts, self._attn_len(t))
        self._emit(st, self._sample(logits, sampling), stop, pad)
        st.slot.fill_(t)
        st.next_slot = t
        return st.tok

    @torch.inference_mode()
    def decode_step(self, batch: int, sampling: Sampling = Sampling(), stop: tuple = (), pad: int = 0) -> torch.Tensor:
        """Feed each sequence's last token, choose the next; returns the static token buffer [B]."""
        st = self.states.get(batch)
        if st is None or st.next_slot is None:
            raise RuntimeError(f"decode_step before a prefill of batch {batch}")
        self._check_caches()
        if st.next_slot >= self.max_seq:
            raise ValueError(f"the KV cache is full ({self.max_seq} slots)")
        key = _StepKey(batch, self._attn_len(st.next_slot + 1), sampling, stop, pad)
        if not self.cuda_graph:
            self._decode(st, key)
        elif key in self.graphs:
            self.graphs[key].replay()
        else:
            self._capture(st, key)
        st.next_slot += 1
        return st.tok

    # ----------------------------------------------------------------------------------- internals

    def _decode(self, st: _DecodeState, key: _StepKey) -> None:
        """One decode step, entirely on the device: the body of the CUDA graph."""
        logits = self.model(st.tok[:, None], st.slot, st.starts, key.attn_len)
        self._emit(st, self._sample(logits, key.sampling), key.stop, key.pad)
        st.slot.add_(1)

    def _sample(self, logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        nxt = sample(logits.float(), sampling)
        tp = self.model.tp
        if tp is not None and not sampling.greedy:  # tensor-parallel ranks draw apart: the first rank's draw wins
            tp.broadcast(nxt)
        return nxt

    def _emit(self, st: _DecodeState, nxt: torch.Tensor, stop: tuple, pad: int) -> None:
        if stop:
            stop_ids = st.stops.get(stop)
            if stop_ids is None:
                stop_ids = st.stops[stop] = torch.tensor(stop, dtype=torch.int64, device=self.device)
            nxt = nxt.masked_fill(st.done, pad)
            st.done |= (nxt[:, None] == stop_ids[None, :]).any(-1)
        st.tok.copy_(nxt)

    def _capture(self, st: _DecodeState, key: _StepKey) -> None:
        """Run this step eagerly on a side stream (the warm-up: kernels compiled, cuBLAS and allocator
        ready), then record it into a graph. Recording does not execute, so the warm-up was the step."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._decode(st, key)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._decode(st, key)
        self.graphs[key] = graph

    def _state(self, batch: int) -> _DecodeState:
        if batch not in self.states:
            z = dict(device=self.device, dtype=torch.int64)
            self.states[batch] = _DecodeState(torch.zeros(batch, **z), torch.zeros(1, **z), torch.zeros(batch, **z),
                                              torch.zeros(batch, dtype=torch.bool, device=self.device))
        return self.states[batch]

    def _attn_len(self, needed: int) -> int:
        return min(self.max_seq, -(-needed // self.kv_bucket) * self.kv_bucket)

    def _left_pad(self, rows: list[list[int]], pad: int, max_new: int):
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        t = max(len(r) for r in rows)
        if t + max_new - 1 > self.max_seq:
            raise ValueError(f"prompt of {t} tokens + {max_new} new tokens needs {t + max_new - 1} cache slots; "
                             f"this Generator has {self.max_seq} (max_seq_len)")
        tokens = torch.tensor([[pad] * (t - len(r)) + r for r in rows], dtype=torch.int64)
        starts = torch.tensor([t - len(r) for r in rows], dtype=torch.int64)
        return tokens.to(self.device), starts.to(self.device)


def _prompt_rows(prompts, attention_mask) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        if attention_mask is None:
            return prompts.tolist()
        return [row[mask.bool()].tolist() for row, mask in zip(prompts.cpu(), attention_mask.cpu())]
    if attention_mask is not None:
        raise ValueError("attention_mask only goes with a [B, T] tensor of prompts")
    return [p.tolist() if isinstance(p, torch.Tensor) else [int(t) for t in p] for p in prompts]


class _Timer:
    """Seconds between marks; on CUDA through events, so marking never waits for the GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks = []
        self.mark()

    def mark(self) -> None:
        if not self.cuda:
            self.marks.append(time.perf_counter())
            return
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        self.marks.append(event)

    def intervals(self) -> list[float]:
        if not self.cuda:
            return [b - a for a, b in zip(self.marks, self.marks[1:])]
        self.marks[-1].synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]


def generate(model: Transformer, prompts, max_new_tokens: int, cuda_graph: bool | None = None,
             **kwargs) -> GenerationOutput:
    """One-off generation: a Generator sized for these prompts (see Generator.generate for kwargs)."""
    rows = _prompt_rows(prompts, kwargs.get("attention_mask"))
    gen = Generator(model, len(rows), max(len(r) for r in rows) + max_new_tokens, cuda_graph=cuda_graph)
    try:
        return gen.generate(prompts, max_new_tokens, **kwargs)
    finally:
        gen.close()
