"""Device aid: where does a kernel's time go?  Two measurements in one call.

1. Tensor-core rate: cycles per SMSP of one mma.sync m16n8k16 and of one wgmma m64nNk16 (A from
   registers and from shared memory), N = 8..64, from a loop of independent MMAs on every SM.
2. Ablations of the dispatched SpMM kernels on one paper shape: the source is edited in memory
   (MMA removed, decode removed, ...) and timed against the real kernel, so each part's cost shows.
   Ablated kernels compute garbage; only their time is read.

usage: python benchmarks/ablate.py [rate] [ablate]     (default both)
env: COMBOS=fmt=a,b+c;fmt2=d (ablations to time), SPARSITIES=0.5,0.9, NS=8,32,64, CONFIG=spw=1,split=8
"""
import ctypes
import os
import sys

import torch

import flashllm
from flashllm.bench.kernel import clone_weight
from flashllm.bench.timing import copies_to_defeat_l2, time_graph
from flashllm.kernels import dispatch, jit

RATE_SRC = r"""
template <int NT, int CHAINS>
__global__ void mma_rate(float* out, int iters) {
  u32 a[4], b[NT][2];
  for (int i = 0; i < 4; i++) a[i] = 0x3c003c00u ^ ((threadIdx.x * 2654435761u + i * 40503u) & 0x03ff03ffu);
  for (int n = 0; n < NT; n++) b[n][0] = b[n][1] = 0x3c003c00u ^ ((threadIdx.x * 97u + n) & 0x03ff03ffu);
  float acc[CHAINS][4] = {};
  for (int it = 0; it < iters; it++)
#pragma unroll
    for (int c = 0; c < CHAINS; c++) mma16816<false>(acc[c], a, b[c % NT]);
  float s = 0.f;
  for (int c = 0; c < CHAINS; c++) s += acc[c][0] + acc[c][3];
  if (s == 12345.f) out[threadIdx.x] = s;
}

// The sparse tensor core: mma.sp m16n8k32 (A 2:4, 4 registers of values + a metadata register standing
// for a 16x32 tile), CHAINS independent accumulators - does k = 32 cost what a dense k = 16 does?
template <int NT, int CHAINS>
__global__ void mma_sp_rate(float* out, int iters) {
  u32 a[4], b[NT][4];
  for (int i = 0; i < 4; i++) a[i] = 0x3c003c00u ^ ((threadIdx.x * 2654435761u + i * 40503u) & 0x03ff03ffu);
  for (int n = 0; n < NT; n++)
    for (int i = 0; i < 4; i++) b[n][i] = 0x3c003c00u ^ ((threadIdx.x * 97u + n + i) & 0x03ff03ffu);
  const u32 meta = 0x44444444u;  // every group: values at columns 0 and 1
  float acc[CHAINS][4] = {};
  for (int it = 0; it < iters; it++)
#pragma unroll
    for (int c = 0; c < CHAINS; c++) {
      const u32(&bb)[4] = b[c % NT];
      asm volatile("mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                   "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                   : "+f"(acc[c][0]), "+f"(acc[c][1]), "+f"(acc[c][2]), "+f"(acc[c][3])
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(bb[0]), "r"(bb[1]), "r"(bb[2]), "r"(bb[3]),
                     "r"(meta));
    }
  float s = 0.f;
  for (int c = 0; c < CHAINS; c++) s += acc[c][0] + acc[c][3];
  if (s == 12345.f) out[threadIdx.x] = s;
}

// Integer pipes: 8 independent chains of one instruction kind (OP 0 popc, 1 lop3, 2 shf, 3 prmt, 4 imad,
// 5 popc+lop3 alternating) - how many warp-instructions per clock an SM retires of each.
template <int OP>
__global__ void alu_rate(u32* out, int iters) {
  u32 x[8];
  for (int c = 0; c < 8; c++) x[c] = threadIdx.x * 2654435761u + c * 40503u;
  const u32 y = threadIdx.x ^ 0x5bd1e995u, z = threadIdx.x + 7u;
  for (int it = 0; it < iters; it++)
#pragma unroll
    for (int c = 0; c < 8; c++) {
      if (OP == 0) asm volatile("popc.b32 %0, %0;" : "+r"(x[c]));
      if (OP == 1) asm volatile("lop3.b32 %0, %0, %1, %2, 0x96;" : "+r"(x[c]) : "r"(y), "r"(z));
      if (OP == 2) asm volatile("shf.l.wrap.b32 %0, %0, %0, %1;" : "+r"(x[c]) : "r"(y));
      if (OP == 3) asm volatile("prmt.b32 %0, %0, %1, 0x1032;" : "+r"(x[c]) : "r"(y));
      if (OP == 4) asm volatile("mad.lo.u32 %0, %0, %1, %2;" : "+r"(x[c]) : "r"(y), "r"(z));
      if (OP == 5) {
        if (c & 1) asm volatile("popc.b32 %0, %0;" : "+r"(x[c]));
        else asm volatile("lop3.b32 %0, %0, %1, %2, 0x96;" : "+r"(x[c]) : "r"(y), "r"(z));
      }
    }
  u32 s = 0;
  for (int c = 0; c < 8; c++) s += x[c];
  if (s == 12345u) out[threadIdx.x] = s;
}

template <int NT, bool RS>
__global__ void wgmma_rate(float* out, int iters) {
  __shared__ __align__(1024) u16 tiles[2 * 64 * 64];  // [B: 64 rows | A: 64 rows] x 64 halves
  for (int i = threadIdx.x; i < 2 * 64 * 64; i += blockDim.x) tiles[i] = 0x3c00 ^ ((i * 2654435761u) & 0x03ff);
  fence_proxy_async();
  __syncthreads();
  const unsigned long long bdesc = sw128_desc(smem_addr(tiles)), adesc = sw128_desc(smem_addr(tiles + 64 * 64));
  u32 a[4];
  for (int i = 0; i < 4; i++) a[i] = 0x3c003c00u ^ ((threadIdx.x * 2654435761u + i * 40503u) & 0x03ff03ffu);
  float acc[2][NT][4] = {};
  for (int it = 0; it < iters; it++) {
    wgmma_fence();
#pragma unroll
    for (int f = 0; f < 4; f++) {
      if (RS) wgmma_rs<NT, false>(acc[0], a, bdesc + 2 * f);
      else wgmma_ss<NT, false>(acc[0], adesc + 2 * f, bdesc + 2 * f);
    }
    wgmma_commit();
    wgmma_wait<0>();
  }
  float s = 0.f;
  for (int n = 0; n < NT; n++) s += acc[0][n][0];
  if (s == 12345.f) out[threadIdx.x] = s;
}
"""


def rate() -> None:
    src = ORIG + RATE_SRC
    jit._source = lambda program="spmm.cu": src
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    out = torch.zeros(1024, device="cuda")
    iters = 2000
    stream = torch.cuda.current_stream().cuda_stream
    try:
        import subprocess
        clock_ghz = float(subprocess.check_output(["nvidia-smi", "--query-gpu=clocks.max.sm",
                                                   "--format=csv,noheader,nounits"]).split()[0]) / 1e3
    except Exception:
        clock_ghz = 1.98

    def seconds(name: str, ctas: int) -> float:
        """One timed launch of `name` over `ctas` CTAs of 128 threads, after a warm-up launch."""
        k = jit.get_kernel(name, 0, (9, 0))
        args = [out.data_ptr(), ctypes.c_int(iters)]
        k.launch_args((ctas, 1, 1), (128, 1, 1), stream, args)
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        k.launch_args((ctas, 1, 1), (128, 1, 1), stream, args)
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1) * 1e-3

    print(f"tensor-core and integer-pipe rates, {sms} SMs, assuming {clock_ghz:.2f} GHz (max SM clock)")
    for op, what in enumerate(("popc", "lop3", "shf", "prmt", "imad", "popc+lop3")):
        sec = seconds(f"alu_rate<{op}>", sms * 8)
        per_sm = sms * 8 * 4 * iters * 8 / sms  # warp-instructions per SM
        print(f"  {what:10s} {per_sm / (sec * clock_ghz * 1e9):5.2f} warp-instructions per clock per SM", flush=True)
    for name, ctas_per_sm, per_iter_mmas, flops_per in (
            [(f"mma_rate<{nt},8>", 4, 8, 2 * 16 * 8 * 16) for nt in (1, 2, 4)] +
            [(f"mma_sp_rate<{nt},8>", 4, 8, 2 * 16 * 8 * 32) for nt in (1, 2, 4)] +
            [(f"wgmma_rate<{nt},{rs}>", 2, 4, 2 * 64 * 8 * nt * 16) for nt in (1, 2, 4, 8) for rs in ("true", "false")]):
        ctas = sms * ctas_per_sm
        sec = seconds(name, ctas)
        if name.startswith(("mma_rate", "mma_sp")):
            count = ctas * 4 * iters * per_iter_mmas  # warp-level instructions
            per_smsp = count / (sms * 4)
        else:
            count = ctas * iters * per_iter_mmas  # warpgroup-level instructions
            per_smsp = count / sms  # each wgmma occupies all 4 SMSPs' tensor cores
        tflops = count * flops_per / sec / 1e12
        print(f"  {name:22s} {tflops:7.1f} TFLOPS  {sec * clock_ghz * 1e9 / per_smsp:6.1f} cycles per instruction "
              f"{'(whole SM)' if name.startswith('wgmma') else 'per SMSP'}", flush=True)


# Edits of the kernel source, applied in order; each (old, new) must match.  (The decode ablations that
# led to the one-POPC decode - one load, no keep mask, POPC swapped for LOP3 - edited the earlier decode;
# their results are in flashllm/kernels/NOTES.md.)
ORIG = jit._source()

KEEP = 'asm volatile("" :: "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]));'
ABLATIONS = {
    "no-mma": [("for (int nt = 0; nt < NT; nt++) mma16816<BF16>(acc[j][nt], a, b[nt]);",
                KEEP + ' asm volatile("" :: "r"(b[0][0]));')],
    "no-decode": [(f"a[{i}] = decode_reg(w{i}, c{i}, L, base);", f"a[{i}] = w{i};") for i in range(4)],
    "no-scatter": [("      scatter_csl<SPW>(wst, dense, p, ptrs, nk, mt, it);\n", "\n")],
    "lb8": [("__launch_bounds__(THREADS) NAME", "__launch_bounds__(THREADS, 8) NAME")],
    "lb12": [("__launch_bounds__(THREADS) NAME", "__launch_bounds__(THREADS, 12) NAME")],
    "lb16": [("__launch_bounds__(THREADS) NAME", "__launch_bounds__(THREADS, 16) NAME")],
    "no-zero": [("      clear_strips<SPW>(dense);  // own strip", "      // own strip")],
    # what a per-warp Tiled-CSL would save: no CTA barrier between scatter and ldmatrix (timing only: races)
    "no-midsync": [("        __syncthreads();\n        if (full) compute_dense<", "        __syncwarp();\n        if (full) compute_dense<")],
}
COMBOS = {"bitmap": ["no-mma", "no-decode", "no-decode+no-mma"],
          "tiled_csl": ["no-mma", "no-scatter", "no-zero", "no-scatter+no-zero", "no-scatter+no-zero+no-mma"]}
if os.environ.get("COMBOS"):  # e.g. COMBOS="tiled_csl=no-midsync,no-zero;bitmap=no-mma,lb12"
    COMBOS = {f: c.split(",") for f, c in (part.split("=") for part in os.environ["COMBOS"].split(";"))}


# forced config, e.g. CONFIG=spw=1,stages=2
OVERRIDES = {k: int(v) for k, v in (kv.split("=") for kv in os.environ.get("CONFIG", "").split(",") if kv)}


def committed_source(rev: str) -> str:
    import subprocess
    show = lambda f: subprocess.run(["git", "show", f"{rev}:flashllm/kernels/csrc/{f}"], check=True,  # noqa: E731
                                    capture_output=True, text=True).stdout
    body = show("spmm.cu")
    for header in ("common.cuh", "wgmma.cuh"):
        body = body.replace(f'#include "{header}"', show(header))
    return body


def ablate() -> None:
    base_src = ORIG
    m, k = 27648, 9216
    w = torch.randn(m, k, device="cuda").half()
    wcopies = [w] + [w.clone() for _ in range(copies_to_defeat_l2(w.numel() * 2) - 1)]
    for s in map(float, os.environ.get("SPARSITIES", "0.5,0.9").split(",")):
        mask = torch.rand(m, k, device="cuda") >= s
        for fmt in COMBOS:
            sw = flashllm.compress(w * mask, fmt)
            copies = [sw] + [clone_weight(sw) for _ in range(copies_to_defeat_l2(sw.nbytes) - 1)]
            for n in map(int, os.environ.get("NS", "8,32,64").split(",")):
                x = torch.randn(n, k, device="cuda").half()
                dense = time_graph([lambda c=c: torch.nn.functional.linear(x, c) for c in wcopies], launches=10, replays=3)
                row = []
                for combo in ["base"] + COMBOS[fmt]:
                    src = base_src
                    if combo.startswith("git:"):  # e.g. git:HEAD - the committed kernel, for an A/B
                        src = committed_source(combo[4:])
                    elif combo.startswith("file:"):  # a whole inlined source (the device copy has no .git)
                        src = open(combo[5:]).read()
                    elif combo != "base":
                        for part in combo.split("+"):
                            for old, new in ABLATIONS[part]:
                                assert old in src, (part, old)
                                src = src.replace(old, new)
                    jit._source = lambda program="spmm.cu", src=src: src
                    jit._loaded.clear()
                    us = time_graph([lambda c=c: dispatch.spmm_kernel(x, c, **OVERRIDES) for c in copies],
                                    launches=10, replays=3)
                    row.append(f"{combo} {us:6.1f}")
                jit._source = lambda program="spmm.cu": base_src
                cfg = dispatch.choose_config(fmt, m, k, n, sw.max_block_bytes, 132, hopper=True, **OVERRIDES)
                print(f"{s:.0%} {fmt:9s} N={n:2d} cuBLAS {dense:6.1f} | " + " | ".join(row) +
                      f"  [spw={cfg.spw} st={cfg.stages} split={cfg.split} wg={cfg.wg}]", flush=True)


if __name__ == "__main__":
    what = sys.argv[1:] or ["rate", "ablate"]
    if "rate" in what:
        rate()
    if "ablate" in what:
        ablate()
