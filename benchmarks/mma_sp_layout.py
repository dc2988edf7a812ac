"""Device aid: discover (and then check) the register layouts of mma.sp.m16n8k32 (f16 / bf16 -> f32).

The quad format (flashllm/formats/quad.py) writes its metadata words in the order this instruction
reads them; the PTX manual gives that order only as figures.  So it is measured here, on one warp:
  1. B layout: A is one 1 at (row 0, logical column k), B holds the id of each (lane, half) -> D[0, n]
     names the B element that multiplies column k of token n.
  2. Metadata layout: every metadata nibble says "columns 0, 1" except one, flipped to "columns 2, 3";
     B is 1 at (k = 4G + 2 or 3, n = G) -> the one non-zero of D names the (row, group) the nibble controls.
  3. A random 2:4 check, both dtypes, both sparsity selectors, against an fp32 reference.
usage: python benchmarks/mma_sp_layout.py      (prints the layouts and PASS/FAIL, exits 1 on a mismatch)
"""
import sys

import cupy as cp
import numpy as np

SRC = r"""
template <bool BF16, int SEL>
__device__ void run(const unsigned* A, const unsigned* B, const unsigned* E, float* D) {
  const int e = blockIdx.x, l = threadIdx.x;
  unsigned a[4], b[4];
  for (int i = 0; i < 4; i++) { a[i] = A[(e * 32 + l) * 4 + i]; b[i] = B[(e * 32 + l) * 4 + i]; }
  const unsigned m = E[e * 32 + l];
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  if (BF16)
    asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
                   "r"(m), "n"(SEL));
  else
    asm volatile("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
                   "r"(m), "n"(SEL));
  for (int i = 0; i < 4; i++) D[(e * 32 + l) * 4 + i] = c[i];
}
extern "C" __global__ void f16_sel0(const unsigned* A, const unsigned* B, const unsigned* E, float* D) { run<false, 0>(A, B, E, D); }
extern "C" __global__ void f16_sel1(const unsigned* A, const unsigned* B, const unsigned* E, float* D) { run<false, 1>(A, B, E, D); }
extern "C" __global__ void bf16_sel0(const unsigned* A, const unsigned* B, const unsigned* E, float* D) { run<true, 0>(A, B, E, D); }
extern "C" __global__ void bf16_sel1(const unsigned* A, const unsigned* B, const unsigned* E, float* D) { run<true, 1>(A, B, E, D); }
"""
KERNELS = ("f16_sel0", "f16_sel1", "bf16_sel0", "bf16_sel1")


def launch(name, a_halves, b_halves, meta, dtype):
    """a_halves/b_halves [E, 32, 8] float (values), meta [E, 32] uint32 -> D [E, 16, 8]."""
    mod = cp.RawModule(code=SRC, options=("-std=c++17",), name_expressions=None)
    fn = mod.get_function(name)
    ne = a_halves.shape[0]
    def pack(h):
        bits = np.asarray(h, dtype).view(np.uint16).astype(np.uint32)
        return (bits[..., 0::2] | (bits[..., 1::2] << 16)).astype(np.uint32)
    A = cp.asarray(pack(a_halves)); B = cp.asarray(pack(b_halves)); E = cp.asarray(meta.astype(np.uint32))
    D = cp.zeros((ne, 32, 4), cp.float32)
    fn((ne,), (32,), (A, B, E, D))
    d = D.get()
    out = np.zeros((ne, 16, 8), np.float32)
    for l in range(32):
        g, t = l // 4, l % 4
        out[:, g, 2 * t], out[:, g, 2 * t + 1] = d[:, l, 0], d[:, l, 1]
        out[:, g + 8, 2 * t], out[:, g + 8, 2 * t + 1] = d[:, l, 2], d[:, l, 3]
    return out


def a_slot(row, group, half):
    """(lane, half index 0..7) of the compressed A element: the dense m16n8k16 A layout over 16
    compressed columns, register q = row-half + 2 * (group >= 4), compressed column 2 * group + half."""
    g, hi = row % 8, row // 8
    t = group % 4
    q = hi + 2 * (group // 4)
    return g * 4 + t, 2 * q + half


def main():
    f16 = np.float16
    # 1. B layout (selector 0, every nibble "0,1" or every nibble "2,3": no metadata layout involved)
    ne = 32
    a = np.zeros((ne, 32, 8)); b = np.zeros((ne, 32, 8)); meta = np.zeros((ne, 32), np.uint64)
    ids = np.arange(256).reshape(32, 8).astype(float)  # B element id = lane * 8 + half
    for k in range(32):
        G, i = k // 4, k % 4
        lane, h = a_slot(0, G, i % 2)
        a[k, lane, h] = 1.0
        b[k] = ids
        meta[k] = 0x44444444 if i < 2 else 0xEEEEEEEE
    d = launch("f16_sel0", a, b, meta.astype(np.uint32), f16)
    b_of = {}  # (k, n) -> (lane, half)
    ok = True
    for k in range(32):
        for n in range(8):
            v = int(round(d[k, 0, n]))
            b_of[(k, n)] = divmod(v, 8)
        if np.abs(d[k, 1:]).max() != 0:
            ok = False
    guess = all(b_of[(k, n)] == (n * 4 + (k % 8) // 2, 2 * (k // 8) + k % 2) for k in range(32) for n in range(8))
    print("B layout = (lane 4n + (k%8)//2, half 2*(k//8) + k%2):", guess, "| only row 0 set:", ok)
    maps, good = {}, True
    # 2. metadata layout, both selectors: flip one nibble of one lane at a time
    for sel in (0, 1):
        ne = 32 * 8
        a = np.zeros((ne, 32, 8)); b = np.zeros((ne, 32, 8)); meta = np.full((ne, 32), 0x44444444, np.uint64)
        a[:] = 1.0
        for k in range(32):
            for n in range(8):
                if k // 4 == n and k % 4 >= 2:
                    lane, h = b_of[(k, n)]
                    b[:, lane, h] = 1.0
        for lane in range(32):
            for j in range(8):
                e = lane * 8 + j
                meta[e, lane] = (0x44444444 & ~(0xF << (4 * j))) | (0xE << (4 * j))
        d = launch(f"f16_sel{sel}", a, b, meta.astype(np.uint32), f16)
        rows = []
        for lane in range(32):
            for j in range(8):
                nz = np.argwhere(d[lane * 8 + j] != 0)
                if len(nz):
                    rows.append(f"lane {lane:2d} nibble {j}: " + " ".join(f"(r{r},G{n})" for r, n in nz))
        print(f"selector {sel}: {len(rows)} live nibbles")
        print("\n".join(rows))
        maps[sel] = {(lane, j): tuple(np.argwhere(d[lane * 8 + j] != 0)[0])
                     for lane in range(32) for j in range(8) if (d[lane * 8 + j] != 0).sum() == 1}
    # 3. random 2:4 A through the measured layouts, against an fp32 reference
    rng = np.random.default_rng(0)
    for dt, name in ((np.float16, "f16"), (None, "bf16")):
        for sel in (0, 1):
            if len(maps[sel]) != 128:
                print(f"{name} sel {sel}: metadata map incomplete ({len(maps[sel])} of 128)"); good = False; continue
            ne = 16
            dense = np.zeros((ne, 16, 32)); a = np.zeros((ne, 32, 8)); b = np.zeros((ne, 32, 8))
            meta = np.full((ne, 32), 0x44444444, np.uint64)
            where = {v: k for k, v in maps[sel].items()}
            bv = rng.integers(-8, 8, (ne, 32, 8)) / 4.0
            for e in range(ne):
                for r in range(16):
                    for G in range(8):
                        i0, i1 = sorted(rng.choice(4, 2, replace=False))
                        v = rng.integers(-8, 8, 2) / 4.0
                        dense[e, r, 4 * G + i0], dense[e, r, 4 * G + i1] = v
                        for h, val in enumerate(v):
                            lane, s = a_slot(r, G, h)
                            a[e, lane, s] = val
                        lane, j = where[(r, G)]
                        meta[e, lane] = (int(meta[e, lane]) & ~(0xF << (4 * j))) | ((int(i0) | int(i1) << 2) << (4 * j))
            bmat = np.zeros((ne, 32, 8))
            for k in range(32):
                for n in range(8):
                    lane, h = b_of[(k, n)]
                    bmat[:, k, n] = bv[:, lane, h]
            ref = dense @ bmat
            if dt is None:  # bf16 bits = top half of fp32; the values here are exact in both
                d = launch_bf16(f"bf16_sel{sel}", a, bv, meta.astype(np.uint32))
            else:
                d = launch(f"f16_sel{sel}", a, bv, meta.astype(np.uint32), dt)
            err = float(np.abs(d - ref).max())
            print(f"random 2:4 {name} selector {sel}: max |err| {err}")
            good = good and err == 0.0
    return 0 if ok and guess and good else 1


def launch_bf16(name, a_halves, b_halves, meta):
    to = lambda h: (np.asarray(h, np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.float16)
    return launch(name, to(a_halves).astype(np.float16), to(b_halves).astype(np.float16), meta, np.float16)


if __name__ == "__main__":
    sys.exit(main())
