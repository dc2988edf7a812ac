"""Hugging Face-style checkpoints of sparse models: `save_pretrained` and `from_pretrained`.

A flashllm directory is what `transformers` writes (config.json, safetensors shards, tokenizer
files) plus a `sparsity_config` entry in config.json; each SparseLinear is stored as its
SparseWeight's tensors under `<module>.weight.<key>`. `from_pretrained` also reads plain dense
checkpoints that hold zeros (how llm-compressor saves SparseGPT/Wanda models) and compressed-tensors
`sparse-bitmask` ones, compressing layer by layer while streaming from disk.

Loading never builds the dense model: the skeleton's parameters live on the `meta` device, and each
tensor goes from the file to its place on the target device one at a time. Everything read from the
directory is untrusted: file names must stay inside it, format names are checked against fixed
lists, and every SparseWeight is validated on the CPU before it reaches a GPU kernel.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..formats import FORMATS, SparseWeight, compress
from ..nn import SparseLinear, is_conv1d, is_linear_like
from . import compressed_tensors as ct
from .files import CONFIG_NAME, CheckpointError, Shards, _nbytes, read_json

SPARSITY_KEY, PRODUCER = "sparsity_config", "flashllm"
DEFAULT_THRESHOLD = 0.3
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Checked in order; an `architectures` entry must name a class that one of these maps to.
_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM",
                 "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
                 "AutoModelForQuestionAnswering", "AutoModelForPreTraining", "AutoModel")


def checkpoint_kind(config: dict) -> str:
    """"flashllm", "sparse-bitmask" or "dense", from a config.json dict (format names are whitelisted)."""
    entry = config.get(SPARSITY_KEY)
    if isinstance(entry, dict) and entry.get("producer") == PRODUCER:
        return PRODUCER
    section = ct.sparsity_config_of(config)
    return ct.format_of(section) if section else ct.DENSE


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {sorted(_DTYPES)} or 'auto'")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype {dtype}: expected torch.float16, torch.bfloat16 or torch.float32")
    return dtype


def model_class_for(config):
    """The transformers class to build: the one `architectures` names, looked up only in the auto mappings."""
    import transformers
    wanted = (getattr(config, "architectures", None) or [None])[0]
    found = []
    for auto_name in _AUTO_CLASSES:
        try:
            cls = getattr(transformers, auto_name)._model_mapping[type(config)]
        except (KeyError, ValueError):
            continue
        for c in cls if isinstance(cls, (list, tuple)) else (cls,):
            if wanted is None or c.__name__ == wanted:
                return c
            found.append(c)
    if not found:
        raise CheckpointError(f"no transformers model class for model_type {config.model_type!r}")
    warnings.warn(f"architecture {wanted!r} is not a known transformers class for {config.model_type!r}; "
                  f"building {found[0].__name__}")
    return found[0]


@contextlib.contextmanager
def _parameters_on_meta():
    """Create parameters on `meta` but keep buffers real: non-persistent buffers (rotary tables,
    position ids) are computed in __init__ and are not in the checkpoint to be loaded later."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def load_config(root: Path):
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises ValueError/KeyError/OSError for unknown or remote-code models
        raise CheckpointError(f"{root / CONFIG_NAME}: cannot build a transformers config: {e}") from e


def build_skeleton(config, dtype: torch.dtype | None) -> nn.Module:
    from transformers.initialization import no_init_weights
    cls = model_class_for(config)
    try:
        with _parameters_on_meta(), no_init_weights():
            model = cls._from_config(config, **({"dtype": dtype} if dtype else {}))
    except Exception as e:  # a hostile config (absurd sizes, wrong types) fails inside the model's __init__
        raise CheckpointError(f"{config.name_or_path}/{CONFIG_NAME}: cannot build {cls.__name__}: {e}") from e
    return model.eval()


def from_pretrained(path, device=None, dtype=None, format: str = "auto",
                    sparsity_threshold: float | None = DEFAULT_THRESHOLD) -> nn.Module:
    """Load a flashllm, dense or compressed-tensors `sparse-bitmask` checkpoint directory, offline.

    device: where the model goes (default: CUDA if available, else CPU).
    dtype: float16 / bfloat16 / float32 for the dense tensors and compressed values (default: as stored;
        fp32 weights that get compressed store fp16 values, bf16 if they overflow fp16). Compressed
        values are 16-bit, so with float32 a dense layer is compressed only when its values are exactly
        fp16 or bf16 values (nothing is rounded); a flashllm checkpoint's layers keep their stored values.
        A finite value that the requested type would turn into inf raises CheckpointError naming the tensor.
    format: SparseWeight format for layers compressed here ("auto" or one of formats.FORMATS); a flashllm
        checkpoint stored in another format is re-encoded.
    sparsity_threshold: a linear weight of a dense or bitmask checkpoint is compressed when at least
        this share of it is zero; None keeps every layer dense.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format {format!r}: expected 'auto' or one of {FORMATS}")
    root = Path(path)
    if not (root / CONFIG_NAME).is_file():
        raise CheckpointError(f"{root}: not a checkpoint directory (no {CONFIG_NAME})")
    config_dict = read_json(root / CONFIG_NAME)
    try:
        kind = checkpoint_kind(config_dict)
    except ValueError as e:
        raise CheckpointError(f"{root / CONFIG_NAME}: {e}") from e
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(dtype)
    model = build_skeleton(load_config(root), dtype)
    loader = Loader(model, Shards(root), device, dtype, format)
    if kind == PRODUCER:
        loader.load_flashllm(config_dict[SPARSITY_KEY], root / CONFIG_NAME)
    else:
        eligible = _eligibility(ct.sparsity_config_of(config_dict) or {}, sparsity_threshold, root / CONFIG_NAME)
        loader.load_dense(kind == ct.BITMASK, eligible, sparsity_threshold)
    loader.finish()
    _load_generation_config(model, root)
    return model


def _eligibility(section: dict, threshold, config_path: Path):
    """Which linear layers may be compressed: compressed-tensors `targets`/`ignore` when present
    (class names, module names, or `re:` regular expressions over module names)."""
    def patterns(key):
        entries = section.get(key) or []
        if not isinstance(entries, list) or not all(isinstance(p, str) for p in entries):
            raise CheckpointError(f"{config_path}: sparsity_config.{key} must be a list of strings")
        try:
            return [(re.compile(p[3:]) if p.startswith("re:") else None, p) for p in entries]
        except re.error as e:
            raise CheckpointError(f"{config_path}: sparsity_config.{key}: bad regular expression: {e}") from e

    targets, ignore = patterns("targets"), patterns("ignore")

    def matches(name, module, pats):
        return any(rx.match(name) if rx else p in (name, type(module).__name__) for rx, p in pats)

    def eligible(name, module):
        if threshold is None or not is_linear_like(module):
            return False
        return (not targets or matches(name, module, targets)) and not matches(name, module, ignore)
    return eligible


def _load_generation_config(model, root: Path) -> None:
    if (root / "generation_config.json").is_file() and hasattr(model, "generation_config"):
        from transformers import GenerationConfig
        try:
            model.generation_config = GenerationConfig.from_pretrained(str(root), local_files_only=True)
        except Exception as e:  # a broken generation config should not stop the model from loading
            warnings.warn(f"{root / 'generation_config.json'}: ignored: {e}")


def _mapping(entry: dict, key: str, config_path: Path) -> dict:
    value = entry.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise CheckpointError(f"{config_path}: {SPARSITY_KEY}.{key} must map names to names")
    return value


def _value_dtype(weight: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype | None:
    """16-bit dtype for compressed values: the requested or stored one; fp32 narrows to fp16 unless it
    overflows. With float32 requested: the 16-bit type that holds every value exactly, else None (stay dense)."""
    for d in (dtype, weight.dtype):
        if d in (torch.float16, torch.bfloat16):
            return d
    if dtype == torch.float32:
        return next((d for d in (torch.float16, torch.bfloat16) if torch.equal(weight.to(d).to(weight.dtype), weight)),
                    None)
    overflow = weight.numel() and float(weight.abs().max()) > torch.finfo(torch.float16).max
    return torch.bfloat16 if overflow else torch.float16


def _narrowed(tensor: torch.Tensor, dtype: torch.dtype | None, shards: Shards, source: str) -> torch.Tensor:
    """`tensor` cast to `dtype`, refusing a finite value that the cast would turn into inf."""
    if dtype is None or tensor.dtype == dtype or not tensor.dtype.is_floating_point:
        return tensor
    out = tensor.to(dtype)
    if torch.finfo(dtype).max < torch.finfo(tensor.dtype).max:
        overflow = torch.isinf(out) & torch.isfinite(tensor)
        if bool(overflow.any()):
            value = float(tensor[overflow].reshape(-1)[0])
            name = str(dtype).removeprefix("torch.")
            raise shards.error(source, f"value {value:g} is outside {name}'s range (largest {torch.finfo(dtype).max:g}); "
                                       "load it as bfloat16 or float32")
    return out


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    if is_conv1d(module):
        return module.nf, module.nx
    return module.out_features, module.in_features


def read_sparse_layer(shards: Shards, module_name: str, record: dict, config_path: Path):
    """The validated SparseWeight stored under `<module_name>.weight.*`, checked against its config.json
    record; returns (weight, {key: tensor name}). An error names the tensor that is broken."""
    head = module_name + ".weight."
    parts = {n[len(head):]: n for n in shards.names() if n.startswith(head)}
    if not parts:
        raise CheckpointError(f"{config_path}: layer {module_name!r} has no tensors {head}* in the checkpoint")
    tensors = {k: shards.get(n) for k, n in parts.items()}
    try:
        weight = SparseWeight.from_state_dict(tensors, validate=False)
    except (ValueError, TypeError) as e:
        raise shards.error(_broken_part(parts, tensors, record, str(e)),
                           f"layer {module_name}: invalid SparseWeight: {e}") from e
    problem = _disagreement(weight, record)
    if problem:
        raise shards.error(parts["meta"], f"layer {module_name}: {problem}")
    try:
        weight.validate()
    except (ValueError, TypeError) as e:
        raise shards.error(_broken_part(parts, tensors, record, str(e)),
                           f"layer {module_name}: invalid SparseWeight: {e}") from e
    return weight, parts


def _disagreement(weight: SparseWeight, record: dict) -> str | None:
    """What the weight's meta tensor says that its config.json record contradicts (fields the record has)."""
    if weight.format != record.get("format", weight.format):
        return f"format {weight.format!r}, config.json says {record['format']!r}"
    shape = record.get("shape")
    if isinstance(shape, list) and [int(d) for d in shape if isinstance(d, (int, float))] != list(weight.shape):
        return f"shape {weight.shape} in its meta tensor, config.json says {tuple(shape)}"
    dtype = str(weight.dtype).removeprefix("torch.")
    if dtype != record.get("dtype", dtype):
        return f"dtype {dtype} in its meta tensor, config.json says {record['dtype']}"
    sparsity = record.get("sparsity")
    if isinstance(sparsity, (int, float)):
        elements = weight.shape[0] * weight.shape[1]
        if abs((1 - sparsity) * elements - weight.nnz) > 1e-6 * elements + 1:  # the record keeps 6 decimals
            return f"{weight.nnz} non-zeros in its meta tensor, config.json says sparsity {sparsity}"
    return None


# What a SparseWeight error says about where it comes from: fields of the meta tensor, or its offsets.
_META_ERRORS = ("'meta'", "format version", "format code", "dtype code", "invalid shape", "outside [0, M*K",
                "max_block_bytes")


def _broken_part(parts: dict[str, str], tensors: dict, record: dict, message: str) -> str:
    """The tensor name a SparseWeight error points at: `.meta` for what it records (format, shape,
    counts), the offsets (`.block_ptr`, ...) for an offset check, else the payload (`.data`, ...).
    An offsets total that disagrees with the payload's size blames the one whose size config.json's
    byte count contradicts."""
    from ..formats import codec_for
    fallback = parts.get("meta", next(iter(parts.values())))
    if any(word in message for word in _META_ERRORS) or "meta" not in tensors:
        return fallback
    try:
        payload, ptr = codec_for(SparseWeight.from_state_dict(tensors, validate=False).format).TENSORS
    except (ValueError, TypeError):
        return fallback
    if ptr not in parts or payload not in parts:
        return fallback
    if ptr in message:
        if "does not match the buffer size" in message and isinstance(record.get("nbytes"), int):
            stored = sum(_nbytes(tensors[k]) for k in (payload, ptr))
            return parts[payload] if stored != record["nbytes"] else parts[ptr]
        return parts[ptr]
    return parts[payload]


def _decode_bitmask(shards: Shards, group: dict[str, str], prefix: str) -> torch.Tensor:
    """One compressed-tensors bitmask group, validated and decoded to its dense tensor."""
    try:
        return ct.decode({s: shards.get(n) for s, n in group.items()}, prefix)
    except ValueError as e:
        raise shards.error(group["compressed"], str(e)) from e


class Loader:
    """Moves tensors from a `Shards` into a meta skeleton, one tensor (or one layer) at a time.

    part(model_name, tensor or SparseWeight): the part of each tensor (or compressed layer) this loader keeps,
    applied as it arrives, before the skeleton's shape is checked (tensor parallelism: a rank's slice,
    engine/tp.py); None keeps all of it.
    """

    def __init__(self, model, shards: Shards, device, dtype, format, part=None):
        self.model, self.shards, self.device, self.dtype, self.format = model, shards, device, dtype, format
        self.part = part or (lambda name, t: t)
        self.expected = dict(model.state_dict(keep_vars=True))
        self.loaded: set[str] = set()
        prefix = getattr(model, "base_model_prefix", "")
        self.prefix = prefix + "." if prefix else ""

    def model_name(self, name: str) -> str | None:
        """Checkpoint name -> model name, allowing a missing or extra base-model prefix."""
        for candidate in (name, self.prefix + name, name.removeprefix(self.prefix) if self.prefix else name):
            if candidate in self.expected:
                return candidate
        return None

    def place(self, name: str, tensor: torch.Tensor, source: str) -> None:
        """Put a dense tensor where the skeleton expects `name` (a parameter or a persistent buffer)."""
        tensor = self.part(name, tensor)
        target = self.expected[name]
        if tuple(tensor.shape) != tuple(target.shape):
            raise self.shards.error(source, f"shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}")
        if tensor.dtype.is_floating_point != target.dtype.is_floating_point:
            raise self.shards.error(source, f"dtype {tensor.dtype}, the model expects {target.dtype}")
        module_name, _, leaf = name.rpartition(".")
        module = self.model.get_submodule(module_name)
        if name in self.loaded or leaf not in module._parameters and leaf not in module._buffers:
            raise self.shards.error(source, "stored twice, or also as part of a compressed layer")
        tensor = _narrowed(tensor, self.dtype, self.shards, source).to(self.device)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[leaf] = tensor
        self.loaded.add(name)

    def install(self, module_name: str, weight: SparseWeight, source: str) -> None:
        """Swap the skeleton's linear layer for a SparseLinear holding `weight` (already validated)."""
        weight = self.part(module_name + ".weight", weight)
        old = self.model.get_submodule(module_name)
        if tuple(weight.shape) != _linear_shape(old):
            raise self.shards.error(source, f"shape {tuple(weight.shape)}, the model expects {_linear_shape(old)}")
        parent, _, child = module_name.rpartition(".")
        bias = old.bias if isinstance(old.bias, nn.Parameter) else None  # may still be a meta placeholder
        setattr(self.model.get_submodule(parent), child, SparseLinear(weight.to(self.device), bias))
        self.loaded.add(module_name + ".weight")

    def reencode(self, weight: SparseWeight, source: str | None = None) -> SparseWeight:
        dtype = self.dtype if self.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        fmt = weight.format if self.format == "auto" else self.format
        if dtype == weight.dtype and fmt == weight.format:
            return weight
        return compress(_narrowed(weight.to_dense(), dtype, self.shards, source), format=fmt)

    def load_flashllm(self, entry: dict, config_path: Path) -> None:
        layers = entry.get("layers")
        if not isinstance(layers, dict):
            raise CheckpointError(f"{config_path}: {SPARSITY_KEY}.layers must be an object")
        claimed = set()
        for module_name, record in layers.items():
            self._check_layer_record(module_name, record, config_path)
            # Validated on the CPU, before any of it moves: a GPU kernel must never see unchecked offsets.
            weight, parts = read_sparse_layer(self.shards, module_name, record, config_path)
            source = parts.get("meta", next(iter(parts.values())))
            self.install(module_name, self.reencode(weight, source), source)
            claimed.update(parts.values())
        for name in self.shards.names():
            if name in claimed:
                continue
            target = self.model_name(name)
            if target is None:
                raise self.shards.error(name, "not part of the model (a flashllm checkpoint must match exactly)")
            self.place(target, self.shards.get(name), name)
        for alias, original in _mapping(entry, "shared_layers", config_path).items():
            self._share(alias, original, config_path)
        for alias, original in _mapping(entry, "aliases", config_path).items():
            self._tie(alias, original, config_path)

    def _check_layer_record(self, module_name, record, config_path: Path) -> None:
        if not isinstance(record, dict) or record.get("format") not in FORMATS:
            raise CheckpointError(f"{config_path}: layer {module_name!r}: format must be one of {FORMATS}")
        try:
            module = self.model.get_submodule(module_name)
        except AttributeError:
            raise CheckpointError(f"{config_path}: layer {module_name!r} does not exist in the model") from None
        if not is_linear_like(module):
            raise CheckpointError(f"{config_path}: layer {module_name!r} is a {type(module).__name__}, "
                                  "not a linear layer")

    def _share(self, alias: str, original: str, config_path: Path) -> None:
        """Register the SparseLinear loaded at `original` under `alias` too, as it was when saved."""
        layer = self._module(original, config_path)
        if not isinstance(layer, SparseLinear) or alias in self.loaded:
            raise CheckpointError(f"{config_path}: shared layer {alias!r} -> {original!r} does not name "
                                  "a loaded sparse layer")
        self._module(alias, config_path)
        parent, _, child = alias.rpartition(".")
        setattr(self.model.get_submodule(parent), child, layer)
        self.loaded.update(n for n in self.expected if n.startswith(alias + "."))

    def _tie(self, alias: str, original: str, config_path: Path) -> None:
        """Re-tie a tensor that save_pretrained stored once (e.g. lm_head sharing the embeddings)."""
        source_module, _, source_leaf = original.rpartition(".")
        value = getattr(self.model.get_submodule(source_module), source_leaf, None) if original in self.loaded else None
        if alias not in self.expected or alias in self.loaded or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{config_path}: alias {alias!r} -> {original!r} does not name a missing tensor "
                                  "and a loaded one")
        module_name, _, leaf = alias.rpartition(".")
        module = self.model.get_submodule(module_name)
        (module._parameters if leaf in module._parameters else module._buffers)[leaf] = value
        self.loaded.add(alias)

    def _module(self, name: str, config_path: Path) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{config_path}: {name!r} is not a module of the model") from None

    def load_dense(self, bitmask: bool, eligible, threshold) -> None:
        names = self.shards.names()
        groups, plain = ct.group_keys(names) if bitmask else ({}, names)
        unexpected = []
        for prefix, group in groups.items():
            name = ct.parameter_name(prefix, self.expected)
            dense = _decode_bitmask(self.shards, group, prefix)
            self._dense_item(name, lambda t=dense: t, group["compressed"], eligible, threshold, unexpected)
        for name in plain:
            self._dense_item(name, lambda n=name: self.shards.get(n), name, eligible, threshold, unexpected)
        if unexpected:
            warnings.warn(f"{self.shards.root}: ignored {len(unexpected)} tensors the model does not have, "
                          f"e.g. {unexpected[:3]}")

    def _dense_item(self, name, read, source, eligible, threshold, unexpected) -> None:
        target = self.model_name(name)
        if target is None:
            unexpected.append(name)
            return
        module_name, _, leaf = target.rpartition(".")
        module = self.model.get_submodule(module_name)
        if leaf != "weight" or not eligible(module_name, module):
            self.place(target, read(), source)
            return
        tensor = self.part(target, read())
        expected = _linear_shape(module)[::-1] if is_conv1d(module) else _linear_shape(module)
        if tuple(tensor.shape) != expected or not tensor.dtype.is_floating_point:
            raise self.shards.error(source, f"{tensor.dtype} {tuple(tensor.shape)}, the model expects a "
                                            f"floating-point weight of shape {expected}")
        # Counted and compressed on the target device: this one dense layer is the only one there at once.
        tensor = tensor.to(self.device)
        weight = tensor.t() if is_conv1d(module) else tensor
        value_dtype = None
        if int((weight == 0).sum()) >= threshold * weight.numel():
            value_dtype = _value_dtype(weight, self.dtype)
        if value_dtype is None:
            self.place(target, tensor, source)
            return
        weight = _narrowed(weight, value_dtype, self.shards, source)
        self.install(module_name, compress(weight.contiguous(), self.format, value_dtype), source)

    def finish(self) -> None:
        missing = [n for n, t in self.expected.items() if n not in self.loaded and t.device.type == "meta"]
        if missing and hasattr(self.model, "tie_weights"):
            self.model.tie_weights()  # dense HF checkpoints omit a tied lm_head
            state = self.model.state_dict(keep_vars=True)
            missing = [n for n in missing if n in state and state[n].device.type == "meta"]
        if missing:
            raise CheckpointError(f"{self.shards.root}: checkpoint lacks {len(missing)} model tensors, "
                                  f"e.g. {missing[:5]}")
        for module in self.model.modules():
            for name, buf in module._buffers.items():
                if buf is not None and buf.device != self.device:
                    module._buffers[name] = buf.to(self.device)


# ---------------------------------------------------------------------------------------------- info

def describe(path, sparsity_threshold: float | None = DEFAULT_THRESHOLD, validate: bool = True) -> dict:
    """What a checkpoint directory holds. Returns {"kind", "layers": [{name, shape, format, sparsity,
    nbytes, dense_nbytes}], "file_bytes", "sparsity", ...}; each layer is a linear weight.

    validate: read every compressed layer and check it as loading would (a SparseWeight's validate(),
    a bitmask's decode), one layer at a time, raising CheckpointError naming the broken tensor; False
    reads the headers and config.json only. Dense weights are always read, to count their zeros."""
    root = Path(path)
    config = read_json(root / CONFIG_NAME) if (root / CONFIG_NAME).is_file() else {}
    try:
        kind = checkpoint_kind(config)
    except ValueError as e:
        raise CheckpointError(f"{root / CONFIG_NAME}: {e}") from e
    shards = Shards(root)

    layers = []
    if kind == PRODUCER:
        records = config[SPARSITY_KEY].get("layers") or {}
        if not isinstance(records, dict):
            raise CheckpointError(f"{root / CONFIG_NAME}: {SPARSITY_KEY}.layers must be an object")
        for name, record in records.items():
            if not isinstance(record, dict) or record.get("format") not in FORMATS:
                raise CheckpointError(f"{root / CONFIG_NAME}: layer {name!r}: format must be one of {FORMATS}")
            parts = [n for n in shards.names() if n.startswith(name + ".weight.")]
            layer = {"name": name, "shape": [int(d) for d in record.get("shape", [0, 0])],
                     "format": record["format"], "sparsity": float(record.get("sparsity", 0.0))}
            if validate:
                weight, _ = read_sparse_layer(shards, name, record, root / CONFIG_NAME)
                layer.update(shape=list(weight.shape), sparsity=weight.sparsity)
            layers.append({**layer, "nbytes": sum(shards.nbytes(n) for n in parts),
                           "dense_nbytes": 2 * math.prod(layer["shape"])})
        return _summary(root, kind, config, layers, shards, sparsity_threshold)

    skeleton = build_skeleton(load_config(root), None)
    linear = {n for n, m in skeleton.named_modules() if is_linear_like(m)}
    groups, plain = ct.group_keys(shards.names()) if kind == ct.BITMASK else ({}, shards.names())
    for prefix, group in groups.items():
        name = prefix.removesuffix(".weight")
        if name not in linear:
            continue  # embeddings, norms and biases that releases before 0.9 compressed too
        if validate:
            _decode_bitmask(shards, group, prefix)
        shape = list(ct.dense_shape(shards.get(group["shape"]), prefix))
        nnz = math.prod(shards.shape(group["compressed"]))
        value_bytes = shards.nbytes(group["compressed"]) // max(nnz, 1)
        layers.append({"name": name, "shape": shape, "format": ct.BITMASK,
                       "sparsity": 1 - nnz / max(math.prod(shape), 1),
                       "nbytes": sum(shards.nbytes(n) for n in group.values()),
                       "dense_nbytes": value_bytes * math.prod(shape)})
    for name in plain:
        if name.endswith(".weight") and name.removesuffix(".weight") in linear and len(shards.shape(name)) == 2:
            weight = shards.get(name)  # one dense weight in memory at a time
            layers.append({"name": name.removesuffix(".weight"), "shape": list(weight.shape), "format": "dense",
                           "sparsity": int((weight == 0).sum()) / max(weight.numel(), 1),
                           "nbytes": _nbytes(weight), "dense_nbytes": _nbytes(weight)})
    return _summary(root, kind, config, layers, shards, sparsity_threshold)


def _summary(root, kind, config, layers, shards, sparsity_threshold) -> dict:
    elements = sum(math.prod(layer["shape"]) for layer in layers)
    zeros = sum(layer["sparsity"] * math.prod(layer["shape"]) for layer in layers)
    return {"path": str(root), "kind": kind, "model_type": config.get("model_type"),
            "format": config.get(SPARSITY_KEY, {}).get("format") if kind == PRODUCER else kind,
            "layers": layers, "sparsity": zeros / elements if elements else 0.0,
            "layer_bytes": sum(layer["nbytes"] for layer in layers),
            "dense_layer_bytes": sum(layer["dense_nbytes"] for layer in layers),
            "file_bytes": sum(p.stat().st_size for p in set(shards.location.values())),
            "compressible": sum(1 for layer in layers if sparsity_threshold is not None
                                and layer["sparsity"] >= sparsity_threshold)}
