"""Launch the block-format SpMM kernels (csrc/spmm_mma.cu: spmm_bitmap, spmm_pairmap, spmm_tiled_csl; mma.sync,
or wgmma on sm_90a) for up to 128 tokens, and their split-K sum: the reduce kernel, or a thread-block cluster."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..formats import SparseWeight, codec_for
from ..formats.layout import block_grid
from . import jit
from .common import Params
from .reduce import Reduce, ReducedLaunch
from .rules import NT_CHOICES, SPW_CHOICES, STAGE_CHOICES, THREADS, Config

PROGRAM = "spmm_mma.cu"


def variants() -> list[str]:
    """Every instantiation the rules can pick or a sweep can force (the wgmma ones, last flag true, for sm_90a)."""
    names = []
    for fmt in ("bitmap", "tiled_csl", "pairmap"):
        for bf16 in (False, True):
            for spw in SPW_CHOICES:
                for nt in NT_CHOICES:
                    for stages in STAGE_CHOICES:
                        for wg in (False, True):
                            if wg and fmt == "pairmap":
                                continue  # mma.sync only
                            if not (wg and fmt == "bitmap" and (spw != 1 or stages < 3)):
                                names.append(Config(spw, nt, stages, 1, 1, 0, 0, wg).name(fmt, bf16))
    return names


def clusters_fit(kernel: jit.LoadedKernel, grid, smem: int, split: int) -> bool:
    return kernel.clusters_fit(grid, smem, (1, 1, split))


class MmaLaunch(ReducedLaunch):
    """One config's launch for N tokens through one weight, decided once: the kernel, grid and Params; the
    reduce kernel where the split-K slices go through fp32 partials.  A call sets x, y, bias (and partials)."""

    def __init__(self, w: SparseWeight, n: int, cfg: Config, device_index: int):
        m, k = w.shape
        kernel = jit.get_kernel(cfg.name(w.format, w.dtype == torch.bfloat16), device_index,
                                jit.capability(device_index), PROGRAM)
        grid = cfg.grid(m, n)
        if cfg.cluster and not clusters_fit(kernel, grid, cfg.smem, cfg.split):
            cfg = replace(cfg, cluster=False)  # this GPU (partition) cannot place one: the reduce
        self.cfg, self.device = cfg, torch.device("cuda", device_index)
        reduced = cfg.split > 1 and not cfg.cluster
        self.partial_shape = (cfg.split, n, m) if reduced else None
        self.reduce = Reduce(cfg.split, n, m, w.dtype == torch.bfloat16, device_index) if reduced else None
        data, ptr = (w.tensors[key] for key in codec_for(w.format).TENSORS)
        mb, kb = block_grid((m, k))
        self.params = Params(data.data_ptr(), ptr.data_ptr(), 0, 0, 0, m, n, k, 0, mb, kb, cfg.kb_per_split,
                             cfg.stage_w_bytes, 0, int(cfg.cluster), cfg.w_stages, 0)
        self.launcher = jit.Launcher(kernel, grid, THREADS, cfg.smem, [self.params],
                                     cluster=(1, 1, cfg.split) if cfg.cluster else None)
