"""Launcher of the decode microbenchmark (csrc/decode_bench.cu): a block layout's decode alone, shared memory
to A-fragment registers, timed in SM cycles.  `flashllm bench decode` drives it.

Designs: `dense` (fragments stored ready: the floor), `bitmap` and `pairmap` (the formats' own encoders and the
SpMM kernels' decodes) and `lanewise` (a candidate layout without POPC in its decode, encoded here: it is not a
storage format; `lanewise16` reads it with 16-bit loads).
"""

from __future__ import annotations

import ctypes

import torch

from ..formats import codec_for
from ..formats.layout import BLOCK
from . import jit
from .rules import THREADS

PROGRAM = "decode_bench.cu"
DESIGNS = ("dense", "bitmap", "pairmap", "lanewise", "lanewise16")
STRIPS = BLOCK // 16
LANEWISE_VALUES_AT = 528  # csrc/decode_bench.cu


def variants() -> list[str]:
    return [f"decode_bench<{i},{check}>" for i in range(len(DESIGNS)) for check in ("false", "true")]


def fragment_coords(device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column in a 64x64 block of every fragment half, indexed [strip, f, q, lane, e]: the mma.sync
    m16n8k16 A layout (lane = 4g + t: register q holds row g (+8 if q odd), columns 2t, 2t+1 (+8 if q > 1))."""
    s, f, q, lane, e = torch.meshgrid(*(torch.arange(n, device=device) for n in (STRIPS, 4, 4, 32, 2)), indexing="ij")
    g, t = lane // 4, lane % 4
    return 16 * s + g + 8 * (q % 2), 16 * f + 2 * t + 8 * (q // 2) + e


def expected_fragments(weight: torch.Tensor) -> torch.Tensor:
    """[nb, strip, f, q, lane] uint32 registers (low half: the even column) of a [64, 64 nb] 16-bit weight."""
    bits = weight.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    nb = weight.shape[1] // BLOCK
    rows, cols = fragment_coords(weight.device)
    blocks = bits.reshape(BLOCK, nb, BLOCK).permute(1, 0, 2)  # [nb, row, col]
    halves = blocks[:, rows, cols]  # [nb, s, f, q, lane, e]
    return halves[..., 0] | (halves[..., 1] << 16)


def _pack(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate byte blocks, each padded to 16 bytes; offsets [nb + 1]."""
    padded = [torch.cat([b, b.new_zeros(-b.numel() % 16)]) for b in blocks]
    sizes = torch.tensor([0] + [p.numel() for p in padded], dtype=torch.int64)
    return torch.cat(padded), torch.cumsum(sizes, 0)


def encode_dense(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fragments stored ready: one 32-bit load per register and lane."""
    return _pack([_bytes(frags.reshape(-1), torch.int32) for frags in expected_fragments(weight)])


def encode_lanewise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The `lanewise` layout (csrc/decode_bench.cu): per strip one 32-bit mask per lane (bit 8f + 2q + e), values
    in (strip, f, lane, q, e) order, a 16-byte header of running counts at the ends of strips."""
    bits = weight.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    nb = weight.shape[1] // BLOCK
    rows, cols = fragment_coords()
    blocks = []
    for b in range(nb):
        block = bits[:, b * BLOCK:(b + 1) * BLOCK]
        halves = block[rows, cols]  # [s, f, q, lane, e]
        live = halves != 0
        # mask bit 8f + 2q + e of (s, lane)
        shift = (8 * torch.arange(4).view(4, 1, 1, 1) + 2 * torch.arange(4).view(1, 4, 1, 1)
                 + torch.arange(2).view(1, 1, 1, 2))
        masks = (live.to(torch.int64) << shift).sum(dim=(1, 2, 4))  # [s, lane]
        stream = halves.permute(0, 1, 3, 2, 4)[live.permute(0, 1, 3, 2, 4)]  # (s, f, lane, q, e) order
        ends = torch.cumsum(live.reshape(STRIPS, -1).sum(1), 0)
        header = torch.zeros(8, dtype=torch.int64)
        header[:STRIPS] = ends
        blocks.append(torch.cat([_bytes(header, torch.int16), _bytes(masks.reshape(-1), torch.int32),
                                 _bytes(stream, torch.int16)]))
    return _pack(blocks)


def _bytes(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    width = torch.iinfo(dtype).bits
    wrapped = values.where(values < 2 ** (width - 1), values - 2**width)
    return wrapped.to(dtype).contiguous().view(torch.uint8)


def encode(design: str, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(block bytes uint8, byte offsets int64 [nb + 1]) of a [64, 64 nb] fp16/bf16 weight, on the CPU."""
    weight = weight.cpu()
    if design == "dense":
        return encode_dense(weight)
    if design in ("lanewise", "lanewise16"):
        return encode_lanewise(weight)
    w = codec_for(design).encode(weight, weight.dtype)
    data, ptr = (w.tensors[key] for key in codec_for(design).TENSORS)
    return data, ptr.to(torch.int64)


def smem_bytes(offsets: torch.Tensor) -> int:
    nb = offsets.numel() - 1
    return int(offsets[-1]) + 16 + 4 * ((nb + 31) // 32 * 32) + 2 * (THREADS // 32) * 128


def launch(design: str, data: torch.Tensor, offsets: torch.Tensor, grid: int, iters: int,
           check: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One launch on the current CUDA device: clocks [grid, 3] (start, end, SM id), and with `check` the
    fragments [grid, nb, strip, f, q, lane] of one pass."""
    dev = torch.cuda.current_device()
    nb = offsets.numel() - 1
    data, offsets = data.cuda(), offsets.cuda()
    sink = torch.empty(grid * THREADS, dtype=torch.int32, device="cuda")
    clocks = torch.zeros(grid, 3, dtype=torch.int64, device="cuda")
    frags = torch.empty(grid * nb * STRIPS * 16 * 32 if check else 1, dtype=torch.int32, device="cuda")
    smem = smem_bytes(offsets.cpu())
    kernel = jit.get_kernel(f"decode_bench<{DESIGNS.index(design)},{'true' if check else 'false'}>", dev,
                            jit.capability(dev), PROGRAM)
    kernel.allow_smem(smem)
    kernel.launch_args((grid, 1, 1), (THREADS, 1, 1), torch.cuda.current_stream().cuda_stream,
                       [data.data_ptr(), offsets.data_ptr(), ctypes.c_int(nb), ctypes.c_int(1 if check else iters),
                        sink.data_ptr(), clocks.data_ptr(), frags.data_ptr()], smem=smem)
    if not check:
        return clocks, None
    return clocks, frags.view(grid, nb, STRIPS, 4, 4, 32).to(torch.int64) & 0xFFFFFFFF
