// The decode microbenchmark (`flashllm bench decode`): a format's decode alone, from blocks resident in
// shared memory into mma.sync A-fragment registers - no global memory in the timed loop, no MMA.  It is
// the gate for a new decode: the SpMM kernels spend these cycles per block on top of the copies and the
// MMAs, so a decode that does not fit the budget here (docs/kernels.md, "What bounds the decode kernels") cannot make
// the kernel fit it either.
//
// Each CTA copies the same `nb` blocks into shared memory once, then warp w decodes strip w (16 rows) of
// every block, `iters` times.  The registers are folded into one word per lane (one LOP3 per three
// registers) so the decode cannot be dropped; the `dense` design (fragments stored ready, one 32-bit load
// per register) measures that fold, the loop and the shared-memory reads a decode cannot avoid.
// CHECK (one pass) writes every fragment out instead: the launcher checks them against the
// dense weight, so a design is timed only once its decode is right.
#include "common.cuh"
#include "decode.cuh"

#define DESIGN_DENSE 0
#define DESIGN_BITMAP 1
#define DESIGN_PAIRMAP 2
#define DESIGN_LANEWISE 3
#define DESIGN_LANEWISE16 4  // the same layout, each window as two 16-bit loads (no alignment, no funnel shift)

// ---------------------------------------------------------------------------------------------
// `lanewise`, a candidate layout built to decode without POPC (the budget's quarter-rate pipe).
//   [0, 16)    uint16 header: values before strip s + 1 (as the bitmap's)
//   [16, 528)  uint32 masks[4][32]: strip s, lane l; bit 8f + 2q + e = half e of the lane's register q
//              of the m16k16 fragment f (the mma.sync A layout)
//   [528, ..)  16-bit values in (s, f, l, q, e) order: for one fragment the 32 lanes' runs follow each
//              other, so the lanes of one load read one window (as the bitmap's runs do)
// Same bytes as the bitmap.  Decode per strip: one load of the lane's mask, a SWAR popcount of its four
// bytes and one warp scan of the counts (two fragments per 16-bit field).  Per fragment: the lane's four
// in-byte offsets from two multiplies (a prefix sum in bytes); per register one funnel-shifted window of
// two 32-bit loads and a PRMT whose sign-replicate mode turns the register's two mask bits into a
// 0x0000/0xFFFF mask per half.
#define LANEWISE_VALUES_AT 528

// Bits 0, 2, 4, 6 of b (b & 0x55) -> bit 7 of bytes 0, 1, 2, 3.  The cross terms of the multiply land on
// other bits (and carry at most into bits 14, 20, 26), never on a byte's bit 7.
#define SPREAD_TO_MSB 0x02082080u
// Bits 0, 2, 4, 6 -> bit 0 of bytes 0..3 (after & 0x01010101; cross terms carry into bits 7, 13, 19).
#define SPREAD_TO_LSB 0x00041041u

struct LaneStrip {
  u32 mask;     // the lane's 32 bits for this strip
  u32 base[4];  // per fragment: where the lane's run starts, minus 2 bytes (the bitmap's trick, decode.cuh)
};

__device__ __forceinline__ LaneStrip lanewise_strip(u32 blk, int strip) {
  const int lane = threadIdx.x & 31;
  LaneStrip S;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(S.mask) : "r"(blk + 16 + ((strip * 32 + lane) << 2)));
  u32 start = 0;
  if (strip > 0) asm volatile("ld.shared.u16 %0, [%1];\n" : "=r"(start) : "r"(blk + 2 * (strip - 1)));
  // popcount of each byte (fragment), SWAR
  u32 c = S.mask - ((S.mask >> 1) & 0x55555555u);
  c = (c & 0x33333333u) + ((c >> 2) & 0x33333333u);
  c = (c + (c >> 4)) & 0x0F0F0F0Fu;
  // inclusive scan over lanes: fragments 0 and 2 in one word, 1 and 3 in the other (16-bit fields: <= 256)
  const u32 c02 = c & 0x00FF00FFu, c13 = (c >> 8) & 0x00FF00FFu;
  u32 i02 = c02, i13 = c13;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const u32 o02 = __shfl_up_sync(0xffffffffu, i02, d), o13 = __shfl_up_sync(0xffffffffu, i13, d);
    if (lane >= d) i02 += o02, i13 += o13;
  }
  const u32 t02 = __shfl_sync(0xffffffffu, i02, 31), t13 = __shfl_sync(0xffffffffu, i13, 31);
  const u32 e02 = i02 - c02, e13 = i13 - c13;  // exclusive
  const u32 t0 = t02 & 0xFFFF, t1 = t13 & 0xFFFF, t2 = t02 >> 16;
  const u32 run = blk + LANEWISE_VALUES_AT - 2 + 2 * start;
  S.base[0] = run + 2 * (e02 & 0xFFFF);
  S.base[1] = run + 2 * (t0 + (e13 & 0xFFFF));
  S.base[2] = run + 2 * (t0 + t1 + (e02 >> 16));
  S.base[3] = run + 2 * (t0 + t1 + t2 + (e13 >> 16));
  return S;
}

template <bool HALVES>
__device__ __forceinline__ void decode_lanewise_fragment(u32 (&a)[4], const LaneStrip& S, int f) {
  const u32 lo4 = (S.mask >> (8 * f)) & 0x55u, hi4 = (S.mask >> (8 * f + 1)) & 0x55u;
  const u32 X = lo4 * SPREAD_TO_MSB, Y = hi4 * SPREAD_TO_MSB;  // register q's bits at bit 7 of byte q
  const u32 LO = (lo4 * SPREAD_TO_LSB) & 0x01010101u, HI = (hi4 * SPREAD_TO_LSB) & 0x01010101u;
  // byte q: 2 * (values of registers < q + the register's low bit): the window's start (see base)
  const u32 off = (LO + HI) * 0x02020200u + 2 * LO;
#pragma unroll
  for (int q = 0; q < 4; q++) {
    const u32 addr = S.base[f] + __byte_perm(off, 0, 0x4440 + q);
    u32 w0, w1, win, keep;
    if (HALVES) {
      asm volatile("ld.shared.u16 %0, [%1];\n" : "=r"(w0) : "r"(addr));
      asm volatile("ld.shared.u16 %0, [%1+2];\n" : "=r"(w1) : "r"(addr));
      win = pack_halves(w0, w1);
    } else {
      asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(w0) : "r"(addr & ~3u));
      asm volatile("ld.shared.u32 %0, [%1+4];\n" : "=r"(w1) : "r"(addr & ~3u));
      asm("shf.r.wrap.b32 %0, %1, %2, %3;\n" : "=r"(win) : "r"(w0), "r"(w1), "r"(addr << 3));  // 0 or 16 bits
    }
    // halves 0-1 <- sign of X's byte q (the low bit), halves 2-3 <- sign of Y's byte q (the high bit)
    const u32 sel = (0x8 | q) | (0x8 | q) << 4 | (0xC | q) << 8 | (0xC | q) << 12;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(keep) : "r"(X), "r"(Y), "r"(sel));
    a[q] = win & keep;
  }
}

// ---------------------------------------------------------------------------------------------
template <int DESIGN, bool CHECK>
__global__ void __launch_bounds__(THREADS) decode_bench(const u8* __restrict__ blocks, const i64* __restrict__ offsets,
                                                        int nb, int iters, u32* __restrict__ sink,
                                                        long long* __restrict__ clocks, u32* __restrict__ frags) {
  extern __shared__ __align__(16) u8 smem[];
  const int bytes = (int)offsets[nb];
  for (int i = threadIdx.x * 16; i < bytes; i += THREADS * 16) *(uint4*)(smem + i) = *(const uint4*)(blocks + i);
  u32* offs = (u32*)(smem + bytes + 16);  // + 16: the decodes may read a few bytes past the last stream
  for (int i = threadIdx.x; i < nb; i += THREADS) offs[i] = (u32)offsets[i];
  const u32 base = smem_addr(smem), scratch = smem_addr(offs + ((nb + 31) & ~31));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const BitmapLane L = bitmap_lane();
  __syncthreads();
  long long t0 = clock64();
  u32 acc = 0;
  for (int it = 0; it < iters; it++) {
    for (int b = 0; b < nb; b++) {
      const u32 blk = base + offs[b];
      u32 a[4][4];
      if (DESIGN == DESIGN_DENSE) {
#pragma unroll
        for (int f = 0; f < 4; f++)
#pragma unroll
          for (int q = 0; q < 4; q++)
            asm volatile("ld.shared.u32 %0, [%1];\n"
                         : "=r"(a[f][q]) : "r"(blk + ((((warp * 4 + f) * 4 + q) * 32 + lane) << 2)));
      } else if (DESIGN == DESIGN_BITMAP) {
        const u32 counts = warp_scratch(scratch, 0);
        u32 sb = bitmap_base(blk, counts, warp);
        __syncwarp();
#pragma unroll
        for (int f = 0; f < 4; f++) decode_fragment(a[f], blk, counts, f, L, sb, warp);
        __syncwarp();
      } else if (DESIGN == DESIGN_PAIRMAP) {
        // the SpMM kernels scan two blocks per pass (half-warp each): here the block and the next one,
        // and the next block's decode reuses its bases
        const u32 counts = warp_scratch(scratch, b & 1);
        if (!(b & 1)) {
          pair_bases(blk, base + offs[min(b + 1, nb - 1)], counts, warp_scratch(scratch, 1), warp);
          __syncwarp();
        }
#pragma unroll
        for (int f = 0; f < 4; f++) decode_pair_fragment(a[f], blk, counts, f, warp);
        if (b & 1) __syncwarp();
      } else {
        const LaneStrip S = lanewise_strip(blk, warp);
#pragma unroll
        for (int f = 0; f < 4; f++) decode_lanewise_fragment<DESIGN == DESIGN_LANEWISE16>(a[f], S, f);
      }
      if (CHECK) {
#pragma unroll
        for (int f = 0; f < 4; f++)
#pragma unroll
          for (int q = 0; q < 4; q++)
            frags[((((i64)blockIdx.x * nb + b) * 4 + warp) * 16 + f * 4 + q) * 32 + lane] = a[f][q];
      }
#pragma unroll
      for (int f = 0; f < 4; f++) acc ^= a[f][0] ^ a[f][1] ^ a[f][2] ^ a[f][3];
    }
  }
  __syncthreads();
  long long t1 = clock64();
  sink[blockIdx.x * THREADS + threadIdx.x] = acc;
  if (threadIdx.x == 0) {
    u32 smid;
    asm volatile("mov.u32 %0, %%smid;\n" : "=r"(smid));
    clocks[3 * blockIdx.x] = t0;
    clocks[3 * blockIdx.x + 1] = t1;
    clocks[3 * blockIdx.x + 2] = smid;
  }
}
