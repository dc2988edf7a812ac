"""Reader for compressed-tensors `sparse-bitmask` checkpoints (SparseML / early llm-compressor output).

Upstream dropped the format (compressed-tensors 0.15 removed the compressors), so flashllm decodes it
itself and depends on no compressed-tensors package. Per compressed weight `W` [R, C] a file holds:

    <prefix>.shape        int64 [2]              dense shape (R, C); [1] for a 1-D tensor
    <prefix>.compressed   dtype of W [nnz]       non-zeros in row-major order
    <prefix>.bitmask      uint8 [R, ceil(C/8)]   bit c % 8 (LSB first) of byte c // 8 marks W[r, c] != 0
    <prefix>.row_offsets  int64 [R]              where row r starts in `.compressed`

Releases >= 0.9 name the prefix after the module (`model.layers.0.mlp.up_proj`); older ones after the
parameter (`model.layers.0.mlp.up_proj.weight`) and compress every tensor, norms and embeddings included.
Every field is checked against the others before any of it is used as an index.
"""

from __future__ import annotations

import torch

SUFFIXES = ("shape", "compressed", "bitmask", "row_offsets")
# compressed-tensors format names we know; anything else in a config is refused, never looked up.
DENSE, BITMASK = "dense", "sparse-bitmask"
KNOWN_FORMATS = (DENSE, BITMASK, "sparse-24-bitmask", "marlin-24")
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def sparsity_config_of(config: dict) -> dict | None:
    """The compressed-tensors `sparsity_config` of a config.json, under either key naming.

    Everything sits under `quantization_config`; before compressed-tensors PR #164 (Sep 2024) the
    section was called `compression_config`.
    """
    for section_name in ("quantization_config", "compression_config"):
        section = config.get(section_name)
        if isinstance(section, dict) and isinstance(section.get("sparsity_config"), dict):
            return section["sparsity_config"]
    return None


def format_of(sparsity_config: dict) -> str:
    """The sparsity format name, checked against the fixed list of known names."""
    name = sparsity_config.get("format")
    if name not in KNOWN_FORMATS:
        raise ValueError(f"unknown compressed-tensors sparsity format {name!r}; known: {KNOWN_FORMATS}")
    if name not in (DENSE, BITMASK):
        raise ValueError(f"compressed-tensors format {name!r} (2:4 only) is not supported; "
                         f"flashllm reads {DENSE!r} and {BITMASK!r}")
    return name


def group_keys(names) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Split tensor names into bitmask groups {prefix: {suffix: name}} and plain tensor names.

    A prefix counts as a group only if it has a `.bitmask`: a plain model may well own a tensor
    called `something.shape`, but none ends in all four suffixes.
    """
    by_prefix: dict[str, dict[str, str]] = {}
    for name in names:
        prefix, _, suffix = name.rpartition(".")
        if suffix in SUFFIXES:
            by_prefix.setdefault(prefix, {})[suffix] = name
    groups = {p: g for p, g in by_prefix.items() if "bitmask" in g}
    grouped = {name for g in groups.values() for name in g.values()}
    for prefix, group in groups.items():
        missing = [s for s in SUFFIXES if s not in group]
        if missing:
            raise ValueError(f"{prefix}: sparse-bitmask tensor is missing {', '.join('.' + s for s in missing)}")
    return groups, [n for n in names if n not in grouped]


def parameter_name(prefix: str, parameter_names) -> str:
    """The model parameter a group decodes to: the prefix itself (<= 0.8) or `<module>.weight` (>= 0.9)."""
    return prefix if prefix in parameter_names else prefix + ".weight"


def dense_shape(shape: torch.Tensor, name: str) -> tuple[int, ...]:
    if shape.dtype not in (torch.int64, torch.int32) or shape.dim() != 1 or shape.numel() not in (1, 2):
        raise ValueError(f"{name}.shape must be an int64 vector of length 1 or 2, "
                         f"got {shape.dtype} {tuple(shape.shape)}")
    dims = tuple(int(d) for d in shape.tolist())
    if any(d < 1 or d >= 2**31 for d in dims):
        raise ValueError(f"{name}.shape {list(dims)} has a dimension outside [1, 2**31)")
    return dims


def unpack_mask(bitmask: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Bool mask [rows, cols] from bytes packed LSB-first, each row padded to whole bytes."""
    bits = (bitmask.reshape(rows, -1, 1) & _BIT_WEIGHTS.to(bitmask.device)) != 0
    return bits.reshape(rows, -1)[:, :cols]


def decode(tensors: dict[str, torch.Tensor], name: str = "tensor") -> torch.Tensor:
    """Validate one bitmask group ({suffix: tensor}) and return the dense tensor it encodes.

    Raises ValueError naming `name` and the broken invariant. Memory: one bool mask and the dense
    result, both the size of this tensor.
    """
    dims = dense_shape(tensors["shape"], name)
    rows, cols = (1, dims[0]) if len(dims) == 1 else dims
    row_bytes = (cols + 7) // 8
    bitmask, offsets, values = tensors["bitmask"], tensors["row_offsets"], tensors["compressed"]

    expected_mask_shape = (row_bytes,) if len(dims) == 1 else (rows, row_bytes)
    if bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != expected_mask_shape:
        raise ValueError(f"{name}.bitmask must be uint8 {expected_mask_shape} for shape {list(dims)}, "
                         f"got {bitmask.dtype} {tuple(bitmask.shape)}")
    if values.dtype not in VALUE_DTYPES or values.dim() != 1:
        raise ValueError(f"{name}.compressed must be a 1-D fp16/bf16/fp32 tensor, "
                         f"got {values.dtype} {tuple(values.shape)} (fp8 values are not supported)")
    # A 1-D tensor stores its single row offset as a 0-d tensor.
    if offsets.dtype not in (torch.int64, torch.int32) or offsets.numel() != rows or offsets.dim() > 1:
        raise ValueError(f"{name}.row_offsets must be int64 with {rows} entries, "
                         f"got {offsets.dtype} {tuple(offsets.shape)}")

    padded = unpack_mask(bitmask, rows, row_bytes * 8)
    if cols % 8 and bool(padded[:, cols:].any()):
        raise ValueError(f"{name}.bitmask sets padding bits past column {cols}")
    mask = padded[:, :cols]
    row_counts = mask.sum(1)
    starts = row_counts.cumsum(0) - row_counts
    if not torch.equal(offsets.reshape(-1).long(), starts):
        bad = int((offsets.reshape(-1).long() != starts).nonzero()[0])
        raise ValueError(f"{name}.row_offsets[{bad}] = {int(offsets.reshape(-1)[bad])} does not match the "
                         f"bitmask (rows before it hold {int(starts[bad])} non-zeros)")
    nnz = int(row_counts.sum())
    if values.numel() != nnz:
        raise ValueError(f"{name}.compressed has {values.numel()} values but the bitmask marks {nnz}")

    dense = torch.zeros(rows, cols, dtype=values.dtype, device=values.device)
    dense[mask] = values  # boolean-mask assignment fills in row-major order, as the compressor gathered
    return dense.reshape(dims)


def decode_file(path: str) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, bitmask groups decoded to dense (keyed by their prefix)."""
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="pt") as f:
        groups, plain = group_keys(list(f.keys()))
        for prefix, group in groups.items():
            out[prefix] = decode({s: f.get_tensor(n) for s, n in group.items()}, f"{path}: {prefix}")
        for name in plain:
            out[name] = f.get_tensor(name)
    return out
