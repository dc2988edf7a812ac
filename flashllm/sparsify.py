"""sparsify_: prune every matching linear layer of a model and swap in SparseLinear, in place."""

import fnmatch
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .nn import SparseLinear, dense_weight_of, format_nbytes, is_linear_like
from .prune import (calibrate_sequentially, calibration_windows, magnitude_prune, prepare_samples, sparsegpt_prune,
                    wanda_prune)
from .prune.magnitude import check_sparsity

METHODS = ("magnitude", "wanda", "sparsegpt", None)
_CALIBRATED = ("wanda", "sparsegpt")


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    sparsity: float  # fraction of zeros actually stored
    bytes_before: int  # the dense weight as it was (its own dtype)
    bytes_after: int  # the SparseWeight, every tensor included
    seconds: float  # pruning + compression of this layer (calibration passes not included)
    dtype_before: str
    dtype_after: str
    format: str


@dataclass
class SparsifyReport:
    method: str | None
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    seconds: float = 0.0  # wall time of the whole call, calibration included

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.layers)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.layers)

    def to_dict(self) -> dict:
        return {"method": self.method, "seconds": self.seconds, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "layers": [asdict(r) for r in self.layers],
                "skipped": [{"name": n, "reason": why} for n, why in self.skipped]}

    def __str__(self) -> str:
        width = max([len("layer")] + [len(r.name) for r in self.layers])
        lines = [f"{'layer':<{width}}  {'shape':>11}  {'sparsity':>8}  {'before':>10}  {'after':>10}  "
                 f"{'dtype':>11}  {'format':>9}  {'seconds':>7}"]
        for r in self.layers:
            lines.append(f"{r.name:<{width}}  {r.shape[0]:>5}x{r.shape[1]:<5}  {r.sparsity:>8.1%}  "
                         f"{format_nbytes(r.bytes_before):>10}  {format_nbytes(r.bytes_after):>10}  "
                         f"{r.dtype_before + '>' + r.dtype_after:>11}  {r.format:>9}  {r.seconds:>7.2f}")
        ratio = self.bytes_before / self.bytes_after if self.bytes_after else float("nan")
        lines.append(f"{len(self.layers)} layers ({self.method or 'no pruning'}): "
                     f"{format_nbytes(self.bytes_before)} -> {format_nbytes(self.bytes_after)} "
                     f"({ratio:.2f}x smaller) in {self.seconds:.1f} s")
        lines += [f"left dense: {name} ({why})" for name, why in self.skipped]
        return "\n".join(lines)


def sparsify_(
    model: nn.Module,
    sparsity: float | Mapping[str, float] = 0.5,
    method: str | None = "wanda",
    calibration=None,
    format: str = "auto",
    include=None,
    exclude=("lm_head",),
    tokenizer=None,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    max_tokens: int | None = None,
    calibration_samples: int | None = None,
    calibration_tokens: int | None = None,
    seed: int = 0,
) -> SparsifyReport:
    """Prune every matching nn.Linear / GPT-2 Conv1D of `model` and replace it by a SparseLinear.

    sparsity: fraction of zeros per layer in [0, 1), or {fnmatch pattern: fraction}; with a
        mapping the last matching pattern wins and layers no pattern matches are left alone.
    method: "magnitude" | "wanda" | "sparsegpt" | None (keep the zeros the weights already have).
    calibration: required by wanda and sparsegpt, run through the model block by block on the
        model's device. Either a corpus, cut into windows (see prune.calibration_windows): a text
        file or folder path (str or Path), or strings when calibration_samples/_tokens is given;
        or ready samples: token-id tensors, strings (with tokenizer=) or model-input dicts.
    calibration_samples / calibration_tokens: how many windows of how many tokens to draw from a
        corpus (defaults 128 and 512 when either is given or calibration is a path), with `seed`.
    include / exclude: fnmatch patterns on qualified module names; a pattern also matches any
        dotted tail of the name ("lm_head" matches "model.lm_head", "*.q_proj" every q_proj).
    dtype: 16-bit type to store values in (default: the layer's own fp16/bf16, fp16 for fp32).
    max_tokens: the most tokens one forward will multiply (e.g. the decode batch), if known: with
        format="auto" and <= 16, layers from 85% sparsity take sliced ELL (see flashllm.compress).

    A linear whose weight Parameter is shared with another module (e.g. lm_head tied to the
    embeddings) is left dense with a warning; a module registered under several names is swapped
    once, at every name. Returns a SparsifyReport: one row per layer; print it for a table.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(sparsity, Mapping):
        for value in sparsity.values():
            check_sparsity(value)
    else:
        check_sparsity(sparsity)
    if method in _CALIBRATED and calibration is None:
        raise ValueError(f"method={method!r} needs calibration data (token-id tensors, or strings with tokenizer=)")

    started = time.perf_counter()
    report = SparsifyReport(method)
    targets = _select_layers(model, sparsity, include, exclude, report)
    bar = tqdm(total=len(targets), desc=f"sparsify ({method or 'compress'})", disable=not progress, unit="layer")

    pending_swaps = []

    def prune(name, stats=None):
        module, layer_sparsity, aliases = targets.pop(name)
        t0 = time.perf_counter()
        dense = dense_weight_of(module)
        pruned = _prune(name, dense, layer_sparsity, method, stats)
        new = SparseLinear.from_dense(pruned.contiguous(), module.bias, format=format, dtype=dtype,
                                      max_tokens=max_tokens)
        # Until the swap, the dense layer computes with exactly the values the sparse one stores, so
        # calibration re-runs of its block see the pruned model (and stay on the fast dense path).
        dense.copy_(new.weight.to_dense())
        pending_swaps.append((aliases, new))
        w = new.weight
        report.layers.append(LayerReport(
            name, tuple(w.shape), w.sparsity, dense.numel() * dense.element_size(), w.nbytes,
            time.perf_counter() - t0, _short(dense.dtype), _short(w.dtype), w.format))
        bar.set_postfix_str(name, refresh=False)
        bar.update()

    def swap():
        for aliases, new in pending_swaps:
            for alias in aliases:
                parent, _, attr = alias.rpartition(".")
                setattr(model.get_submodule(parent), attr, new)
        pending_swaps.clear()

    try:
        if method in _CALIBRATED:
            samples = prepare_samples(_calibration_items(calibration, tokenizer, calibration_samples,
                                                         calibration_tokens, seed), tokenizer, _device_of(model))
            layers = {name: t[0] for name, t in targets.items()}
            calibrate_sequentially(model, samples, layers, method == "sparsegpt", prune, after_block=swap)
        else:
            for name in list(targets):
                prune(name)
                swap()
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def _calibration_items(calibration, tokenizer, samples, tokens, seed):
    """Windows cut from a corpus (a path, or strings with a window size asked for), else the items as given."""
    is_path = isinstance(calibration, (str, os.PathLike))
    if is_path or samples is not None or tokens is not None:
        if not is_path and not _all_strings(calibration):
            raise ValueError("calibration_samples / calibration_tokens cut text into windows: pass a path or "
                             "strings as calibration")
        return calibration_windows(os.fspath(calibration) if is_path else list(calibration), tokenizer,
                                   samples=128 if samples is None else samples,
                                   tokens=512 if tokens is None else tokens, seed=seed)
    return calibration


def _all_strings(items) -> bool:
    return isinstance(items, (list, tuple)) and bool(items) and all(isinstance(i, str) for i in items)


def _prune(name, dense, sparsity, method, stats):
    if method is None:
        return dense
    if method != "magnitude" and stats.tokens == 0:
        warnings.warn(f"sparsify_: {name} saw no calibration inputs; pruned by magnitude instead of {method}")
        method = "magnitude"
    if method == "magnitude":
        return magnitude_prune(dense, sparsity)
    if method == "wanda":
        return wanda_prune(dense, stats.input_norm, sparsity)
    return sparsegpt_prune(dense, stats.hessian, sparsity)


def _select_layers(model, sparsity, include, exclude, report):
    """{name: (module, sparsity, every name the module is registered under)} for the layers to swap."""
    module_names = defaultdict(list)
    for name, module in model.named_modules(remove_duplicate=False):
        if is_linear_like(module):
            module_names[id(module)].append(name)
    param_names = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        param_names[id(param)].append(name)

    targets = {}
    for name, module in model.named_modules():  # each module once, under its first name
        if id(module) not in module_names:
            continue
        aliases = module_names[id(module)]
        if include is not None and not any(_matches(a, include) for a in aliases):
            continue
        if exclude and any(_matches(a, exclude) for a in aliases):
            continue
        layer_sparsity = _sparsity_for(name, sparsity)
        if layer_sparsity is None:
            continue
        owners = set(param_names[id(module.weight)]) - {f"{a}.weight" for a in aliases}
        if owners:
            why = f"weight shared with {', '.join(sorted(owners))}"
            warnings.warn(f"sparsify_: left {name} dense: its {why}")
            report.skipped.append((name, why))
            continue
        targets[name] = (module, layer_sparsity, aliases)
    return targets


def _matches(name, patterns) -> bool:
    if isinstance(patterns, str):
        patterns = (patterns,)
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p) for p in patterns)


def _sparsity_for(name, sparsity):
    if not isinstance(sparsity, Mapping):
        return float(sparsity)
    found = None
    for pattern, value in sparsity.items():
        if _matches(name, pattern):
            found = float(value)
    return found


def _device_of(model):
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _short(dtype) -> str:
    return str(dtype).removeprefix("torch.")
