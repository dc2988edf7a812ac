"""`SparseWeight`: a compressed [M, K] weight and the pieces every format shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FORMAT_VERSION = 2  # 2: the bitmap stores a register's two half-warp runs back to back (1 is read too)
# The one numbering of the formats: written into checkpoints (never renumber), passed to the custom op
# flashllm::spmm, and the kernels' FMT_<NAME> constants (kernels/jit.py writes them into format_ids.cuh).
FORMAT_IDS = {"tiled_csl": 1, "bitmap": 2, "sell": 3, "pairmap": 4}
FORMATS = tuple(FORMAT_IDS)
FORMAT_NAMES = {v: k for k, v in FORMAT_IDS.items()}
# Codes written into checkpoints; never reorder.
_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2}
_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}
# Each format's codec module (encode, decode, validate, TENSORS), registered by flashllm/formats/__init__.py.
_CODECS: dict = {}


def register_codec(name: str, codec) -> None:
    _CODECS[name] = codec


def codec_for(name: str):
    try:
        return _CODECS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; expected one of {FORMATS} or 'auto'") from None


def value_dtype_for(weight_dtype: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    """The 16-bit dtype the values are stored in: fp32 only narrows when the caller asks."""
    if requested is not None:
        if requested not in _DTYPE_CODES:
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {requested}")
        return requested
    if weight_dtype in _DTYPE_CODES:
        return weight_dtype
    raise ValueError(
        f"weight dtype {weight_dtype} is stored as 16-bit values only on request: "
        "pass dtype=torch.float16 or dtype=torch.bfloat16")


def check_weight(weight) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [M, K], got shape {tuple(weight.shape)}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"weight must be fp16, bf16 or fp32, got {weight.dtype}")
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"weight must be fp16, bf16 or fp32, got {weight.dtype}")
    if weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"weight must have M, K >= 1, got shape {tuple(weight.shape)}")
    if weight.shape[0] >= 2**31 or weight.shape[1] >= 2**31:
        raise ValueError(f"weight shape {tuple(weight.shape)} too large")


@dataclass(eq=False)
class SparseWeight:
    """A weight W [M, K] (the `nn.Linear.weight` layout) in a compressed format.

    `tensors` holds every buffer the format needs (see `flashllm.formats.bitmap`, `.pairmap`,
    `.tiled_csl` and `.sell`); `nnz` counts stored non-zeros; `max_block_bytes` is the
    largest compressed block, which sizes the kernel's shared-memory stages.
    """

    format: str
    shape: tuple[int, int]
    dtype: torch.dtype
    nnz: int
    max_block_bytes: int
    tensors: dict[str, torch.Tensor] = field(repr=False)
    # What the GPU path decided for this weight, per (tokens, device, dtype): see flashllm/kernels/spmm.py.
    # The tensors are never changed in place, so a decision stays valid for the weight's lifetime.
    launches: "LaunchCache" = field(default_factory=lambda: LaunchCache(), init=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Exact bytes of every tensor this weight holds."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def _codec(self):
        return codec_for(self.format)

    def to_dense(self) -> torch.Tensor:
        return self._codec.decode(self)

    def to(self, device) -> "SparseWeight":
        moved = {k: v.to(device) for k, v in self.tensors.items()}
        return SparseWeight(self.format, self.shape, self.dtype, self.nnz, self.max_block_bytes, moved)

    def validate(self) -> "SparseWeight":
        """Check every structural invariant; raise ValueError naming the first one broken."""
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; expected one of {FORMATS}")
        m, k = self.shape
        if not (1 <= m < 2**31 and 1 <= k < 2**31):
            raise ValueError(f"invalid shape {self.shape}")
        if not 0 <= self.nnz <= m * k:
            raise ValueError(f"nnz {self.nnz} outside [0, M*K = {m * k}]")
        self._codec.validate(self)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        meta = torch.tensor([FORMAT_VERSION, FORMAT_IDS[self.format], *self.shape,
                             _DTYPE_CODES[self.dtype], self.nnz, self.max_block_bytes], dtype=torch.int64)
        return {"meta": meta, **self.tensors}

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor], validate: bool = True) -> "SparseWeight":
        if "meta" not in d:
            raise ValueError("state dict has no 'meta' tensor: not a flashllm SparseWeight")
        meta = d["meta"]
        if meta.dtype != torch.int64 or meta.shape != (7,):
            raise ValueError(f"'meta' must be int64 of shape (7,), got {meta.dtype} {tuple(meta.shape)}")
        version, fmt, m, k, dt, nnz, max_block = (int(v) for v in meta.tolist())
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"format version {version} not supported (this flashllm reads 1 and {FORMAT_VERSION})")
        if fmt not in FORMAT_NAMES:
            raise ValueError(f"unknown format code {fmt}")
        if dt not in _DTYPES:
            raise ValueError(f"unknown dtype code {dt}")
        name = FORMAT_NAMES[fmt]
        expected = codec_for(name).TENSORS
        missing = [t for t in expected if t not in d]
        extra = [t for t in d if t not in expected and t != "meta"]
        if missing or extra:
            raise ValueError(f"{name} state dict: missing tensors {missing}, unexpected {extra}")
        w = cls(name, (m, k), _DTYPES[dt], nnz, max_block, {t: d[t] for t in expected})
        if version == 1 and name == "bitmap":  # the older value order: re-encode (always validated)
            bitmap = codec_for("bitmap")
            return bitmap.encode(bitmap.decode_v1(w), w.dtype).validate()
        return w.validate() if validate else w

    def __repr__(self) -> str:
        return (f"SparseWeight(format={self.format}, shape={self.shape}, dtype={self.dtype}, "
                f"sparsity={self.sparsity:.1%}, nbytes={self.nbytes}, device={self.device})")


class LaunchCache(dict):
    """SparseWeight.launches: never deep-copied or pickled with the weight (such a copy, with tensors of its
    own, starts empty; a shallow copy shares the tensors and the routes)."""

    def __deepcopy__(self, memo):
        return LaunchCache()

    def __reduce__(self):
        return LaunchCache, ()


def fail(msg: str):
    raise ValueError(msg)


def check_ptr(ptr: torch.Tensor, name: str, count: int, total: int, align: int) -> None:
    """Offsets of `count` variable-length records inside a buffer of `total` units."""
    if ptr.dtype != torch.int64 or ptr.dim() != 1 or ptr.numel() != count + 1:
        fail(f"{name} must be int64 of length {count + 1}, got {ptr.dtype} {tuple(ptr.shape)}")
    if int(ptr[0]) != 0:
        fail(f"{name}[0] must be 0, got {int(ptr[0])}")
    if int(ptr[-1]) != total:
        fail(f"{name}[-1] = {int(ptr[-1])} does not match the buffer size {total}")
    if bool((ptr[1:] < ptr[:-1]).any()):
        fail(f"{name} is not monotone")
    if bool((ptr % align != 0).any()):
        fail(f"{name} entries must be multiples of {align}")
