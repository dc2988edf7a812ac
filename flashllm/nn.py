"""SparseLinear: a drop-in nn.Linear replacement whose weight is stored compressed (a SparseWeight)."""

import torch
from torch import nn

# Late-bound (flashllm.compress, flashllm.spmm, ...) so this module can be imported from flashllm/__init__.py
# in any order relative to the format code.
import flashllm

_STORED_DTYPES = (torch.float16, torch.bfloat16)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's transformers.pytorch_utils.Conv1D, recognised by name so transformers stays optional."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def is_linear_like(module: nn.Module) -> bool:
    # nn.MultiheadAttention reads out_proj.weight directly instead of calling it, so that
    # Linear (its own NonDynamicallyQuantizableLinear subclass) cannot be swapped.
    if type(module).__name__ == "NonDynamicallyQuantizableLinear":
        return False
    return isinstance(module, nn.Linear) or is_conv1d(module)


def dense_weight_of(module: nn.Module) -> torch.Tensor:
    """The [out, in] weight of an nn.Linear or Conv1D (Conv1D stores [in, out])."""
    if is_conv1d(module):
        return module.weight.detach().t()
    return module.weight.detach()


def format_nbytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class SparseLinear(nn.Module):
    """y = x @ W^T + b with W held as a flashllm SparseWeight [out_features, in_features].

    Values are stored in 16 bits (fp16 or bf16), the types the tensor-core kernel reads; an fp32
    layer is stored as fp16 unless dtype= says otherwise. forward accepts any leading batch dims and
    returns the input's dtype. `.to(device)` / `.cuda()` move the compressed weight. A cast to
    fp16/bf16 (`.half()`, `.to(torch.bfloat16)`) re-encodes it in the same format (briefly one dense
    copy of the layer); casts to wider types (`.float()`) leave the 16-bit weight as it is and only
    change the bias. state_dict holds the SparseWeight's tensors under `weight.<name>`, plus `bias`.
    """

    def __init__(self, weight, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = tuple(weight.shape)
        if bias is not None and not isinstance(bias, nn.Parameter):
            bias = nn.Parameter(bias, requires_grad=False)
        self.bias = bias

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, format: str = "auto",
                   dtype: torch.dtype | None = None, max_tokens: int | None = None) -> "SparseLinear":
        """weight [out, in] already holding its zeros; nothing is pruned here.  max_tokens: see compress."""
        dtype = dtype or (weight.dtype if weight.dtype in _STORED_DTYPES else torch.float16)
        return cls(flashllm.compress(weight.detach(), format=format, dtype=dtype, max_tokens=max_tokens), bias)

    @classmethod
    def from_linear(cls, linear: nn.Module, format: str = "auto", dtype: torch.dtype | None = None,
                    max_tokens: int | None = None) -> "SparseLinear":
        """Compress an nn.Linear (or GPT-2 Conv1D) as it is. The bias Parameter is shared, not copied."""
        if not is_linear_like(linear):
            raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(linear).__name__}")
        return cls.from_dense(dense_weight_of(linear).contiguous(), linear.bias, format=format, dtype=dtype,
                              max_tokens=max_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flashllm.spmm(x, self.weight, self.bias)  # the kernel adds the bias before rounding

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # nn.Module only hands us "apply fn to every tensor"; learn what fn does (move? cast?) by
        # applying it to an empty tensor with the weight's dtype and device.
        w = self.weight
        probe = fn(torch.empty(0, dtype=w.dtype, device=w.device))
        if probe.dtype != w.dtype and probe.dtype in _STORED_DTYPES:
            dense = w.to_dense().to(device=probe.device, dtype=probe.dtype)
            self.weight = flashllm.compress(dense, format=w.format)
        if probe.device != self.weight.device:
            self.weight = self.weight.to(probe.device)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, tensor in self.weight.state_dict().items():
            destination[f"{prefix}weight.{name}"] = tensor if keep_vars else tensor.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        head = prefix + "weight."
        parts = {k[len(head):]: v for k, v in state_dict.items() if k.startswith(head)}
        rest = {k: v for k, v in state_dict.items() if not k.startswith(head)}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if not parts:
            missing_keys.append(prefix + "weight")
            return
        try:
            weight = flashllm.SparseWeight.from_state_dict(parts)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            error_msgs.append(f"{head}*: not a valid SparseWeight: {e}")
            return
        if tuple(weight.shape) != (self.out_features, self.in_features):
            error_msgs.append(
                f"{head}*: shape {tuple(weight.shape)} does not match this layer's "
                f"({self.out_features}, {self.in_features})"
            )
            return
        # Like nn.Linear, keep the layer where it is (unless it is a meta-device placeholder).
        if self.weight.device.type != "meta":
            weight = weight.to(self.weight.device)
        self.weight = weight

    def extra_repr(self) -> str:
        w = self.weight
        dense = w.shape[0] * w.shape[1] * w.dtype.itemsize
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"format={w.format}, dtype={str(w.dtype).removeprefix('torch.')}, sparsity={w.sparsity:.1%}, "
            f"nbytes={format_nbytes(w.nbytes)} (dense {format_nbytes(dense)})"
        )
