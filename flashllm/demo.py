"""`flashllm demo`: compress OPT-shaped random pruned weights and show what each format saves.

For each shape, sparsity (50/70/90%) and format it prints the dense and compressed sizes, the
bytes per element, and the largest error of `flashllm.spmm` against dense fp64 math for 16 random
tokens.  It runs on the GPU when there is one (full OPT-30B shapes); on a CPU the shapes are
shrunk (1/8 of each side by default) so the whole demo takes seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

import flashllm

# OPT-30B: hidden 7168, FFN 28672 (the fc1 weight is [28672, 7168])
SHAPES = ((7168, 7168), (28672, 7168))
SPARSITIES = (0.5, 0.7, 0.9)
FORMATS = flashllm.FORMATS


def random_pruned(m: int, k: int, sparsity: float, device, seed: int) -> torch.Tensor:
    """An fp16 weight [m, k] with N(0, 0.02) values and a uniformly random unstructured mask."""
    g = torch.Generator(device).manual_seed(seed)
    w = torch.randn(m, k, generator=g, device=device, dtype=torch.float16).mul_(0.02)
    keep = torch.rand(m, k, generator=g, device=device) >= sparsity
    return w.mul_(keep)


def spmm_error(x: torch.Tensor, w: torch.Tensor, sw: flashllm.SparseWeight) -> float:
    """max |spmm(x, W) - x @ W^T| / max |x @ W^T|, the reference in fp64."""
    ref = x.double() @ w.double().T
    return float((flashllm.spmm(x, sw).double() - ref).abs().max() / ref.abs().max())


def run(shapes, sparsities, tokens: int, device: torch.device, seed: int = 0) -> list[dict]:
    rows = []
    for m, k in shapes:
        x = torch.randn(tokens, k, generator=torch.Generator(device).manual_seed(seed), device=device,
                        dtype=torch.float16)
        for sparsity in sparsities:
            w = random_pruned(m, k, sparsity, device, seed)
            dense_bytes = w.numel() * w.element_size()
            auto = flashllm.formats.auto_format(w)
            for fmt in FORMATS:
                sw = flashllm.compress(w, fmt)
                rows.append(dict(shape=(m, k), sparsity=sw.sparsity, format=fmt, dense_bytes=dense_bytes,
                                 nbytes=sw.nbytes, auto=fmt == auto,
                                 error=spmm_error(x, w, sw)))
                del sw
            del w
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("shape", "sparsity", "format", "dense MB", "sparse MB", "saved", "B/elt", "spmm rel err")
    lines = []
    for r in rows:
        m, k = r["shape"]
        lines.append((f"{m}x{k}", f"{r['sparsity']:.1%}", r["format"] + (" *" if r["auto"] else ""),
                      f"{r['dense_bytes'] / 1e6:.1f}", f"{r['nbytes'] / 1e6:.1f}",
                      f"{1 - r['nbytes'] / r['dense_bytes']:.1%}", f"{r['nbytes'] / (m * k):.3f}",
                      f"{r['error']:.1e}"))
    widths = [max(len(c) for c in col) for col in zip(head, *lines)]
    fmt_line = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt_line(head), rule, *map(fmt_line, lines)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="flashllm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is a GPU)")
    p.add_argument("--scale", type=int, default=None,
                   help="divide each side of the OPT shapes by this (default: 1 on a GPU, 8 on a CPU)")
    p.add_argument("--tokens", type=int, default=16, help="activations (tokens) in the spmm check")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scale = args.scale or (1 if device.type == "cuda" else 8)
    shapes = [(m // scale, k // scale) for m, k in SHAPES]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"flashllm {flashllm.__version__} demo on {device} - {name}; torch {torch.__version__}")
    if scale != 1:
        print(f"OPT-30B shapes shrunk 1/{scale} per side to keep the CPU run short (--scale 1 for full size)")
    start = time.perf_counter()
    rows = run(shapes, SPARSITIES, args.tokens, device, args.seed)
    print()
    print(format_table(rows))
    print()
    print("* = what format=\"auto\" picks (pairmap from 65% sparsity, else the smaller of bitmap and tiled_csl; sell from 85% for <= 16 tokens a call).  B/elt: compressed bytes per weight element (dense fp16: 2).")
    print(f"spmm rel err: max |spmm(x, W) - x @ W^T| / max |x @ W^T| for {args.tokens} random fp16 tokens, "
          "reference in fp64.")
    print(f"done in {time.perf_counter() - start:.1f} s (encode timings: flashllm bench encode)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
