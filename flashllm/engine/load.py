"""Build an engine `Transformer` three ways:

  load_model(dir)        a Hugging Face model directory (dense safetensors) or a flashllm checkpoint
  from_hf(model)         an in-memory transformers OPT / Llama / Mistral / Qwen2 model (sparsified or not)
  random_model(preset)   random weights, each block linear built on the device and compressed there
                         one at a time: the dense model never exists (for models too big to hold dense)

The engine model takes the transformers model's modules and parameters as they are (no copies):
a linear slot receives the `nn.Linear` or `SparseLinear` object itself. Each builder then fuses q/k/v
and gate/up (`fuse.py`; fuse=False keeps them apart): the fused linears are new tensors, so a
transformers model that stays alive next to the engine keeps its own copy of those.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..formats import compress
from ..models import from_pretrained
from ..models.checkpoint import load_config
from ..nn import SparseLinear
from .args import ModelArgs
from .fuse import fuse_like, fuse_projections
from .model import Transformer
from .presets import preset
from .shard import RandomShards, shard_model

_ATTN = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj"}
_OPT_LAYER = {"attn_norm": "self_attn_layer_norm", **_ATTN, "attn.o_proj": "self_attn.out_proj",
              "ffn_norm": "final_layer_norm", "ffn.up_proj": "fc1", "ffn.down_proj": "fc2"}
_LLAMA_LAYER = {"attn_norm": "input_layernorm", **_ATTN, "attn.o_proj": "self_attn.o_proj",
                "ffn_norm": "post_attention_layernorm", "ffn.gate_proj": "mlp.gate_proj",
                "ffn.up_proj": "mlp.up_proj", "ffn.down_proj": "mlp.down_proj"}


def hf_module_names(args: ModelArgs) -> dict[str, str]:
    """Engine module name -> module name in the transformers *ForCausalLM model."""
    if args.family == "opt":
        top = {"embed_tokens": "model.decoder.embed_tokens", "embed_positions": "model.decoder.embed_positions",
               "norm": "model.decoder.final_layer_norm", "project_in": "model.decoder.project_in",
               "project_out": "model.decoder.project_out"}
        layers, per_layer = "model.decoder.layers", _OPT_LAYER
    else:
        top = {"embed_tokens": "model.embed_tokens", "norm": "model.norm"}
        layers, per_layer = "model.layers", _LLAMA_LAYER
    names = {**top, "lm_head": "lm_head"}
    for i in range(args.n_layers):
        names.update({f"layers.{i}.{ours}": f"{layers}.{i}.{theirs}" for ours, theirs in per_layer.items()})
    return names


def from_hf(hf_model: nn.Module, fuse: bool = True) -> Transformer:
    """The engine model running `hf_model`'s own weights (shared, not copied, but for the fused
    projections); its linears may be nn.Linear or SparseLinear (e.g. after flashllm.sparsify.sparsify_)."""
    args = ModelArgs.from_hf_config(hf_model.config)
    with torch.device("meta"):
        model = Transformer(args)
    for ours, theirs in hf_module_names(args).items():
        target = submodule(model, ours)
        if target is not None:
            adopt(model, ours, target, submodule(hf_model, theirs), theirs)
    check_loaded(model)
    return (fuse_projections(model) if fuse else model).eval()


def load_model(path, device=None, dtype=None, format: str = "auto",
               sparsity_threshold: float | None = 0.3, fuse: bool = True) -> Transformer:
    """Load a checkpoint directory with flashllm.models.from_pretrained (dense, sparse-bitmask or
    flashllm; linears with at least `sparsity_threshold` zeros are compressed) and wrap it."""
    ModelArgs.from_hf_config(load_config(Path(path)))  # unsupported model types fail before any weight is read
    return from_hf(from_pretrained(path, device=device, dtype=dtype, format=format,
                                   sparsity_threshold=sparsity_threshold), fuse=fuse)


def submodule(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def adopt(model: Transformer, name: str, target: nn.Module, source, source_name: str) -> None:
    if source is None:
        raise ValueError(f"the transformers model has no {source_name} (needed for the engine's {name})")
    if isinstance(target, nn.Linear):  # a linear slot: take the module itself, dense or sparse
        if not isinstance(source, (nn.Linear, SparseLinear)):
            raise TypeError(f"{source_name} is a {type(source).__name__}, expected nn.Linear or SparseLinear")
        if (source.out_features, source.in_features) != (target.out_features, target.in_features):
            raise ValueError(f"{source_name} is {source.out_features}x{source.in_features}, "
                             f"the engine expects {target.out_features}x{target.in_features}")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, source)
        return
    for pname, param in list(target.named_parameters(recurse=False)):
        theirs = getattr(source, pname, None)
        if not isinstance(theirs, torch.Tensor) or theirs.shape != param.shape:
            raise ValueError(f"{source_name}.{pname}: expected a tensor of shape {tuple(param.shape)}")
        setattr(target, pname, theirs if isinstance(theirs, nn.Parameter) else nn.Parameter(theirs, False))


def check_loaded(model: nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ValueError(f"engine parameters left unloaded: {missing[:5]}")


def with_dense_linears(model: Transformer) -> Transformer:
    """A second engine model sharing `model`'s non-linear weights, each SparseLinear expanded to an
    nn.Linear holding exactly the stored values (the dense baseline on the same pruned weights)."""
    with torch.device("meta"):
        dense = fuse_like(Transformer(model.args), model)
    for name, target in list(dense.named_modules()):
        if list(target.children()):
            continue  # containers; their leaves are adopted one by one
        source = model.get_submodule(name)
        if isinstance(source, SparseLinear):
            linear = nn.Linear(source.in_features, source.out_features, bias=False, device="meta")
            linear.weight = _param(source.weight.to_dense().to(model.dtype))
            linear.bias = source.bias
            source = linear
        adopt(dense, name, target, source, name)
    check_loaded(dense)
    return dense.eval()


# -------------------------------------------------------------------------------------- random weights

@dataclass
class BuildReport:
    seconds: float          # wall time of the whole build (synchronised)
    weight_bytes: int       # every weight as stored (compressed linears counted compressed)
    dense_bytes: int        # the same model with every weight dense
    sparsity: float         # share of zeros over the compressed linears
    formats: dict           # format -> number of compressed linears
    device: str

    def __str__(self) -> str:
        fmt = ", ".join(f"{n} {f}" for f, n in self.formats.items()) or "dense"
        return (f"built in {self.seconds:.1f} s on {self.device}: {self.weight_bytes / 1e9:.2f} GB "
                f"(dense {self.dense_bytes / 1e9:.2f} GB), sparsity {self.sparsity:.1%}, {fmt}")


def random_model(args: ModelArgs | str, sparsity: float = 0.0, format: str = "auto", device=None,
                 dtype: torch.dtype = torch.float16, seed: int = 0, n_layers: int | None = None,
                 std: float = 0.02, progress: bool = False, tp_rank: int = 0, tp_world: int | None = None,
                 tp_group=None, fuse: bool = True, max_tokens: int | None = None) -> tuple[Transformer, BuildReport]:
    """A model with N(0, std) weights; with sparsity > 0, each block linear is pruned by a uniformly
    random mask and compressed where it was drawn, before the next one is drawn, so peak memory is
    the compressed model plus one dense layer. lm_head and the embeddings stay dense.

    tp_world: build only rank tp_rank's part of a tensor-parallel model (see `shard.py`); its block
    weights are drawn per KV-head-sized unit, the same for every tp_world (1 included), so they
    differ from those of tp_world=None for the same seed.  max_tokens: the largest decode batch it
    will run, for format="auto" (see flashllm.compress)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    args = preset(args, n_layers) if isinstance(args, str) else (args.replace(n_layers=n_layers) if n_layers else args)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    value_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float16
    gen = torch.Generator(device).manual_seed(seed)
    started = time.perf_counter()
    with torch.device("meta"):
        model = Transformer(args)
    draw = None
    if tp_world is not None:
        draw = RandomShards(args, tp_rank, tp_world, seed, std, device, dtype)
        shard_model(model, tp_rank, tp_world, tp_group)  # the skeleton: rank-local shapes, heads, all-reduces
    formats, zeros, elements, dense_bytes = {}, 0, 0, 0
    modules = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    from tqdm.auto import tqdm
    for name, module in tqdm(modules, desc="random weights", disable=not progress, unit="module"):
        if isinstance(module, nn.Linear):
            tied = name == "lm_head" and args.tie_embeddings
            dense_bytes += 0 if tied else module.weight.numel() * dtype.itemsize
            dense_bytes += module.bias.numel() * dtype.itemsize if module.bias is not None else 0
            if sparsity > 0 and name.startswith("layers."):
                w = draw(name, sparsity) if draw is not None else None
                layer = _random_sparse_linear(module, sparsity, format, device, dtype, value_dtype, gen, std, w,
                                              max_tokens)
                formats[layer.weight.format] = formats.get(layer.weight.format, 0) + 1
                zeros += layer.weight.shape[0] * layer.weight.shape[1] - layer.weight.nnz
                elements += layer.weight.shape[0] * layer.weight.shape[1]
            elif tied:
                layer = module
                layer.weight = model.embed_tokens.weight
            else:
                layer = module
                layer.weight = _param(draw(name, 0.0) if draw is not None and name.startswith("layers.") else
                                      torch.randn(module.weight.shape, device=device, dtype=dtype, generator=gen) * std)
                if module.bias is not None:
                    layer.bias = _param(torch.zeros(module.bias.shape, device=device, dtype=dtype))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            continue
        for pname, p in list(module.named_parameters(recurse=False)):
            if isinstance(module, nn.Embedding):
                value = torch.randn(p.shape, device=device, dtype=dtype, generator=gen) * std
                dense_bytes += p.numel() * dtype.itemsize
            else:  # norms: weight 1, bias 0
                value = (torch.ones if pname == "weight" else torch.zeros)(p.shape, device=device, dtype=dtype)
                dense_bytes += p.numel() * dtype.itemsize
            setattr(module, pname, _param(value))
    check_loaded(model)
    if fuse:
        fuse_projections(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    report = BuildReport(time.perf_counter() - started, model.weight_nbytes(), dense_bytes,
                         zeros / elements if elements else 0.0, formats, str(device))
    return model.eval(), report


def _random_sparse_linear(module, sparsity, format, device, dtype, value_dtype, gen, std, w=None,
                          max_tokens=None) -> SparseLinear:
    shape = module.weight.shape
    if w is None:  # else drawn and pruned already (a tensor-parallel shard)
        w = torch.randn(shape, device=device, dtype=dtype, generator=gen).mul_(std)
        # fp16 uniforms keep the mask's temporary at 2 bytes an element on the GPU (resolution 2^-11 near 1)
        u = torch.rand(shape, device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32,
                       generator=gen)
        w.mul_(u >= sparsity)
        del u
    sw = compress(w, format=format, dtype=value_dtype, max_tokens=max_tokens)
    del w
    bias = _param(torch.zeros(module.bias.shape, device=device, dtype=dtype)) if module.bias is not None else None
    return SparseLinear(sw, bias)


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)
