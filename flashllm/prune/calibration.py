"""Calibration: the input statistics each linear layer sees, gathered one transformer block at a time.

Sequential scheme (as in the SparseGPT and Wanda papers): capture the inputs of block 0 for every
calibration sample, then for each block i: record its layers' input statistics with hooks, let the
caller prune them, and run the *pruned* block i to produce block i+1's inputs. Only one block's
activations are held at a time, and each block is calibrated on what the pruned model before it
actually produces. Inside a block the layers go in groups, in the order the block calls them
(q/k/v, then o, then gate/up, then down for a Llama block): each group is recorded on a pass of the
block in which the groups before it are already pruned (GPTQ's "true sequential" order).
"""

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn


class InputStats:
    """Running statistics of the inputs [..., in_features] one layer receives."""

    def __init__(self, hessian: bool):
        self.want_hessian = hessian
        self.tokens = 0
        self.sq_sum = None  # [in]: sum of x_j^2 over tokens (Wanda)
        self.xtx = None  # [in, in]: sum of x x^T over tokens (SparseGPT)

    def add(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """x [..., in]; mask [...] (bool, x's leading shape) keeps only the tokens where it is True.

        Padding tokens are left out this way: they would pull the statistics towards inputs the
        model never sees in use. A mask of another shape (a layer that regroups its tokens) is ignored.
        """
        x = x.detach()
        if mask is not None and mask.shape == x.shape[:-1]:
            x = x[mask.to(x.device)]
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        if self.sq_sum is None:
            self.sq_sum = torch.zeros(x.shape[1], device=x.device)
            if self.want_hessian:
                self.xtx = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        self.tokens += x.shape[0]
        self.sq_sum += x.square().sum(0)
        if self.want_hessian:
            self.xtx.addmm_(x.T, x)

    @property
    def input_norm(self) -> torch.Tensor:
        """||X_j||_2 per input feature j."""
        return self.sq_sum.sqrt()

    @property
    def hessian(self) -> torch.Tensor:
        """X^T X / tokens: the mean keeps the scale independent of how much data was used."""
        return self.xtx / max(self.tokens, 1)


@contextlib.contextmanager
def record_inputs(layers: Mapping[str, nn.Module], hessian: bool, token_mask: Callable[[], torch.Tensor | None] = None):
    """Within the block, every call of layers[name] adds its input to stats[name] (the yielded dict).

    token_mask, if given, is called at each layer call for the mask of the tokens to count (see InputStats.add).
    """
    stats = {name: InputStats(hessian) for name in layers}
    mask = token_mask or (lambda: None)
    handles = [
        layer.register_forward_pre_hook(lambda _module, args, s=stats[name]: s.add(args[0], mask()))
        for name, layer in layers.items()
    ]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


def read_corpus(source) -> str:
    """The text of a file, or of every text file (.txt .md .rst .text) under a folder in path order,
    documents joined by a blank line."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"{source}: no text files ({', '.join(TEXT_SUFFIXES)}) in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"{source}: no such file or folder")
    texts = []
    for file in files:
        try:
            texts.append(file.read_text(encoding="utf-8").strip())
        except UnicodeDecodeError:
            raise ValueError(f"{file}: not UTF-8 text") from None
    text = "\n\n".join(t for t in texts if t)
    if not text:
        raise ValueError(f"{source}: no text")
    return text


def calibration_windows(source, tokenizer, samples: int = 128, tokens: int = 512, seed: int = 0,
                        batch_size: int = 8) -> list[torch.Tensor]:
    """Calibration samples as the papers draw them: the corpus, tokenized as one sequence, is cut
    into consecutive windows of `tokens` token ids, and `samples` of them are picked at random
    (without replacement, so no token is used twice) with `seed`.

    source: a text file or folder (see read_corpus), a string of text, or a list of documents.
    Returns token-id tensors [B, tokens] of at most batch_size windows each (the picked windows in
    corpus order). A corpus shorter than samples * tokens gives every window it has (a warning says
    how many); one shorter than `tokens` gives a single shorter window.
    """
    if samples < 1 or tokens < 2:
        raise ValueError(f"calibration needs samples >= 1 and tokens >= 2, got {samples} and {tokens}")
    if tokenizer is None:
        raise ValueError("calibration text needs a tokenizer= to turn it into token ids")
    if isinstance(source, (list, tuple)):
        text = "\n\n".join(source)
    elif isinstance(source, os.PathLike) or (isinstance(source, str) and _names_a_path(source)):
        text = read_corpus(source)
    else:
        text = source
    ids = torch.as_tensor(tokenizer(text, return_attention_mask=False)["input_ids"], dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise ValueError("calibration text has no tokens")
    n_windows = ids.numel() // tokens
    if n_windows == 0:
        return [ids.reshape(1, -1)]
    if n_windows < samples:
        warnings.warn(f"calibration: the text holds {n_windows} windows of {tokens} tokens, fewer than the "
                      f"{samples} samples asked for; using all {n_windows}")
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(n_windows, generator=g)[:samples].sort().values
    windows = ids[:n_windows * tokens].view(n_windows, tokens)[picked]
    return list(windows.split(max(1, batch_size)))


def _names_a_path(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    try:
        return Path(text).exists()
    except OSError:
        return False


def prepare_samples(calibration: Sequence, tokenizer=None, device=None) -> list[tuple[tuple, dict]]:
    """Turn calibration items into (args, kwargs) for model(*args, **kwargs).

    A token-id tensor [T] or [B, T] is passed positionally; a string is tokenized (needs tokenizer);
    a mapping (e.g. a tokenizer's output) is passed as keyword arguments.
    """
    samples = []
    for item in calibration:
        if isinstance(item, str):
            if tokenizer is None:
                raise ValueError("calibration contains strings: pass tokenizer= to turn them into token ids")
            item = dict(tokenizer(item, return_tensors="pt"))
        if isinstance(item, torch.Tensor):
            ids = item if item.dim() == 2 else item.reshape(1, -1)
            samples.append(((ids.to(device),), {}))
        elif isinstance(item, Mapping):
            samples.append(((), {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in item.items()}))
        else:
            raise TypeError(f"calibration items must be token-id tensors, strings or dicts, got {type(item).__name__}")
    if not samples:
        raise ValueError("calibration is empty")
    return samples


def find_blocks(model: nn.Module, layers: Mapping[str, nn.Module]) -> nn.ModuleList | None:
    """The ModuleList of same-type blocks holding the most of `layers` (a transformer's layer stack)."""
    best, best_count = None, 0
    wanted = {id(m) for m in layers.values()}
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        count = sum(id(m) in wanted for m in module.modules())
        if count > best_count:
            best, best_count = module, count
    return best


def calibrate_sequentially(
    model: nn.Module,
    samples: list[tuple[tuple, dict]],
    layers: Mapping[str, nn.Module],
    hessian: bool,
    on_layer: Callable[[str, InputStats], None],
    after_block: Callable[[], None] = lambda: None,
) -> None:
    """Call on_layer(name, stats) once per layer in `layers`, block by block (see module docstring).

    on_layer is expected to prune the layer in place; the block is then re-run with the pruned
    weights, and after_block() is called once the block will not run again (the moment to swap its
    layers for compressed ones). Layers outside the block stack, or every layer when the model has
    no stack of chained blocks, get their statistics from one final pass over the whole model.
    """
    remaining = dict(layers)
    masks = [_token_mask(kwargs) for _args, kwargs in samples]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _kv_cache_off(model):
            blocks = find_blocks(model, layers)
            if blocks is not None and _blocks_are_chained(model, blocks, samples[0]):
                _run_block_by_block(model, blocks, samples, masks, remaining, hessian, on_layer, after_block)
            if remaining:
                current = {"mask": None}
                with record_inputs(remaining, hessian, lambda: current["mask"]) as stats:
                    for (args, kwargs), mask in zip(samples, masks):
                        current["mask"] = mask
                        model(*args, **kwargs)
                for name in list(remaining):
                    on_layer(name, stats.pop(name))
                    del remaining[name]
                after_block()
    finally:
        model.train(was_training)


def _run_block_by_block(model, blocks, samples, masks, remaining, hessian, on_layer, after_block):
    block_of = {}
    for i, block in enumerate(blocks):
        inside = {id(m) for m in block.modules()}
        block_of.update({name: i for name, m in remaining.items() if id(m) in inside})
    if not block_of:
        return
    inputs = _capture_inputs(model, blocks[0], samples)
    last = max(block_of.values())
    for i in range(last + 1):
        block = blocks[i]
        here = {name: remaining[name] for name, b in block_of.items() if b == i}
        # Within the block too, each group of layers is calibrated on what the already pruned
        # groups before it produce (o_proj after q/k/v, down_proj after gate/up): one block pass per group.
        groups, calls = _layer_groups(block, here, inputs[0]) if here else ([], {})
        for group in groups:
            current = {"mask": None}
            with record_inputs(group, hessian, lambda: current["mask"]) as stats, _stop_after(group, calls):
                for (args, kwargs), mask in zip(inputs, masks):
                    current["mask"] = mask
                    try:
                        block(*args, **kwargs)
                    except _StopForward:
                        pass
            for name in group:
                on_layer(name, stats.pop(name))
                del remaining[name]
        if i < last:
            inputs = [_with_hidden(args, kwargs, _hidden_out(block(*args, **kwargs))) for args, kwargs in inputs]
        after_block()


def _layer_groups(block, layers, sample) -> tuple[list[dict], dict]:
    """`layers` of one block in the order the block first calls them, grouped where consecutive layers
    read the very same input tensor (q/k/v, gate/up): such layers are independent of each other.
    Layers the sample never reaches form a last group. Also returns how often each layer was called."""
    order, first_input, calls = [], {}, dict.fromkeys(layers, 0)

    def hook(name):
        def record(_module, args):
            calls[name] += 1
            if name not in first_input:
                first_input[name] = args[0] if args else None
                order.append(name)
        return record

    handles = [layers[name].register_forward_pre_hook(hook(name)) for name in layers]
    try:
        args, kwargs = sample
        block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    groups = []
    for name in order:
        if groups and first_input[name] is not None and first_input[name] is first_input[next(iter(groups[-1]))]:
            groups[-1][name] = layers[name]
        else:
            groups.append({name: layers[name]})
    unseen = {name: layer for name, layer in layers.items() if name not in first_input}
    return groups + ([unseen] if unseen else []), calls


@contextlib.contextmanager
def _stop_after(group, calls):
    """Within the block, raise _StopForward once every layer of `group` has run as often as it does in
    a whole pass: the rest of the block is not needed to record the group's inputs."""
    if any(calls.get(name, 0) == 0 for name in group):  # a layer never reached: let the block finish
        yield
        return
    seen = dict.fromkeys(group, 0)

    def hook(name):
        def after(_module, _args, _output):
            seen[name] += 1
            if all(seen[n] >= calls[n] for n in group):
                seen.update(dict.fromkeys(group, 0))
                raise _StopForward
        return after

    handles = [layer.register_forward_hook(hook(name)) for name, layer in group.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _token_mask(kwargs) -> torch.Tensor | None:
    """The sample's real tokens (attention_mask != 0), or None when it has no padding to leave out."""
    mask = kwargs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or bool(mask.all()):
        return None
    return mask.bool()


class _StopForward(Exception):
    pass


def _capture_inputs(model, block, samples):
    """(args, kwargs) of block's call for each sample; the model stops right there."""
    captured = []

    def grab(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for args, kwargs in samples:
            try:
                model(*args, **kwargs)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _blocks_are_chained(model, blocks, sample) -> bool:
    """True when, on one sample, each block runs once, in order, on exactly the previous block's output.

    Only then can block i+1's inputs be computed from block i alone (MoE expert lists, shared layers
    or blocks with work between them fail this and are calibrated with whole-model passes).
    """
    state = {"next": 0, "last_out": None, "ok": True}

    def before(index):
        def hook(_module, args, kwargs):
            hidden = _hidden_in(args, kwargs)
            if index != state["next"] or hidden is None:
                state["ok"] = False
            elif index > 0 and not (state["last_out"] is not None and torch.equal(hidden, state["last_out"])):
                state["ok"] = False
            state["next"] = index + 1
        return hook

    def after(_module, _args, output):
        state["last_out"] = _hidden_out(output)

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(block.register_forward_hook(after))
    try:
        args, kwargs = sample
        model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return state["ok"] and state["next"] == len(blocks)


def _hidden_in(args, kwargs):
    hidden = args[0] if args else kwargs.get("hidden_states")
    return hidden if isinstance(hidden, torch.Tensor) else None


def _hidden_out(output):
    # Hugging Face blocks return either the hidden states or a tuple starting with them.
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@contextlib.contextmanager
def _kv_cache_off(model):
    # A KV cache would only grow during calibration, and a cache object captured with block 0's
    # inputs must not be fed to the other blocks.
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if old:
        config.use_cache = False
    try:
        yield
    finally:
        if old:
            config.use_cache = old
