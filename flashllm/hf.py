"""Hugging Face transformers integration: a flashllm checkpoint directory loads with
`transformers.AutoModelForCausalLM.from_pretrained(dir)` once flashllm is imported.

A flashllm directory's config.json carries `quantization_config: {"quant_method": "flashllm", ...}`;
importing flashllm registers that method with transformers (`register_quantization_config` /
`register_quantizer`, see `flashllm.models.hf_quantizer`), so from_pretrained builds the linears listed
in `sparsity_config` as SparseLinear straight from their compressed tensors.

transformers skips a quantization method it does not know with a warning and would load such a
directory with its sparse linears left at random. So config.json also names a weights file that does
not exist (`transformers_weights`): without flashllm, from_pretrained stops with FileNotFoundError on
that name; with flashllm, the quantizer drops the entry and the real weights load.

Registration waits for transformers: importing flashllm does not import it. If transformers'
quantizers are already imported they are registered at once; otherwise an import hook registers them
the moment transformers imports them.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
import warnings
from pathlib import Path

QUANT_METHOD = "flashllm"
GUARD_KEY = "transformers_weights"
GUARD_FILE = "import-flashllm-to-load.safetensors"
_TRIGGER = "transformers.quantizers"
_registered = False


def quantization_entry(sparsity_entry: dict) -> dict:
    """The config.json `quantization_config` of a flashllm directory whose `sparsity_config` is `sparsity_entry`."""
    return {"quant_method": QUANT_METHOD, "format": sparsity_entry.get("format"),
            "sparsity": sparsity_entry.get("sparsity"), "flashllm_version": sparsity_entry.get("flashllm_version")}


def mark_config(config_dict: dict, has_sparse_layers: bool) -> None:
    """Set (or clear) the `quantization_config` and the guard of a config.json dict in place.

    A quantization_config of another method (a compressed-tensors one with quantization groups) is kept
    as it is; the directory then loads through flashllm.from_pretrained only."""
    existing = config_dict.get("quantization_config")
    ours = isinstance(existing, dict) and existing.get("quant_method") == QUANT_METHOD
    if existing is not None and not ours:
        config_dict.pop(GUARD_KEY, None)
        return
    if has_sparse_layers:
        config_dict["quantization_config"] = quantization_entry(config_dict.get("sparsity_config") or {})
        config_dict[GUARD_KEY] = GUARD_FILE
    else:
        config_dict.pop("quantization_config", None)
        config_dict.pop(GUARD_KEY, None)


def guard_directory(save_directory) -> None:
    """Add the guard to a config.json that transformers wrote (it drops `transformers_weights` on save)."""
    path = Path(save_directory) / "config.json"
    if not path.is_file():
        return
    config_dict = json.loads(path.read_text())
    section = config_dict.get("quantization_config")
    if not (isinstance(section, dict) and section.get("quant_method") == QUANT_METHOD):
        return
    layers = (config_dict.get("sparsity_config") or {}).get("layers") or {}
    shared = (config_dict.get("sparsity_config") or {}).get("shared_layers") or {}
    mark_config(config_dict, bool(layers or shared))
    path.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")


def register() -> bool:
    """Register the flashllm quantization method with transformers (idempotent). Returns False when
    transformers is not installed."""
    global _registered
    if _registered:
        return True
    try:
        from transformers.quantizers import auto
    except ImportError:
        return False
    partial = sys.modules.get(__package__ + ".models.hf_quantizer")
    if partial is not None and not hasattr(partial, "FlashLLMHfQuantizer"):
        return False  # hf_quantizer is being imported (it imported transformers): it calls register() when done
    from .models import hf_quantizer
    if QUANT_METHOD not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        auto.register_quantization_config(QUANT_METHOD)(hf_quantizer.FlashLLMConfig)
    if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
        auto.register_quantizer(QUANT_METHOD)(hf_quantizer.FlashLLMHfQuantizer)
    _registered = True
    return True


class _Loader(importlib.abc.Loader):
    """Runs the real loader of transformers.quantizers, then registers flashllm."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _remove_hook()
        try:
            register()
        except Exception as e:  # never break the user's import of transformers
            warnings.warn(f"flashllm could not register its transformers quantizer: {e!r}")

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TRIGGER:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_finder = _Finder()


def _remove_hook() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def install() -> None:
    """Register now if transformers' quantizers are loaded, else when transformers loads them."""
    if _TRIGGER in sys.modules:
        try:
            register()
        except Exception as e:
            warnings.warn(f"flashllm could not register its transformers quantizer: {e!r}")
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
