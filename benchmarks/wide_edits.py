"""The wide kernel's ablation edits: string replacements of csrc/spmm.cu, by label (wide_ablate.py times them,
device_cubins.py compiles them).  Each must match the source exactly once (tests/test_ablate_edits.py), or an
ablation would time the unedited kernel without a word.

nox (no X tile TMA), nodecode (A = constants: no shared loads or decode), nomma (no wgmma), and combinations;
nofixup (every stream-K segment stores its tile, no partials), nofence (the fix-up's writers skip their fence),
onesegment (the consumers run their first segment only: one CTA per tile), noaccfence.
"""

X = [("mbar_arrive_expect(S.xfull + 8 * x.slot, S.X_BYTES);", "mbar_arrive_expect(S.xfull + 8 * x.slot, 0);"),
     ("    tma_load_2d(S.xring", "    if (0) tma_load_2d(S.xring")]
DEC = [("    for (int f = 0; f < 4; f++) decode_pair_fragment(a[SET][f], blk, scratch, f, strip);",
        "    for (int f = 0; f < 4; f++) for (int q = 0; q < 4; q++) a[SET][f][q] = blk + f + q;"),
       ("    for (int f = 0; f < 4; f++) decode_fragment(a[SET][f], blk, scratch, f, L, base, strip);",
        "    for (int f = 0; f < 4; f++) for (int q = 0; q < 4; q++) a[SET][f][q] = base + f + q;")]
MMA = [("  for (int f = 0; f < 4; f++) wgmma_rs<NT, BF16>(acc, a[SET][f], xdesc + 2 * f);",
        "  for (int f = 0; f < 4; f++) if (f == 9) acc[0][0] += a[SET][f][0];")]
FIX = [("if (g.nk == p.KB || wide_fixup<NT, CW>(p, W, acc, g.tile, it, (g.tile / W.mtiles) * NT * 8, flag))", "if (true)")]  # every segment stores
FENCE = [("    __threadfence();\n    if (!others_in(1))", "    if (!others_in(1))")]  # the writers' fence
ONE = [("  for (i64 it = begin; it < end;) {\n    const Segment g(p, it, end);\n#pragma unroll",
        "  if (i64 it = begin; it < end) {\n    const Segment g(p, it, end);\n#pragma unroll"),
       ("    it += g.nk;\n  }\n}", "  }\n}")]  # consumers: one segment (a tile per CTA only)
NOACCFENCE = [("    fence_accumulators<NT>(acc);\n", "")]
EDITS = {"base": [], "nox": X, "nodecode": DEC, "nomma": MMA, "nox+nodecode": X + DEC, "nodecode+nomma": DEC + MMA,
         "nox+nomma": X + MMA, "all": X + DEC + MMA, "nofixup": FIX, "nofence": FENCE, "onesegment": ONE,
         "noaccfence": NOACCFENCE, "onesegment+nofixup": ONE + FIX}


def edited(source: str, edits: list, label: str = "") -> str:
    """`source` with `edits` applied, each checked to match exactly once."""
    for old, new in edits:
        assert source.count(old) == 1, f"{label}: the edit no longer matches the source: {old!r}"
        source = source.replace(old, new)
    return source
