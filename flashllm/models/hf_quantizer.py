"""The transformers side of a flashllm directory: `quant_method: "flashllm"` as a quantization config
and an HfQuantizer (registered by `flashllm.hf.register`; this module imports transformers).

Loading (`PreTrainedModel.from_pretrained`):
  1. before any weight is read, every layer that config.json's `sparsity_config` lists is read from the
     files on the CPU and validated, one at a time (CheckpointError names the broken tensor), and
     checked against the model skeleton (a linear of that shape);
  2. transformers streams the tensors: the dense ones as usual (dtype, device_map), and each sparse
     layer's `<module>.weight.<key>` tensors, on the device the device_map gives `<module>.weight`,
     to a conversion op that swaps the skeleton's meta nn.Linear for a SparseLinear holding them. The
     dense weight of a sparse layer never exists.
Saving: `model.save_pretrained` writes SparseLinear's own state dict (`<module>.weight.<key>`), with
`sparsity_config` and `quantization_config` describing the model as it is then, and the guard
(`flashllm.hf`) added to config.json afterwards: the layout `flashllm.save_pretrained` writes.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .. import hf
from ..formats import FORMATS, SparseWeight, codec_for, compress
from ..nn import SparseLinear, is_conv1d, is_linear_like
from .checkpoint import PRODUCER, SPARSITY_KEY, read_sparse_layer
from .files import CONFIG_NAME, CheckpointError, Shards

_PARTS = sorted({"meta", *(t for f in FORMATS for t in codec_for(f).TENSORS)})
SERIALIZED = ["weight." + p for p in _PARTS]
_PART_NAME = re.compile(r"(.+)\.weight\.(" + "|".join(_PARTS) + ")")
_HALF = (torch.float16, torch.bfloat16)


class FlashLLMConfig(QuantizationConfigMixin):
    """config.json's `quantization_config` of a flashllm directory. The layers themselves are listed
    in `sparsity_config`, which flashllm.from_pretrained reads too."""

    def __init__(self, format: str | None = None, sparsity: float | None = None,
                 flashllm_version: str | None = None, **kwargs):
        kwargs.pop("quant_method", None)
        self.quant_method = hf.QUANT_METHOD
        self.format = format
        self.sparsity = sparsity
        self.flashllm_version = flashllm_version
        for key, value in kwargs.items():
            setattr(self, key, value)


class FlashLLMDeserialize(ConversionOps):
    """`<module>.weight.<key>` tensors -> a SparseLinear in place of `<module>` (returns nothing to set)."""

    def __init__(self, hf_quantizer: "FlashLLMHfQuantizer"):
        self.hf_quantizer = hf_quantizer

    def __deepcopy__(self, memo):  # transformers copies the converter per layer: all copies share one quantizer
        return type(self)(self.hf_quantizer)

    def convert(self, input_dict, source_patterns=None, target_patterns=None, full_layer_name=None, model=None,
                missing_keys=None, **kwargs):
        parts = {}
        for key, tensors in input_dict.items():
            tensor = tensors[0] if isinstance(tensors, list) else tensors
            parts[key.removeprefix("weight.")] = tensor
        self.hf_quantizer.install(model, full_layer_name.removesuffix(".weight"), parts, missing_keys)
        return {}


def _drop_guard(config) -> None:
    if getattr(config, hf.GUARD_KEY, None) == hf.GUARD_FILE:
        delattr(config, hf.GUARD_KEY)


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    return (module.nf, module.nx) if is_conv1d(module) else (module.out_features, module.in_features)


def _names(entry: dict, key: str, config_path: Path) -> dict[str, str]:
    value = entry.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise CheckpointError(f"{config_path}: {SPARSITY_KEY}.{key} must map names to names")
    return value


class FlashLLMHfQuantizer(HfQuantizer):
    """Loads the linears of a flashllm directory as SparseLinear (see the module docstring)."""

    requires_calibration = True  # loads flashllm directories; it does not compress a dense model on load

    def __init__(self, quantization_config, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.layers: dict[str, int] = {}        # model module name -> stored bytes of its sparse weight
        self.shared: dict[str, list[str]] = {}  # model module name -> other names it is registered under
        self.aliases: dict[str, str] = {}       # tied tensor -> the tensor it was stored as
        self.installed: set[str] = set()
        self.config_path: Path | None = None

    # ------------------------------------------------------------------------------------ before loading

    def validate_environment(self, device_map=None, **kwargs):
        if not self.pre_quantized:
            raise ValueError("quant_method 'flashllm' loads flashllm checkpoints; to make one from a dense "
                             "model use flashllm.sparsify_ and flashllm.save_pretrained")
        if isinstance(device_map, dict):
            devices = {str(d) for d in device_map.values()}
            if "disk" in devices:
                raise ValueError("flashllm checkpoints cannot be offloaded to disk: SparseLinear keeps its "
                                 "compressed tensors outside the parameters accelerate moves")
            if "cpu" in devices and len(devices) > 1:
                raise ValueError("flashllm checkpoints cannot mix 'cpu' with accelerators in a device_map "
                                 "(accelerate's CPU offload moves parameters only, not SparseLinear's tensors)")

    # The hooks that see the model config before its weight files are looked up: transformers 5.25 calls
    # update_attn_implementation, earlier 5.x update_tp_plan. Either drops the guard (the real weights
    # are the default files).
    def update_attn_implementation(self, config):
        _drop_guard(config)
        return super().update_attn_implementation(config)

    def update_tp_plan(self, config):
        _drop_guard(config)
        return getattr(super(), "update_tp_plan", lambda c: c)(config)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        with torch.device("cpu"):  # transformers builds the skeleton under a meta default device
            self._check_checkpoint(model, checkpoint_files)

    def _check_checkpoint(self, model, checkpoint_files) -> None:
        if not checkpoint_files or not str(checkpoint_files[0]).endswith(".safetensors"):
            raise CheckpointError("a flashllm checkpoint loads from safetensors files only")
        root = Path(checkpoint_files[0]).parent
        self.config_path = config_path = root / CONFIG_NAME
        entry = getattr(model.config, SPARSITY_KEY, None)
        if not isinstance(entry, dict) or entry.get("producer") != PRODUCER:
            raise CheckpointError(f"{config_path}: quant_method 'flashllm' without a flashllm {SPARSITY_KEY}")
        records = entry.get("layers")
        if not isinstance(records, dict):
            raise CheckpointError(f"{config_path}: {SPARSITY_KEY}.layers must be an object")
        shards = Shards(root)
        prefix = getattr(model, "base_model_prefix", "")
        modules = dict(model.named_modules())

        def model_name(name: str) -> str:
            for candidate in (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")):
                if candidate in modules:
                    return candidate
            raise CheckpointError(f"{config_path}: {name!r} is not a module of {type(model).__name__}")

        for name, record in records.items():
            if not isinstance(record, dict) or record.get("format") not in FORMATS:
                raise CheckpointError(f"{config_path}: layer {name!r}: format must be one of {FORMATS}")
            target = model_name(name)
            module = modules[target]
            if not is_linear_like(module):
                raise CheckpointError(f"{config_path}: layer {name!r} is a {type(module).__name__}, not a linear layer")
            # Validated on the CPU, before any of it moves: a GPU kernel must never see unchecked offsets.
            weight, parts = read_sparse_layer(shards, name, record, config_path)
            if tuple(weight.shape) != _linear_shape(module):
                raise shards.error(parts["meta"], f"shape {tuple(weight.shape)}, the model expects "
                                                  f"{_linear_shape(module)}")
            self._check_cast(weight, module.weight.dtype, shards, parts["meta"])
            self.layers[target] = sum(shards.nbytes(n) for n in parts.values())
        for tensor in shards.names():
            match = _PART_NAME.fullmatch(tensor)
            if match and match.group(1) not in records:
                raise shards.error(tensor, f"part of a compressed layer that {SPARSITY_KEY}.layers does not list")
        for alias, original in _names(entry, "shared_layers", config_path).items():
            target, alias = model_name(original), model_name(alias)
            if target not in self.layers:
                raise CheckpointError(f"{config_path}: shared layer {alias!r} -> {original!r} does not name a "
                                      "sparse layer")
            parent, _, child = alias.rpartition(".")
            setattr(model.get_submodule(parent), child, modules[target])
            self.shared.setdefault(target, []).append(alias)
        self.aliases = _names(entry, "aliases", config_path)

    @staticmethod
    def _check_cast(weight: SparseWeight, dtype: torch.dtype, shards: Shards, source: str) -> None:
        """A layer loaded in another 16-bit dtype is re-encoded: refuse a finite value that turns into inf."""
        if dtype not in _HALF or dtype == weight.dtype:
            return
        dense = weight.to_dense()
        if bool((torch.isinf(dense.to(dtype)) & torch.isfinite(dense)).any()):
            name = str(dtype).removeprefix("torch.")
            raise shards.error(source, f"a value is outside {name}'s range; load it as "
                                       f"{str(weight.dtype).removeprefix('torch.')} or float32")

    def param_element_size(self, model, param_name: str, param: torch.Tensor) -> float:
        module_name = param_name.removesuffix(".weight")
        if param_name.endswith(".weight") and module_name in self.layers:
            return self.layers[module_name] / max(param.numel(), 1)  # device_map="auto" sizes what is stored
        return super().param_element_size(model, param_name, param)

    def update_weight_conversions(self, weight_conversions, model=None):
        # First: a model's own converters match `<param>.weight`, which would also claim `weight.<key>`.
        ours = WeightConverter(list(SERIALIZED), "weight", [FlashLLMDeserialize(self)])
        return [ours] + list(weight_conversions)

    # ------------------------------------------------------------------------------------ while loading

    def install(self, model, module_name: str, parts: dict[str, torch.Tensor], missing_keys) -> None:
        """Swap the meta linear `module_name` for a SparseLinear of the (already validated) `parts`."""
        if module_name not in self.layers:
            raise CheckpointError(f"{self.config_path}: {module_name}.weight.* is not a layer that "
                                  f"{SPARSITY_KEY} lists")
        weight = SparseWeight.from_state_dict(parts, validate=False)
        old = model.get_submodule(module_name)
        if old.weight.dtype in _HALF and old.weight.dtype != weight.dtype:
            weight = compress(weight.to_dense().to(old.weight.dtype), format=weight.format)
        layer = SparseLinear(weight, old.bias if isinstance(old.bias, nn.Parameter) else None)
        layer._is_hf_initialized = True
        for i, name in enumerate([module_name] + self.shared.get(module_name, [])):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            if missing_keys is not None:
                missing_keys.discard(f"{name}.weight")
                if i:  # a second name of one layer: its bias is the first name's
                    missing_keys.discard(f"{name}.bias")
        self.installed.add(module_name)

    # ------------------------------------------------------------------------------------- after loading

    def _process_model_after_weight_loading(self, model, **kwargs):
        lost = sorted(set(self.layers) - self.installed)
        if lost:
            raise CheckpointError(f"{self.config_path}: compressed layers not loaded: {lost[:5]}")
        state = model.state_dict(keep_vars=True)
        for alias, original in self.aliases.items():
            if alias in state and original in state and state[alias] is not state[original]:
                module_name, _, leaf = alias.rpartition(".")
                module = model.get_submodule(module_name)
                (module._parameters if leaf in module._parameters else module._buffers)[leaf] = state[original]
        conversions = getattr(model, "_weight_conversions", None)
        if conversions:  # SparseLinear's state dict is already the stored layout: nothing to revert on save
            model._weight_conversions = [c for c in conversions if not any(
                isinstance(op, FlashLLMDeserialize) for op in getattr(c, "operations", ()))]
        model.save_pretrained = types.MethodType(_save_pretrained, model)
        return model

    def get_state_dict_and_metadata(self, model):
        """Called first by save_pretrained: describe the model as it is now in its config."""
        from .save import sparsity_entry_of
        entry = sparsity_entry_of(model)
        setattr(model.config, SPARSITY_KEY, entry)
        for key, value in hf.quantization_entry(entry).items():
            setattr(self.quantization_config, key, value)
        return None, {}

    def _dequantize(self, model, dtype=None):
        for name, module in list(model.named_modules()):
            if isinstance(module, SparseLinear):
                weight = module.weight.to_dense().to(dtype or module.weight.dtype)
                linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                   device=weight.device, dtype=weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(weight)
                    if module.bias is not None:
                        linear.bias.copy_(module.bias)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, linear)
        if hasattr(model.config, SPARSITY_KEY):
            delattr(model.config, SPARSITY_KEY)
        return model

    def remove_quantization_config(self, model):
        super().remove_quantization_config(model)
        model.__dict__.pop("save_pretrained", None)

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


def _save_pretrained(self, save_directory, *args, **kwargs):
    """PreTrainedModel.save_pretrained, then the guard in config.json (transformers drops it on save)."""
    if kwargs.get("push_to_hub"):
        raise ValueError("save_pretrained(push_to_hub=True) would upload config.json without flashllm's guard: "
                         "call model.push_to_hub(repo_id), which saves through this method first")
    result = type(self).save_pretrained(self, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        hf.guard_directory(save_directory)
    return result


hf.register()  # when this module was imported first, transformers' import of its quantizers came too early
