"""Source edits for `flashllm bench probe ablate` and `probe cubins`: string replacements of the kernel sources
in flashllm/kernels/csrc/, by label, that cut one part of a kernel out so its cost shows in the time.

An ablated kernel computes garbage; only its time is read.  Each edit names the text it replaces and how often
that text occurs across csrc/ (once unless said): an edit that no longer matches raises instead of timing the
unedited kernel (tests/test_ablate_edits.py checks every label on CPU).  Labels combine with '+'.

The mma.sync / wgmma SpMM kernels (spmm_bitmap, spmm_pairmap, spmm_tiled_csl):
  spmm-nomma       no tensor-core MMA (the A fragments are kept alive)
  bitmap-nodecode  the bitmap's A registers are its mask words: no value loads, no popcounts
  csl-noscatter    Tiled-CSL writes no non-zeros into its dense tile
  csl-nozero       Tiled-CSL does not clear its dense tile
  csl-nomidsync    a warp barrier instead of the CTA barrier between scatter and ldmatrix (races: timing only)
The wide kernel (spmm_wide):
  wide-nox         no X tile by TMA
  wide-nodecode    A registers are constants: no shared loads or decode
  wide-nomma       no wgmma
  wide-nofixup     every stream-K segment stores its tile, no partials
  wide-nofence     the fix-up's writers skip their fence
  wide-onesegment  the consumers run their first segment only (right for one CTA per tile)
  wide-noaccfence  no fence on the accumulators after wgmma.wait_group
"""

from __future__ import annotations

from pathlib import Path

_KEEP = 'asm volatile("" :: "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]));'

# label -> [(old, new, occurrences of old across csrc/)]
EDITS: dict[str, list[tuple[str, str, int]]] = {
    "base": [],
    "spmm-nomma": [("for (int nt = 0; nt < NT; nt++) mma16816<BF16>(acc[j][nt], a, b[nt]);",
                    _KEEP + ' asm volatile("" :: "r"(b[0][0]));', 2)],
    "bitmap-nodecode": [(f"a[{i}] = decode_reg(w{i}, c{i}, L, base);", f"a[{i}] = w{i};", 1) for i in range(4)],
    "csl-noscatter": [("      scatter_csl<SPW>(wst, dense, p, ptrs, nk, mt, it);\n", "\n", 1)],
    "csl-nozero": [("      clear_strips<SPW>(dense);  // own strip", "      // own strip", 1)],
    "csl-nomidsync": [("        __syncthreads();\n        if (full) compute_dense<",
                       "        __syncwarp();\n        if (full) compute_dense<", 1)],
    "wide-nox": [("mbar_arrive_expect(S.xfull + 8 * x.slot, S.X_BYTES);", "mbar_arrive_expect(S.xfull + 8 * x.slot, 0);", 1),
                 ("    tma_load_2d(S.xring", "    if (0) tma_load_2d(S.xring", 1)],
    "wide-nodecode": [
        ("    for (int f = 0; f < 4; f++) decode_pair_fragment(a[SET][f], blk, scratch, f, strip);",
         "    for (int f = 0; f < 4; f++) for (int q = 0; q < 4; q++) a[SET][f][q] = blk + f + q;", 1),
        ("    for (int f = 0; f < 4; f++) decode_fragment(a[SET][f], blk, scratch, f, L, base, strip);",
         "    for (int f = 0; f < 4; f++) for (int q = 0; q < 4; q++) a[SET][f][q] = base + f + q;", 1)],
    "wide-nomma": [("  for (int f = 0; f < 4; f++) wgmma_rs<NT, BF16>(acc, a[SET][f], xdesc + 2 * f);",
                    "  for (int f = 0; f < 4; f++) if (f == 9) acc[0][0] += a[SET][f][0];", 1)],
    "wide-nofixup": [("if (g.nk == p.KB || wide_fixup<NT, CW>(p, W, acc, g.tile, it, (g.tile / W.mtiles) * NT * 8, flag))",
                      "if (true)", 1)],
    "wide-nofence": [("    __threadfence();\n    if (!others_in(1))", "    if (!others_in(1))", 1)],
    "wide-onesegment": [("  for (i64 it = begin; it < end;) {\n    const Segment g(p, it, end);\n#pragma unroll",
                         "  if (i64 it = begin; it < end) {\n    const Segment g(p, it, end);\n#pragma unroll", 1),
                        ("    it += g.nk;\n  }\n}", "  }\n}", 1)],
    "wide-noaccfence": [("    fence_accumulators<NT>(acc);\n", "", 1)],
}


def source_files(csrc: Path) -> dict[str, str]:
    """The kernel sources an edit may touch: every .cu and .cuh file of a csrc/ folder, by name."""
    return {p.name: p.read_text() for p in sorted(csrc.iterdir()) if p.suffix in (".cu", ".cuh")}


def parse(spec: str) -> list[str]:
    """'wide-nox+wide-nodecode' -> its labels, each checked to exist."""
    labels = [part for part in spec.split("+") if part]
    for label in labels:
        if label not in EDITS:
            raise ValueError(f"unknown edit {label!r}; known: {', '.join(EDITS)}")
    return labels


def apply(files: dict[str, str], spec: str) -> dict[str, str]:
    """`files` (name -> text) with the edits of `spec` applied; raises if an edit's text occurs other than
    the number of times it names."""
    files = dict(files)
    for label in parse(spec):
        for old, new, want in EDITS[label]:
            found = sum(text.count(old) for text in files.values())
            if found != want:
                raise ValueError(f"edit {label!r} expects {want} occurrence(s) of {old!r} in csrc/, found {found}")
            files = {name: text.replace(old, new) for name, text in files.items()}
    return files
