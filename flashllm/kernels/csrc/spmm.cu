// Load-as-Sparse, Compute-as-Dense SpMM:  Y[N, M] = X[N, K] . W[M, K]^T, W compressed.
//
// Grid: x = M tiles of SPW format blocks (64*SPW rows), y = N chunks of NT*8 tokens, z = split-K.
// Each CTA streams its blocks' compressed bytes and its X tile through a STAGES-deep cp.async
// ring; warp w decodes strip w (16 rows) of each block into mma.sync A fragments and multiplies.
// The block formats differ only in how a stage becomes A fragments:
//   bitmap    - straight from the mask words and value streams into registers (no dense tile);
//   pairmap   - the same with one mask bit per register: one popcount and one 32-bit load each;
//   tiled_csl - the Flash-LLM way: scatter the words into a zeroed, swizzled dense tile in shared
//               memory, then ldmatrix it.
// The wide kernel (prefill, sm_90a; further down) decodes the bitmap formats the same way for 128-256
// tokens at once, with wgmma, TMA and a producer warpgroup.
#include "common.cuh"
#include "wgmma.cuh"

// The block formats (flashllm/formats): how a stage's compressed block becomes A fragments.
enum { FMT_BITMAP = 0, FMT_CSL = 1, FMT_PAIRMAP = 2 };

// ---------------------------------------------------------------------------------------------
// Stage loading (every block format: a block is a contiguous run of 16-byte units)

// Block offsets of the CTA's K range sit in shared memory (loaded once at the start), so issuing a
// stage never waits on a global load.  One warp issues a stage's weight blocks (warps take turns,
// stage by stage): on Hopper one thread's bulk copies, before that a warp's cp.async loop, whose
// address arithmetic measured as a third of all instructions when every thread took a share.  The X
// tile (16-byte chunks, swizzled on the way in): see issue_stage.
template <int SPW, bool CSL>
__device__ __forceinline__ void load_weights(u32 wst, u32 bar, const Params& p, const i64* ptrs, int nk, int mt,
                                             int it) {
  const int lane = threadIdx.x & 31;
#if FLASHLLM_BULK
  if (lane == 0) {
    u32 total = 0;
#pragma unroll
    for (int j = 0; j < SPW; j++)
      if (mt * SPW + j < p.MB) total += (u32)(ptrs[j * (nk + 1) + it + 1] - ptrs[j * (nk + 1) + it]);
    fence_async_shared();  // the slot's previous contents were read through the generic proxy
    mbar_arrive_expect(bar, total);
#pragma unroll
    for (int j = 0; j < SPW; j++) {
      if (mt * SPW + j >= p.MB) break;
      i64 begin = ptrs[j * (nk + 1) + it];
      u32 bytes = (u32)(ptrs[j * (nk + 1) + it + 1] - begin);
      if (bytes) bulk_copy(wst + j * p.stage_w_bytes, p.weight + begin, bytes, bar);
    }
  }
#else
#pragma unroll
  for (int j = 0; j < SPW; j++) {
    if (mt * SPW + j >= p.MB) break;
    i64 begin = ptrs[j * (nk + 1) + it];
    int chunks = (int)(ptrs[j * (nk + 1) + it + 1] - begin) >> 4;
    const u8* src = p.weight + begin;
    u32 dst = wst + j * p.stage_w_bytes;
    for (int c = lane; c < chunks; c += 32) cp_async16(dst + (c << 4), src + ((i64)c << 4), 16);
  }
#endif
}

// Issue stage `it`'s copies (the caller commits the cp.async group).  Weights: the warp in turn.  The X
// tile: that warp too while it is small; from 32 tokens on (256 16-byte copies a stage) every thread,
// or the other warps wait for the issuing one at the next barrier (measured on an H200: N = 64
// 11-14 % faster, N = 8 2-6 % slower if every thread takes a share).
template <int SPW, int NT, bool CSL>
__device__ __forceinline__ void issue_stage(u32 wst, u32 xst, u32 bar, const Params& p, const i64* ptrs, int nk,
                                            int mt, int n0, int it, int kb) {
  const bool turn = (threadIdx.x >> 5) == (it & 3);
  if (turn) load_weights<SPW, CSL>(wst, bar, p, ptrs, nk, mt, it);
  if (NT >= 4) load_x_tile<NT, THREADS>(xst, p, n0, kb, threadIdx.x);
  else if (turn) load_x_tile<NT, 32>(xst, p, n0, kb, threadIdx.x & 31);
}

// Stage `it` of the ring has landed: the X tile's cp.async groups (all but the newest STAGES - 2 are
// done) and, on Hopper, the weight bytes counted on the slot's mbarrier (phase = use count of the slot).
template <int PENDING, int STAGES>
__device__ __forceinline__ void wait_stage(u32 bars, int it) {
  cp_async_wait<PENDING>();
#if FLASHLLM_BULK
  mbar_wait(bars + 8 * (it % STAGES), (it / STAGES) & 1);
#endif
}

template <int STAGES>
__device__ __forceinline__ void init_stage_barriers(u32 bars) {
#if FLASHLLM_BULK
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; s++) mbar_init(bars + 8 * s, 1);
    mbar_fence_init();
  }
#endif
}

// Byte offsets (relative to p.weight) of blocks kb0 .. kb0+nk of each of the CTA's SPW row blocks.
// Rows past M read the last row block again (the wide kernel decodes them; no kernel stores them).
template <int SPW, bool CSL, int STRIDE = THREADS>
__device__ __forceinline__ void load_block_ptrs(i64* ptrs, const Params& p, int mt, int kb0, int nk) {
  for (int i = threadIdx.x; i < SPW * (nk + 1); i += STRIDE) {
    int j = i / (nk + 1), kk = i % (nk + 1);
    int mb = min(mt * SPW + j, p.MB - 1);
    ptrs[i] = p.block_ptr[(i64)mb * p.KB + kb0 + kk] * (CSL ? 4 : 1);
  }
}

// ---------------------------------------------------------------------------------------------
// Bitmap decode: lane (h = half-warp, hl = lane in it) owns bits 2hl, 2hl+1 of each mask word of
// its half.  A register's values are its half-0 run, then its half-1 run (formats/bitmap.py), so the
// 32 lanes of one load read one contiguous window: no bank conflicts between the half-warps, which
// cost 8-15 % at 50 % sparsity when each half had a stream of its own (H200, ablate.py one-window).
// A lane's first value sits after the popcount of the bits below; `base` points 2 bytes before its
// half's run so that one popcount (of the bits up to and including the lane's first bit) addresses
// both cases:
//   first bit set:   value pair starts at the lane's first value   (lo = v[c], hi = v[c+1])
//   first bit clear: only the second can be set and it is v[c]     (lo = junk, hi = v[c])
// Each half is loaded only when the lane's bit for it is set (a predicated load of a zeroed register),
// so junk never reaches the fragment.
//
// The decode is bound by the integer pipes, not by memory (measured on an H200, benchmarks/ablate.py):
// POPC retires at a quarter of LOP3's rate (0.48 vs 1.7 warp-instructions per clock per SM).  So
// per register it does one POPC (the lane's prefix), three ALU ops and fused multiply-adds (which
// issue to the FMA pipe) for the rest; the advance of `base` per register is the same for all 16
// lanes of a half and is counted once per strip and stage (strip_popcounts).
struct BitmapLane {
  u32 below_incl;      // bits 0 .. 2hl (inclusive)
  u32 bit_lo, bit_hi;  // the lane's two bits: 2hl, 2hl + 1
};

__device__ __forceinline__ BitmapLane bitmap_lane() {
  int hl = threadIdx.x & 15;
  BitmapLane L;
  L.below_incl = (2u << (2 * hl)) - 1u;
  L.bit_lo = 1u << (2 * hl);
  L.bit_hi = 2u << (2 * hl);
  return L;
}

// lo | hi << 16 as a multiply-add (FMA pipe): lo < 2^16
__device__ __forceinline__ u32 pack_halves(u32 lo, u32 hi) {
  u32 r;
  asm("mad.lo.u32 %0, %1, 65536, %2;\n" : "=r"(r) : "r"(hi), "r"(lo));
  return r;
}

// One shared load of TYPE (u16 or u32) into a zeroed register, only if (word & bit).
#define LOAD_IF(TYPE)                                                     \
  "{\n.reg .pred p;\n.reg .b32 t;\n"                                       \
  "and.b32 t, %1, %2;\nsetp.ne.u32 p, t, 0;\nmov.b32 %0, 0;\n"              \
  "@p ld.shared." TYPE " %0, [%3];\n}\n"
__device__ __forceinline__ u32 load_half_if(u32 word, u32 bit, u32 addr) {
  u32 v;
  asm volatile(LOAD_IF("u16") : "=r"(v) : "r"(word), "r"(bit), "r"(addr));
  return v;
}

// `advance`: bytes from this register's run of the lane's half to the next register's (strip_popcounts).
__device__ __forceinline__ u32 decode_reg(u32 word, u32 advance, const BitmapLane& L, u32& base) {
  u32 addr = base + 2 * __popc(word & L.below_incl);
  u32 lo = load_half_if(word, L.bit_lo, addr);
  u32 hi = load_half_if(word, L.bit_hi, addr + 2);
  base += advance;
  return pack_halves(lo, hi);
}

// Strip `strip` (16 rows) of a block is decoded by one warp: warp w in the SpMM kernels, w % 4 in the wide one.
// Where the warp's strip of the block at `blk` keeps its values, minus 2 bytes (see above): after the
// previous strips', from the block's 16-byte header of u16 running counts.  Half 1 adds the first
// register's half-0 run (strip_popcounts returns it).
__device__ __forceinline__ u32 stream_base(u32 blk, int strip) {
  u32 start = 0;
  if (strip > 0) asm volatile("ld.shared.u16 %0, [%1];\n" : "=r"(start) : "r"(blk + 2 * (strip - 1)));
  return blk + 528 + 2 * (start & 0xFFFF) - 2;
}

// For the warp's strip of the block at `blk`: lane i = (f*2 + h)*4 + q (the mask words' order) stores
// into the warp's 128-byte scratch (at 4i) how far half h's `base` moves from register (f, q) to the
// next one - half 0 past both halves' runs, half 1 past its own run and the next register's half-0 run
// (bytes).  Returns the first register's half-0 run (bytes): where half 1 starts.  The caller
// __syncwarp()s.
__device__ __forceinline__ u32 strip_popcounts(u32 blk, u32 scratch, int strip) {
  const int lane = threadIdx.x & 31, f = lane >> 3, q = lane & 3;
  u32 w;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(w) : "r"(blk + 16 + ((strip * 32 + lane) << 2)));
  const u32 run = 2 * __popc(w);
  const u32 other_half = __shfl_xor_sync(0xffffffffu, run, 4);
  const int next = q < 3 ? f * 8 + q + 1 : ((f + 1) * 8) & 31;  // the next register's half-0 word
  const u32 next_half0 = __shfl_sync(0xffffffffu, run, next);
  const u32 advance = (lane & 4) ? run + next_half0 : run + other_half;
  asm volatile("st.shared.u32 [%0], %1;\n" :: "r"(scratch + (lane << 2)), "r"(advance));
  return __shfl_sync(0xffffffffu, run, 0);
}

// The bitmap's per-lane stream pointer for a block: stream_base, moved past the first half-0 run in half 1.
__device__ __forceinline__ u32 bitmap_base(u32 blk, u32 scratch, int strip) {
  const u32 first_run = strip_popcounts(blk, scratch, strip);
  return stream_base(blk, strip) + (((threadIdx.x >> 4) & 1) ? first_run : 0u);
}

// Per-warp popcount scratch of the bitmap kernels: 128 bytes per warp and block of the CTA.
#define SCRATCH_BYTES(SPW) ((SPW) * (THREADS / 32) * 128)
__device__ __forceinline__ u32 warp_scratch(u32 scratch, int j) {
  return scratch + (j * (THREADS / 32) + (threadIdx.x >> 5)) * 128;
}

// The A fragment (4 registers) of this warp's strip for the 16-wide K slice f of the block at `blk`:
// the half-warp's four mask words and their advances (strip_popcounts), then one decode per register,
// moving `base` from run to run.
__device__ __forceinline__ void decode_fragment(u32 (&a)[4], u32 blk, u32 counts, int f, const BitmapLane& L,
                                                u32& base, int strip) {
  const int h = (threadIdx.x >> 4) & 1;
  u32 w0, w1, w2, w3, c0, c1, c2, c3;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(w0), "=r"(w1), "=r"(w2), "=r"(w3) : "r"(blk + 16 + (((strip * 4 + f) * 2 + h) << 4)));
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(c0), "=r"(c1), "=r"(c2), "=r"(c3) : "r"(counts + ((f * 2 + h) << 4)));
  a[0] = decode_reg(w0, c0, L, base);
  a[1] = decode_reg(w1, c1, L, base);
  a[2] = decode_reg(w2, c2, L, base);
  a[3] = decode_reg(w3, c3, L, base);
}

// ---------------------------------------------------------------------------------------------
// Pair bitmap (formats/pairmap.py): lane l owns bit l of each of its strip's 16 mask words (fragment
// f, register q); a set bit means the lane's whole register is the next 32-bit word of the strip's
// stream.  So a register is one popcount and one predicated 32-bit load - no second value, no pack
// (the bitmap decode's costliest part) - and the lanes read consecutive words: no bank conflicts.
#define PAIR_WORDS_AT 272

// Where each of the warp's 16 registers' words start (bytes, shared space) in a block: the strip's
// stream start plus an exclusive scan of its 16 mask popcounts, into the warp's scratch (entry f*4 + q).
// Half-warp h scans block h (blk0 / blk1, scratch0 / scratch1): one pass serves two blocks (pass the
// same block twice for one).  The caller __syncwarp()s.
__device__ __forceinline__ void pair_bases(u32 blk0, u32 blk1, u32 scratch0, u32 scratch1, int strip) {
  const int lane = threadIdx.x & 31, i = lane & 15;
  const u32 blk = lane < 16 ? blk0 : blk1, scratch = lane < 16 ? scratch0 : scratch1;
  u32 start = 0, w;
  if (strip > 0) asm volatile("ld.shared.u16 %0, [%1];\n" : "=r"(start) : "r"(blk + 2 * (strip - 1)));
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(w) : "r"(blk + 16 + ((strip * 16 + i) << 2)));
  const u32 count = __popc(w);
  u32 incl = count;
#pragma unroll
  for (int d = 1; d < 16; d <<= 1) {
    u32 o = __shfl_up_sync(0xffffffffu, incl, d, 16);
    if (i >= d) incl += o;
  }
  asm volatile("st.shared.u32 [%0], %1;\n"
               :: "r"(scratch + (i << 2)), "r"(blk + PAIR_WORDS_AT + 4 * ((start & 0xFFFF) + incl - count)));
}

__device__ __forceinline__ u32 load_word_if(u32 word, u32 bit, u32 addr) {
  u32 v;
  asm volatile(LOAD_IF("u32") : "=r"(v) : "r"(word), "r"(bit), "r"(addr));
  return v;
}

__device__ __forceinline__ void decode_pair_fragment(u32 (&a)[4], u32 blk, u32 bases, int f, int strip) {
  const int lane = threadIdx.x & 31;
  const u32 bit = 1u << lane, below = bit - 1u;
  u32 w[4], b[4];
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "r"(blk + 16 + ((strip * 4 + f) << 4)));
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(bases + (f << 4)));
#pragma unroll
  for (int q = 0; q < 4; q++) a[q] = load_word_if(w[q], bit, b[q] + 4 * __popc(w[q] & below));
}

// ---------------------------------------------------------------------------------------------

template <int SPW, int NT, bool BF16, bool FULL, bool PAIRS>
__device__ __forceinline__ void compute_bitmap(u32 stage, u32 xs, u32 scratch, const Params& p, int mt,
                                               float (&acc)[SPW][NT][4], const BitmapLane& L) {
  u32 base[SPW];
#pragma unroll
  for (int j = 0; j < SPW; j++) {
    if (PAIRS) {
      if (j % 2 == 0) {
        const int j1 = j + 1 < SPW ? j + 1 : j;
        pair_bases(stage + j * p.stage_w_bytes, stage + j1 * p.stage_w_bytes, warp_scratch(scratch, j),
                   warp_scratch(scratch, j1), threadIdx.x >> 5);
      }
    } else {
      base[j] = bitmap_base(stage + j * p.stage_w_bytes, warp_scratch(scratch, j), threadIdx.x >> 5);
    }
  }
  __syncwarp();
#pragma unroll
  for (int f = 0; f < 4; f++) {
    u32 b[NT][2];
    load_b_frags<NT>(b, xs, f);
#pragma unroll
    for (int j = 0; j < SPW; j++) {
      if (!FULL && mt * SPW + j >= p.MB) break;  // FULL: no branch, loads can be hoisted
      u32 a[4];
      if (PAIRS) decode_pair_fragment(a, stage + j * p.stage_w_bytes, warp_scratch(scratch, j), f, threadIdx.x >> 5);
      else decode_fragment(a, stage + j * p.stage_w_bytes, warp_scratch(scratch, j), f, L, base[j], threadIdx.x >> 5);
#pragma unroll
      for (int nt = 0; nt < NT; nt++) mma16816<BF16>(acc[j][nt], a, b[nt]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tiled-CSL: scatter each word's value to its (pre-swizzled) location in a dense 64x64 tile.
// The encoder dealt the words so that the 32 lanes of one 16-bit store usually hit 32 banks.

// One block's `vectors` 16-byte units of words (value | tile offset << 16) at `words`, into `tile`.
__device__ __forceinline__ void scatter_words(u32 words, int vectors, u32 tile) {
  for (int v = threadIdx.x; v < vectors; v += THREADS) {
    u32 w[4];
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "r"(words + (v << 4)));
#pragma unroll
    for (int i = 0; i < 4; i++)
      asm volatile("st.shared.u16 [%0], %1;\n" :: "r"(tile + ((w[i] >> 16) << 1)), "h"((u16)(w[i] & 0xFFFF)));
  }
}

template <int SPW>
__device__ __forceinline__ void scatter_csl(u32 stage, u32 dense, const Params& p, const i64* ptrs, int nk, int mt,
                                            int it) {
#pragma unroll
  for (int j = 0; j < SPW; j++) {
    if (mt * SPW + j >= p.MB) break;
    int vectors = (int)(ptrs[j * (nk + 1) + it + 1] - ptrs[j * (nk + 1) + it]) >> 4;
    scatter_words(stage + j * p.stage_w_bytes, vectors, dense + j * BLOCK * BLOCK * 2);
  }
}

// Zero this warp's strip of every dense tile again, ready for the next scatter.
template <int SPW>
__device__ __forceinline__ void clear_strips(u32 dense) {
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < SPW; j++)
#pragma unroll
    for (int i = 0; i < 4; i++)  // 16 rows x 128 bytes = 128 x 16-byte stores per warp
      asm volatile("st.shared.v4.u32 [%0], {%1,%1,%1,%1};\n"
                   :: "r"(dense + j * BLOCK * BLOCK * 2 + warp * 16 * 128 + (i * 32 + lane) * 16), "r"(0));
}

template <int SPW, int NT, bool BF16, bool FULL>
__device__ __forceinline__ void compute_dense(u32 xs, u32 dense, const Params& p, int mt, float (&acc)[SPW][NT][4]) {
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int f = 0; f < 4; f++) {
    u32 b[NT][2];
    load_b_frags<NT>(b, xs, f);
#pragma unroll
    for (int j = 0; j < SPW; j++) {
      if (!FULL && mt * SPW + j >= p.MB) break;  // FULL: no branch, loads can be hoisted
      int row = warp * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
      int ch = 2 * f + (lane >> 4);
      u32 a[4];
      ldmatrix_x4(a, dense + j * BLOCK * BLOCK * 2 + row * 128 + ((ch ^ (row & 7)) << 4));
#pragma unroll
      for (int nt = 0; nt < NT; nt++) mma16816<BF16>(acc[j][nt], a, b[nt]);
    }
  }
}

// Tiled-CSL with wgmma: A (the dense tile) and B (X) both straight from swizzled shared memory.
template <int SPW, int NT, bool BF16, bool FULL>
__device__ __forceinline__ void compute_dense_wg(u32 xs, u32 dense, const Params& p, int mt, float (&acc)[SPW][NT][4]) {
  const unsigned long long xdesc = sw128_desc(xs);
  wgmma_fence();
#pragma unroll
  for (int f = 0; f < 4; f++) {
#pragma unroll
    for (int j = 0; j < SPW; j++) {
      if (!FULL && mt * SPW + j >= p.MB) break;
      wgmma_ss<NT, BF16>(acc[j], sw128_desc(dense + j * BLOCK * BLOCK * 2) + 2 * f, xdesc + 2 * f);
    }
  }
  wgmma_commit();
  wgmma_wait<0>();
}

// ---------------------------------------------------------------------------------------------

// Issue stage s's copies (one warp, in turn) and commit a group.  Stage nk, the pairing stage of an
// odd nk, gets zeros: a zero header and mask decode to zero weights, and X past K is zero-filled.
template <int NT, int STAGES>
__device__ __forceinline__ void wg_load(const Params& p, u32 ring, u32 stage_bytes, u32 x_bytes, u32 bars,
                                        const i64* ptrs, int nk, int mt, int n0, int kb0, int s) {
  if (s <= nk && (threadIdx.x >> 5) == (s & 3)) {
    u32 st = ring + (s % STAGES) * stage_bytes, bar = bars + 8 * (s % STAGES);
    if (s < nk) {
      load_weights<1, false>(st + x_bytes, bar, p, ptrs, nk, mt, s);
      load_x_tile<NT, 32>(st, p, n0, kb0 + s, threadIdx.x & 31);
    } else {
      for (int c = threadIdx.x & 31; c < 528 / 16; c += 32) cp_async16(st + x_bytes + (c << 4), p.weight, 0);
      load_x_tile<NT, 32>(st, p, n0, (p.K + BLOCK - 1) / BLOCK, threadIdx.x & 31);
#if FLASHLLM_BULK
      if ((threadIdx.x & 31) == 0) mbar_arrive_expect(bar, 0);  // nothing in flight: completes the phase
#endif
    }
  }
  cp_async_commit();
}

// Bitmap with wgmma, pipelined across stages: stage it's wgmmas run while stage it+1 is decoded.
// Their A registers alternate between two sets (the loop is unrolled by two so the set is known at
// compile time), and a stage waits only for the previous stage's wgmmas (wait_group 1).  A ring slot
// is refilled only once the wgmmas that read its X tile are done, i.e. two stages later: loads run
// STAGES - 2 stages ahead.  One 64-row block per CTA.
template <int NT, int STAGES, bool BF16, int SET>
__device__ __forceinline__ void bitmap_wg_stage(const Params& p, u32 ring, u32 stage_bytes, u32 x_bytes, u32 bars, u32 scratch,
                                                const i64* ptrs, int nk, int mt, int n0, int kb0, int it,
                                                float (&acc)[1][NT][4], u32 (&a)[2][4][4], const BitmapLane& L) {
  constexpr int AHEAD = STAGES - 2;
  wait_stage<AHEAD - 1, STAGES>(bars, it);
  fence_proxy_async();  // the X tile landed through cp.async; the tensor cores read it directly
  __syncthreads();
  wg_load<NT, STAGES>(p, ring, stage_bytes, x_bytes, bars, ptrs, nk, mt, n0, kb0, it + AHEAD);
  const u32 stage = ring + (it % STAGES) * stage_bytes, blk = stage + x_bytes;
  const u32 counts = warp_scratch(scratch, 0);
  u32 base = bitmap_base(blk, counts, threadIdx.x >> 5);
  __syncwarp();
  const unsigned long long xdesc = sw128_desc(stage);
#pragma unroll
  for (int f = 0; f < 4; f++) decode_fragment(a[SET][f], blk, counts, f, L, base, threadIdx.x >> 5);
  // All four fragments first: a register written between a stage's wgmmas would serialize them.
  wgmma_fence();
#pragma unroll
  for (int f = 0; f < 4; f++) wgmma_rs<NT, BF16>(acc[0], a[SET][f], xdesc + 2 * f);
  wgmma_commit();
  wgmma_wait<1>();  // the previous stage's wgmmas are done: its A registers and ring slot are free
}

template <int NT, int STAGES, bool BF16>
__device__ __forceinline__ void bitmap_wg_body(const Params& p) {
  extern __shared__ __align__(16) u8 smem[];
  const int mt = blockIdx.x, n0 = blockIdx.y * NT * 8;
  const int kb0 = blockIdx.z * p.kb_per_split;
  const int nk = min(p.KB - kb0, p.kb_per_split);
  const u32 x_bytes = NT * 8 * X_ROW_BYTES;
  const u32 stage_bytes = (p.stage_w_bytes + x_bytes + 1023) & ~1023u;  // [X tile | block], 1 KB aligned
  const u32 ring = (smem_addr(smem) + 1023) & ~1023u;
  const u32 scratch = ring + STAGES * stage_bytes;   // strip popcounts
  const u32 bars = scratch + SCRATCH_BYTES(1);      // one mbarrier per ring slot
  i64* ptrs = (i64*)(smem + (bars + STAGES * 8 - smem_addr(smem)));
  load_block_ptrs<1, false>(ptrs, p, mt, kb0, nk);
  init_stage_barriers<STAGES>(bars);
  __syncthreads();
  float acc[1][NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; nt++)
#pragma unroll
    for (int i = 0; i < 4; i++) acc[0][nt][i] = 0.f;
  const BitmapLane L = bitmap_lane();
#pragma unroll
  for (int s = 0; s < STAGES - 2; s++) wg_load<NT, STAGES>(p, ring, stage_bytes, x_bytes, bars, ptrs, nk, mt, n0, kb0, s);
  u32 a[2][4][4];
  // Stages go in pairs, even when nk is odd: a conditional stage would make the compiler copy the
  // accumulators where the paths merge, which serializes the wgmmas (ptxas C7513/C7515).  The extra
  // stage is all zeros (see wg_load) and adds nothing.
  for (int it = 0; it < nk; it += 2) {
    bitmap_wg_stage<NT, STAGES, BF16, 0>(p, ring, stage_bytes, x_bytes, bars, scratch, ptrs, nk, mt, n0, kb0, it, acc, a, L);
    bitmap_wg_stage<NT, STAGES, BF16, 1>(p, ring, stage_bytes, x_bytes, bars, scratch, ptrs, nk, mt, n0, kb0, it + 1, acc, a, L);
  }
  wgmma_wait<0>();
  cp_async_wait<0>();
  store_tile<NT, BF16>(p, acc[0], mt * BLOCK + (threadIdx.x >> 5) * 16, n0);
}

// ---------------------------------------------------------------------------------------------
// The wide kernel (prefill and wide decode: 17 to ~1000 tokens; sm_90a, bitmap and pair bitmap).  CW
// consumer warpgroups (2; 3 at 64 tokens; 3 or 4 at 32) multiply CW 64-row blocks by NT*8 tokens (32-256):
// warpgroup g decodes block g into A registers - the SpMM kernels' decode, warp w taking strip w % 4 - and
// issues wgmma m64nNk16 against the stage's X tile, which the tensor cores read straight from shared
// memory.  The groups share that tile, so X crosses L2 once per CW * 64 rows, and the decode is paid once
// for all NT*8 tokens instead of once per 64 (the SpMM kernels' grid.y chunks); decompress-then-cuBLAS
// also moves 2 + 2 bytes per weight through HBM.
// A last warpgroup is the producer: X tiles by TMA (a tensor map of X whose box is the tile and whose
// 128-byte swizzle is our layout; zeros past N and K), weight blocks by bulk copy, into two rings with
// full / empty mbarriers.  So no CTA-wide barrier paces the stages and each warpgroup runs on its own.
// Measured on an H100 (12288x12288, 50 %, benchmarks/wide_ablate.py): every thread copying its share
// of X cost ~80 instructions per warp and stage; and a CTA barrier per stage, with the copies issued
// by the consumers, left the stage loop latency-bound (decode, copies and wgmma added up, 0.58-0.75x).
// Per stage, like bitmap_wg_body: two A register sets, wait_group 1.  The producer warpgroup's one working
// thread hands its registers to the consumers.
#define WIDE_CONSUMERS(CW) ((CW) * 128)
#define WIDE_THREADS(CW) ((CW) * 128 + 128)
#if FLASHLLM_BULK  // Hopper only: bulk copies, TMA and wgmma

struct __align__(64) TmaMap {
  unsigned long long opaque[16];  // a CUtensorMap, encoded on the host for each launch (X moves)
};

__device__ __forceinline__ void tma_load_2d(u32 dst, const TmaMap* map, int c0, int c1, u32 bar) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
               :: "r"(dst), "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(bar) : "memory");
}

// A ring position: slot and the parity of the slot's current use (no runtime division by the depth).
struct RingPos {
  int slot;
  u32 phase;
  __device__ __forceinline__ void next(int depth) {
    if (++slot == depth) {
      slot = 0;
      phase ^= 1u;
    }
  }
  __device__ __forceinline__ int prev(int depth) const { return slot == 0 ? depth - 1 : slot - 1; }
};

// The shared memory of the wide kernel: [X ring (1 KB aligned slots) | weight ring | per-warp scratch |
// mbarriers: X full, X empty, weights full, weights empty | the CW blocks' offsets].
template <int NT, int XSTAGES, int CW>
struct WideSmem {
  static constexpr u32 X_BYTES = NT * 8 * X_ROW_BYTES;
  u32 xring, wring, scratch, xfull, xempty, wfull, wempty;
  __device__ __forceinline__ WideSmem(u32 base, const Params& p) {
    xring = (base + 1023) & ~1023u;
    wring = xring + XSTAGES * X_BYTES;
    scratch = wring + p.w_stages * CW * p.stage_w_bytes;
    xfull = scratch + (WIDE_CONSUMERS(CW) / 32) * 128;
    xempty = xfull + 8 * XSTAGES;
    wfull = xempty + 8 * XSTAGES;
    wempty = wfull + 8 * p.w_stages;
  }
  __device__ __forceinline__ u32 end(const Params& p) const { return wempty + 8 * p.w_stages; }
};

// The bytes a block needs before its values: the header and masks, which alone decide what is read.
template <int FMT>
constexpr int block_head_bytes() { return FMT == FMT_PAIRMAP ? PAIR_WORDS_AT : 528; }

// The producer (the first thread of the last warpgroup): stages 0 .. nk - 1, and nk when nk is odd (the consumers go in pairs):
// its X tile lies past K (TMA zero-fills it) and its blocks are zero headers and masks (zero weights),
// stored here directly.  A slot is refilled once every consumer warp released it.
// The zeros cover the format's own header and masks and no more: a slot holds CW blocks of stage_w_bytes,
// which for a near-empty pair bitmap (272-byte blocks) is less than the bitmap's 528, and writing 528 there
// ran into the next block, the next ring slot and past the ring - a race that changed results run to run.
template <int FMT, int NT, int XSTAGES, int CW>
__device__ __forceinline__ void wide_produce(const Params& p, const TmaMap* xmap, const WideSmem<NT, XSTAGES, CW>& S,
                                             const i64* ptrs, int nk, int kb0, int n0, RingPos& x, RingPos& w) {
  const int last = nk + (nk & 1);
  for (int s = 0; s < last; s++) {
    mbar_wait(S.xempty + 8 * x.slot, x.phase ^ 1u);  // a fresh barrier's "previous phase" counts as done
    mbar_arrive_expect(S.xfull + 8 * x.slot, S.X_BYTES);  // the whole box counts, zero-filled parts too
    tma_load_2d(S.xring + x.slot * S.X_BYTES, xmap, (s < nk ? kb0 + s : p.KB) * BLOCK, n0, S.xfull + 8 * x.slot);
    x.next(XSTAGES);
    mbar_wait(S.wempty + 8 * w.slot, w.phase ^ 1u);
    const u32 st = S.wring + w.slot * CW * p.stage_w_bytes, bar = S.wfull + 8 * w.slot;
    if (s < nk) {
      u32 b[CW], total = 0;  // block j's offsets start at ptrs[j * (nk + 1)]
#pragma unroll
      for (int j = 0; j < CW; j++) total += b[j] = (u32)(ptrs[j * (nk + 1) + s + 1] - ptrs[j * (nk + 1) + s]);
      mbar_arrive_expect(bar, total);
#pragma unroll
      for (int j = 0; j < CW; j++)
        if (b[j]) bulk_copy(st + j * p.stage_w_bytes, p.weight + ptrs[j * (nk + 1) + s], b[j], bar);
    } else {
      constexpr int UNITS = block_head_bytes<FMT>() / 16;  // 16-byte stores per block
      for (int c = 0; c < CW * UNITS; c++)
        asm volatile("st.shared.v4.u32 [%0], {%1,%1,%1,%1};\n"
                     :: "r"(st + (c / UNITS) * p.stage_w_bytes + ((c % UNITS) << 4)), "r"(0));
      mbar_arrive_expect(bar, 0);  // releases the stores above to the waiting consumers
    }
    w.next(p.w_stages);
  }
}

// `after`: a stage of this segment ran before, so the previous X slot is this stage's to release.
template <int FMT, int NT, int XSTAGES, bool BF16, int SET, int CW>
__device__ __forceinline__ void wide_stage(const Params& p, const WideSmem<NT, XSTAGES, CW>& S, u32 scratch,
                                           RingPos& x, RingPos& w, float (&acc)[NT][4], u32 (&a)[2][4][4],
                                           const BitmapLane& L, bool after) {
  const bool lead = (threadIdx.x & 31) == 0;
  mbar_wait(S.xfull + 8 * x.slot, x.phase);
  mbar_wait(S.wfull + 8 * w.slot, w.phase);
  const u32 blk = S.wring + w.slot * CW * p.stage_w_bytes + (threadIdx.x >> 7) * p.stage_w_bytes;  // group g: block g
  const int strip = (threadIdx.x >> 5) & 3;
  if (FMT == FMT_PAIRMAP) {
    pair_bases(blk, blk, scratch, scratch, strip);
    __syncwarp();
#pragma unroll
    for (int f = 0; f < 4; f++) decode_pair_fragment(a[SET][f], blk, scratch, f, strip);
  } else {
    u32 base = bitmap_base(blk, scratch, strip);
    __syncwarp();
#pragma unroll
    for (int f = 0; f < 4; f++) decode_fragment(a[SET][f], blk, scratch, f, L, base, strip);
  }
  __syncwarp();
  if (lead) mbar_arrive(S.wempty + 8 * w.slot);  // this warp is done reading the blocks
  w.next(p.w_stages);
  const unsigned long long xdesc = sw128_desc(S.xring + x.slot * S.X_BYTES);
  wgmma_fence();  // all four fragments first: a register written between a stage's wgmmas serializes them
#pragma unroll
  for (int f = 0; f < 4; f++) wgmma_rs<NT, BF16>(acc, a[SET][f], xdesc + 2 * f);
  wgmma_commit();
  wgmma_wait<1>();  // the previous stage's wgmmas are done: its A registers and X slot are free
  if (after && lead) mbar_arrive(S.xempty + 8 * x.prev(XSTAGES));
  x.next(XSTAGES);
}

// Stream-K: the grid's G CTAs share the I = tiles x KB (tile, K block) iterations, tile-major, CTA c taking
// [c I / G, (c + 1) I / G).  A 12288-row weight at 256 tokens has 96 tiles of 128 x 256 for 132 SMs: one
// CTA per tile left 36 SMs idle, and split-K's waves of fp32 partials cost more than they won back.  So a
// CTA's range crosses tiles in segments; a segment covering its whole tile stores it, the others park
// fp32 partials and the last of a tile's CTAs to arrive sums them all.  G = tiles x s is split-K by s.
struct WideWork {
  int mtiles;
  i64 iters;
  __device__ __forceinline__ WideWork(const Params& p, int nt8, int cw)
      : mtiles((p.MB + cw - 1) / cw), iters((i64)((p.MB + cw - 1) / cw) * ((p.N + nt8 - 1) / nt8) * p.KB) {}
  __device__ __forceinline__ i64 start(int c) const { return (i64)c * iters / gridDim.x; }
  __device__ __forceinline__ int cta_of(i64 it) const { return (int)(((it + 1) * gridDim.x - 1) / iters); }
};

// The segment of a range [.., end) that starts at iteration `it`: its tile, first K block and length.
struct Segment {
  int tile, k0, nk;
  __device__ __forceinline__ Segment(const Params& p, i64 it, i64 end)
      : tile((int)(it / p.KB)), k0((int)(it - (i64)tile * p.KB)), nk((int)min((i64)(p.KB - k0), end - it)) {}
};

// A segment's fp32 partial goes to slot 0 (the CTA's first segment) or 1 (its last) of the CTA's two, in
// fragment order (thread-major: coalesced, and any CTA reads it back into the same registers), n8 tiles
// past N left out.  The arrival counter (zeroed per launch) picks the last; it sums the tile's segments in
// CTA order whoever arrives last, so the output is bitwise reproducible.  The tile's head (k = 0, which
// ends its CTA's range) usually comes last: it looks at the counter first and, if every other segment is
// in, skips parking its own (the fix-up sat on every CTA's critical path: 5-11 us at 7168 rows).
// Returns whether this CTA stores the tile.
template <int NT, int CW>
__device__ __forceinline__ bool wide_fixup(const Params& p, const WideWork& W, float (&acc)[NT][4], int tile,
                                           i64 seg_begin, int n0, u32 flag) {
  constexpr int REGS = NT * 4;
  const int c = blockIdx.x, tid = threadIdx.x;
  const i64 t0 = (i64)tile * p.KB;
  const int first = W.cta_of(t0), last = W.cta_of(t0 + p.KB - 1);
  // This thread's first value in slot `slot` of CTA `cta`
  auto parked = [&](int cta, int slot) { return p.partial + ((i64)cta * 2 + slot) * REGS * WIDE_CONSUMERS(CW) + tid; };
  u32 arrived;
  // Whether all the other segments are in: the counter (after adding `add`) as thread 0 sees it, for all.
  // The first barrier keeps thread 0 from rewriting the flag before every warp has read its last value,
  // and orders this CTA's parked partial (written and fenced by every thread) before the count.
  auto others_in = [&](int add) {
    asm volatile("bar.sync 1, %0;\n" :: "n"(WIDE_CONSUMERS(CW)) : "memory");  // consumers only: the producer may be gone
    if (tid == 0) asm volatile("st.shared.u32 [%0], %1;\n" :: "r"(flag), "r"(atomicAdd(p.counters + tile, add)) : "memory");
    asm volatile("bar.sync 1, %0;\n" :: "n"(WIDE_CONSUMERS(CW)) : "memory");
    asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(arrived) : "r"(flag) : "memory");
    return (int)arrived == last - first;
  };
  const bool head = seg_begin == t0;
  if (!(head && others_in(0))) {
    float* mine = parked(c, seg_begin == W.start(c) ? 0 : 1);
#pragma unroll
    for (int j = 0; j < NT; j++)
      if (n0 + j * 8 < p.N)
#pragma unroll
        for (int i = 0; i < 4; i++) mine[(j * 4 + i) * WIDE_CONSUMERS(CW)] = acc[j][i];
    __threadfence();
    if (!others_in(1)) return false;
  }
  __threadfence();
  if (head) {  // acc is the first term already: add the others in CTA order, a whole partial per round trip
    for (int cc = first + 1; cc <= last; cc++) {
      const float* src = parked(cc, 0);  // slot 0: cc starts here
#pragma unroll
      for (int j = 0; j < NT; j++) {
        if (j % 16 == 0) asm volatile("" ::: "memory");  // 64 loads in flight at most: no spills at NT = 32
        if (n0 + j * 8 < p.N)
#pragma unroll
          for (int i = 0; i < 4; i++) acc[j][i] += __ldcg(src + (j * 4 + i) * WIDE_CONSUMERS(CW));
      }
    }
    return true;
  }
  // Else the same sums, the own terms in their place: four n8 tiles (16 values) at a time.
#pragma unroll
  for (int q = 0; q < NT; q += 4) {
    float sum[4][4];
    for (int cc = first; cc <= last; cc++) {
      const float* src = parked(cc, W.start(cc) >= t0 ? 0 : 1);
      float v[4][4];
#pragma unroll
      for (int j = 0; j < 4; j++)
#pragma unroll
        for (int i = 0; i < 4; i++)
          v[j][i] = cc == c || n0 + (q + j) * 8 >= p.N ? acc[q + j][i] : __ldcg(src + ((q + j) * 4 + i) * WIDE_CONSUMERS(CW));
#pragma unroll
      for (int j = 0; j < 4; j++)
#pragma unroll
        for (int i = 0; i < 4; i++) sum[j][i] = cc == first ? v[j][i] : sum[j][i] + v[j][i];
    }
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) acc[q + j][i] = sum[j][i];
  }
  return true;
}

// The compiler sees a wgmma's accumulators as written when the asm statement issues; the tensor cores write
// them until wait_group.  An empty asm that "reads and writes" each one pins the reads after the wait (else
// the fix-up stored the last n8 tiles of a segment before the final wgmmas had written them).
template <int NT>
__device__ __forceinline__ void fence_accumulators(float (&acc)[NT][4]) {
#pragma unroll
  for (int j = 0; j < NT; j++)
#pragma unroll
    for (int i = 0; i < 4; i++) asm volatile("" : "+f"(acc[j][i]) :: "memory");
}

template <int FMT, int NT, int XSTAGES, bool BF16, int CW>
__global__ void __launch_bounds__(WIDE_THREADS(CW), 1) spmm_wide(const Params p, const __grid_constant__ TmaMap xmap) {
  static_assert(FMT != FMT_CSL && XSTAGES >= 3 && NT % 4 == 0, "the wide kernel decodes bitmap blocks, >= 3 X stages");
  static_assert(CW == 2 || (CW == 3 && NT <= 8) || (CW == 4 && NT <= 4), "a third group fits at 64 tokens, a fourth at 32");
  extern __shared__ __align__(16) u8 smem[];
  const WideWork W(p, NT * 8, CW);
  const i64 begin = W.start(blockIdx.x), end = W.start(blockIdx.x + 1);
  const WideSmem<NT, XSTAGES, CW> S(smem_addr(smem), p);
  const u32 flag = S.end(p);
  i64* ptrs = (i64*)(smem + (flag + 16 - smem_addr(smem)));
  // Every segment's block offsets, back to back (dispatch sized the area for the longest range).
  for (i64 it = begin, off = 0; it < end;) {
    const Segment g(p, it, end);
    load_block_ptrs<CW, false, WIDE_THREADS(CW)>(ptrs + off, p, g.tile % W.mtiles, g.k0, g.nk);
    off += CW * (g.nk + 1);
    it += g.nk;
  }
  if (threadIdx.x == 0) {
    for (int s = 0; s < XSTAGES; s++) {
      mbar_init(S.xfull + 8 * s, 1);
      mbar_init(S.xempty + 8 * s, WIDE_CONSUMERS(CW) / 32);
    }
    for (int s = 0; s < p.w_stages; s++) {
      mbar_init(S.wfull + 8 * s, 1);
      mbar_init(S.wempty + 8 * s, WIDE_CONSUMERS(CW) / 32);
    }
    mbar_fence_init();
  }
  __syncthreads();
  RingPos x = {0, 0u}, w = {0, 0u};
  // 384 threads leave ptxas 168 registers each, 512 threads 128, 640 threads 96; the producer group hands
  // most of its share to the consumer groups, which need 128 registers for the accumulators alone at 256
  // tokens.  setmaxnreg.inc waits until the CTA has the registers to give, so a split the producer's release
  // does not cover hangs the kernel (it did, at 4 groups with 120): hence the check.
  constexpr int LAUNCH_REGS = 65536 / WIDE_THREADS(CW) / 8 * 8, PRODUCER_REGS = CW == 4 ? 24 : 40;
  constexpr int CONSUMER_REGS = CW == 2 ? 232 : CW == 3 ? 152 : 112;
  static_assert((LAUNCH_REGS - PRODUCER_REGS) * 128 >= (CONSUMER_REGS - LAUNCH_REGS) * WIDE_CONSUMERS(CW),
                "setmaxnreg: the consumers would ask for more registers than the producer frees");
  if (threadIdx.x >= WIDE_CONSUMERS(CW)) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(PRODUCER_REGS) : "memory");
    if (threadIdx.x == WIDE_CONSUMERS(CW))
      for (i64 it = begin, off = 0; it < end;) {
        const Segment g(p, it, end);
        wide_produce<FMT, NT, XSTAGES, CW>(p, &xmap, S, ptrs + off, g.nk, g.k0, (g.tile / W.mtiles) * NT * 8, x, w);
        off += CW * (g.nk + 1);
        it += g.nk;
      }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(CONSUMER_REGS) : "memory");
  // Each segment zeroes its accumulators (no wgmma is in flight then) and runs one loop of stage pairs.
  // Peeling the segment's first pair instead (a first wgmma with scale-d = 0, no zeroing) built the same
  // loop, but NVRTC 13.0 (CUDA 13.0) then scheduled the decode on one or two predicate registers, 1.7x the
  // static stall cycles: the stage loop ran ~18 % slower at 128 tokens (NOTES.md, "Tenth session").
  float acc[NT][4];
  const BitmapLane L = bitmap_lane();
  const u32 scratch = S.scratch + (threadIdx.x >> 5) * 128;
  const bool lead = (threadIdx.x & 31) == 0;
  u32 a[2][4][4];
  for (i64 it = begin; it < end;) {
    const Segment g(p, it, end);
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) acc[j][i] = 0.f;
    // Stages in pairs, even when nk is odd (see bitmap_wg_body): the extra stage is all zeros.
    for (int s = 0; s < g.nk; s += 2) {
      wide_stage<FMT, NT, XSTAGES, BF16, 0, CW>(p, S, scratch, x, w, acc, a, L, s > 0);
      wide_stage<FMT, NT, XSTAGES, BF16, 1, CW>(p, S, scratch, x, w, acc, a, L, true);
    }
    wgmma_wait<0>();
    fence_accumulators<NT>(acc);
    if (lead) mbar_arrive(S.xempty + 8 * x.prev(XSTAGES));  // the segment's last X slot
    if (g.nk == p.KB || wide_fixup<NT, CW>(p, W, acc, g.tile, it, (g.tile / W.mtiles) * NT * 8, flag))
      store_tile<NT, BF16>(p, acc, ((g.tile % W.mtiles) * CW + (threadIdx.x >> 7)) * BLOCK + ((threadIdx.x >> 5) & 3) * 16,
                           (g.tile / W.mtiles) * NT * 8);
    it += g.nk;
  }
}
#endif

// ---------------------------------------------------------------------------------------------
// Split-K inside a cluster (Hopper): the split CTAs of one output tile are one cluster along grid.z.
// Each parks its accumulators in its own (now idle) ring, and after a cluster barrier CTA r sums
// slots r, r + split, ... of the tile over all CTAs' shared memory, slice by slice in z order - the
// same fp32 sums as the reduce kernel, so the output is deterministic - adds the bias and stores.  It
// replaces the fp32 partials' round trip through global memory and the reduce kernel's launch.
#if FLASHLLM_BULK
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

__device__ __forceinline__ float load_peer(u32 addr, u32 rank) {
  u32 remote;
  float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(addr), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(remote) : "memory");
  return v;
}

#define MAX_CLUSTER 8  // the portable cluster size; dispatch keeps split <= 8 for this path
template <int SPW, int NT, bool BF16>
__device__ __forceinline__ void cluster_reduce(const Params& p, const float (&acc)[SPW][NT][4], u32 park, int mt, int n0) {
  constexpr int SLOTS = SPW * NT * 4;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  __syncthreads();  // every warp is done with the ring
#pragma unroll
  for (int j = 0; j < SPW; j++)
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int i = 0; i < 4; i++)
        asm volatile("st.shared.f32 [%0], %1;\n" :: "r"(park + (((j * NT + nt) * 4 + i) * THREADS + tid) * 4),
                     "f"(acc[j][nt][i]));
  cluster_sync();
  const int split = gridDim.z, rank = blockIdx.z;
  for (int s = rank; s < SLOTS; s += split) {
    const u32 addr = park + (s * THREADS + tid) * 4;
    float v[MAX_CLUSTER];
#pragma unroll
    for (int z = 0; z < MAX_CLUSTER; z++) v[z] = z < split ? load_peer(addr, z) : 0.f;  // all in flight
    float sum = 0.f;
#pragma unroll
    for (int z = 0; z < MAX_CLUSTER; z++)
      if (z < split) sum += v[z];
    const int j = s / (NT * 4), nt = (s / 4) % NT, i = s % 4;
    const int m = (mt * SPW + j) * BLOCK + warp * 16 + g + ((i >> 1) << 3), n = n0 + nt * 8 + 2 * t + (i & 1);
    if (m < p.M && n < p.N) {
      if (p.bias) sum += to_float<BF16>(p.bias[m]);
      p.y[(i64)n * p.M + m] = from_float<BF16>(sum);
    }
  }
  cluster_sync();  // no CTA exits while a peer may still read its shared memory
}
#endif

template <int SPW, int NT, int STAGES, bool BF16, int FMT, bool WG>
__device__ __forceinline__ void spmm_body(const Params& p) {
  constexpr bool CSL = FMT == FMT_CSL, PAIRS = FMT == FMT_PAIRMAP;
  // The pair bitmap through this wgmma kernel measured 0.53-0.87x its mma.sync kernel (H200, N = 32/64;
  // ptxas C7515 serializes its wgmmas), so it has none.
  static_assert(!(WG && PAIRS), "the pair bitmap has no wgmma kernel");
  if constexpr (WG && FMT == FMT_BITMAP) {
    static_assert(SPW == 1 && STAGES >= 3, "the bitmap wgmma kernel takes one block per CTA and >= 3 stages");
    bitmap_wg_body<NT, STAGES, BF16>(p);
    return;
  }
  extern __shared__ __align__(16) u8 smem[];
  const int mt = blockIdx.x, n0 = blockIdx.y * NT * 8;
  const int kb0 = blockIdx.z * p.kb_per_split;
  const int nk = min(p.KB - kb0, p.kb_per_split);
  // Stage layout: mma.sync - [weight blocks | X tile]; wgmma - [X tile | weight blocks], every stage
  // and the dense tiles 1024-byte aligned, as the 128-byte swizzle of a wgmma operand requires (the
  // host asks for 1 KB more shared memory to align the ring).
  const u32 x_bytes = NT * 8 * X_ROW_BYTES;
  const u32 raw = SPW * p.stage_w_bytes + x_bytes;
  const u32 stage_bytes = WG ? (raw + 1023) & ~1023u : raw;
  const u32 ring = WG ? (smem_addr(smem) + 1023) & ~1023u : smem_addr(smem);
  const u32 w_off = WG ? x_bytes : 0, x_off = WG ? 0 : SPW * p.stage_w_bytes;
  const bool full = (mt + 1) * SPW <= p.MB;  // every row block of this CTA exists (all but the last CTA)
  // a cluster split-K parks the accumulators (SPW * NT * 2 KB) in the ring: it is at least that long
  const u32 park_bytes = SPW * NT * 4 * THREADS * 4;
  const u32 ring_bytes = p.cluster && park_bytes > STAGES * stage_bytes ? park_bytes : STAGES * stage_bytes;
  const u32 dense = ring + ring_bytes;  // CSL: SPW dense 64x64 tiles; bitmap: strip popcounts
  const u32 bars = dense + (CSL ? SPW * BLOCK * BLOCK * 2 : SCRATCH_BYTES(SPW));  // one mbarrier per ring slot
  i64* ptrs = (i64*)(smem + (bars + STAGES * 8 - smem_addr(smem)));
  load_block_ptrs<SPW, CSL>(ptrs, p, mt, kb0, nk);
  init_stage_barriers<STAGES>(bars);
  __syncthreads();

  float acc[SPW][NT][4];
#pragma unroll
  for (int j = 0; j < SPW; j++)
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int i = 0; i < 4; i++) acc[j][nt][i] = 0.f;

  const BitmapLane L = bitmap_lane();
  if (CSL) {
    clear_strips<SPW>(dense);
  }

#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    u32 st = ring + s * stage_bytes;
    if (s < nk) issue_stage<SPW, NT, CSL>(st + w_off, st + x_off, bars + 8 * s, p, ptrs, nk, mt, n0, s, kb0 + s);
    cp_async_commit();
  }
  for (int it = 0; it < nk; it++) {
    wait_stage<STAGES - 2, STAGES>(bars, it);
    if (WG) fence_proxy_async();  // the X tile landed through cp.async; the tensor cores read it directly
    __syncthreads();  // stage `it` landed for every thread; stage `it-1` is free again
    int next = it + STAGES - 1;
    if (next < nk) {
      u32 st = ring + (next % STAGES) * stage_bytes;
      issue_stage<SPW, NT, CSL>(st + w_off, st + x_off, bars + 8 * (next % STAGES), p, ptrs, nk, mt, n0, next,
                                kb0 + next);
    }
    cp_async_commit();
    u32 stage = ring + (it % STAGES) * stage_bytes;
    u32 wst = stage + w_off, xs = stage + x_off;
    if (CSL) {
      scatter_csl<SPW>(wst, dense, p, ptrs, nk, mt, it);
      if (WG) {
        fence_proxy_async();
        __syncthreads();
        if (full) compute_dense_wg<SPW, NT, BF16, true>(xs, dense, p, mt, acc);
        else compute_dense_wg<SPW, NT, BF16, false>(xs, dense, p, mt, acc);
        __syncthreads();  // every warp's share of the wgmma has read the tile
      } else {
        __syncthreads();
        if (full) compute_dense<SPW, NT, BF16, true>(xs, dense, p, mt, acc);
        else compute_dense<SPW, NT, BF16, false>(xs, dense, p, mt, acc);
        __syncwarp();
      }
      clear_strips<SPW>(dense);  // own strip only; the next scatter waits behind a __syncthreads
    } else {
      if (full) compute_bitmap<SPW, NT, BF16, true, PAIRS>(wst, xs, dense, p, mt, acc, L);
      else compute_bitmap<SPW, NT, BF16, false, PAIRS>(wst, xs, dense, p, mt, acc, L);
    }
  }
  cp_async_wait<0>();
#if FLASHLLM_BULK
  if (p.cluster) {  // dispatch sets it only with split > 1
    cluster_reduce<SPW, NT, BF16>(p, acc, ring, mt, n0);
    return;
  }
#endif

  int warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < SPW; j++) store_tile<NT, BF16>(p, acc[j], (mt * SPW + j) * BLOCK + warp * 16, n0);
}

// The pair bitmap's mma.sync kernel at 32 tokens keeps 8 CTAs per SM (64 registers; unbounded, ptxas takes 73:
// 7 CTAs, 8 % slower on an H200).  Elsewhere 0, no bound: ptxas' own choice.  An explicit bound raises
// the register count where ptxas would have taken fewer (1: 48 -> 80 at N = 8) or spills (8 at N = 64).
#define MIN_CTAS(FMT, NT, WG) ((FMT) == FMT_PAIRMAP && (NT) == 4 && !(WG) ? 8 : 0)
#define FLASHLLM_KERNEL(NAME, FMT)                                                               \
  template <int SPW, int NT, int STAGES, bool BF16, bool WG>                                     \
  __global__ void __launch_bounds__(THREADS, MIN_CTAS(FMT, NT, WG)) NAME(const Params p) {       \
    spmm_body<SPW, NT, STAGES, BF16, FMT, WG>(p);                                                \
  }
FLASHLLM_KERNEL(spmm_bitmap, FMT_BITMAP)
FLASHLLM_KERNEL(spmm_tiled_csl, FMT_CSL)
FLASHLLM_KERNEL(spmm_pairmap, FMT_PAIRMAP)

template <bool BF16>
__global__ void splitk_reduce(const float* partial, u16* y, int split, i64 count, const u16* bias, int m) {
  reduce_partials<BF16>(partial, y, split, count, bias, m);
}

// ---------------------------------------------------------------------------------------------
// Decompression to dense (the large-N path: expand a chunk of rows, then cuBLAS).  A CTA expands KPER
// consecutive 64x64 blocks of one row block: while it builds block i's dense tile in shared memory (the
// same decode as the SpMM kernels) and writes it out row by row, the next blocks' bytes are on their way
// (a STAGES-deep cp.async ring).  One block per CTA with a synchronous load measured ~60 % of copy
// bandwidth (12288x12288, 50 %, H100: 245-288 us for 472 MB; now 216-248 us).  rows/cols bound the chunk
// (M and K edges).
#define DECOMPRESS_KPER 8
#define DECOMPRESS_STAGES 3
template <int FMT>
__global__ void __launch_bounds__(THREADS) decompress(const u8* __restrict__ weight, const i64* __restrict__ block_ptr,
                                                      u16* __restrict__ out, int mb0, int rows, int K, int KB,
                                                      int stage_bytes) {
  extern __shared__ __align__(16) u8 smem[];
  constexpr bool CSL = FMT == FMT_CSL;
  const int mb = blockIdx.y, kb0 = blockIdx.x * DECOMPRESS_KPER;  // mb counts from the chunk's first row block
  const int nk = min(DECOMPRESS_KPER, KB - kb0);
  const i64* ptrs = block_ptr + (i64)(mb0 + mb) * KB + kb0;
  const i64 unit = CSL ? 4 : 1;
  const u32 ring = smem_addr(smem), dense = ring + DECOMPRESS_STAGES * stage_bytes;  // [stages | tile | counts]
  u16* tile = (u16*)(smem + DECOMPRESS_STAGES * stage_bytes);
  const u32 scratch = warp_scratch(dense + BLOCK * BLOCK * 2, 0);
  auto fetch = [&](int i) {  // block kb0 + i into stage i % STAGES
    const i64 begin = ptrs[i] * unit;
    const int chunks = (int)((ptrs[i + 1] * unit - begin) >> 4);
    for (int c = threadIdx.x; c < chunks; c += THREADS)
      cp_async16(ring + (i % DECOMPRESS_STAGES) * stage_bytes + (c << 4), weight + begin + ((i64)c << 4), 16);
  };
  if (CSL)  // a Tiled-CSL tile starts zero; each thread re-zeroes the chunks it writes out (below)
    for (int c = threadIdx.x; c < BLOCK * BLOCK / 8; c += THREADS) ((uint4*)tile)[c] = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int i = 0; i < DECOMPRESS_STAGES - 1; i++) {
    if (i < nk) fetch(i);
    cp_async_commit();
  }
  const bool vec = (K & 7) == 0;  // rows 16-byte aligned
  for (int i = 0; i < nk; i++) {
    // block i + STAGES - 1's stage was last read by block i - 1's decode, before the barrier below
    if (i + DECOMPRESS_STAGES - 1 < nk) fetch(i + DECOMPRESS_STAGES - 1);
    cp_async_commit();
    cp_async_wait<DECOMPRESS_STAGES - 1>();
    __syncthreads();  // block i landed for every thread; the tile's previous rows are written out
    const u32 st = ring + (i % DECOMPRESS_STAGES) * stage_bytes;
    if (CSL) {
      const i64 begin = ptrs[i] * unit;
      scatter_words(st, (int)((ptrs[i + 1] * unit - begin) >> 4), dense);
    } else {
      const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
      const BitmapLane L = bitmap_lane();
      u32 base = 0;
      if (FMT == FMT_PAIRMAP) pair_bases(st, st, scratch, scratch, warp);
      else base = bitmap_base(st, scratch, warp);
      __syncwarp();
#pragma unroll
      for (int f = 0; f < 4; f++) {
        u32 a[4];
        if (FMT == FMT_PAIRMAP) decode_pair_fragment(a, st, scratch, f, warp);
        else decode_fragment(a, st, scratch, f, L, base, warp);
#pragma unroll
        for (int q = 0; q < 4; q++) {  // register q of the m16k16 fragment: rows g (+8 if q odd), cols 2t (+8 if q > 1)
          // 16-byte chunk c of row r at c ^ (r % 8), as Tiled-CSL's tiles: the 8 rows g of one store then
          // hit 8 bank groups (unswizzled, all 32 lanes fell in 4 banks: 8-way conflicts)
          int row = warp * 16 + g + 8 * (q & 1), chunk = 2 * f + (q >> 1);
          *(u32*)(tile + row * BLOCK + ((chunk ^ (row & 7)) << 3) + 2 * t) = a[q];
        }
      }
      __syncwarp();  // the scratch is rewritten by the next block's decode
    }
    __syncthreads();
    // Write the tile out in 16-byte chunks (8 columns).  Every tile is swizzled by whole 16-byte chunks
    // (chunk c of row r sits at c ^ (r % 8)), so each chunk stays contiguous.
    const int kb = kb0 + i;
    for (int c = threadIdx.x; c < BLOCK * BLOCK / 8; c += THREADS) {
      int r = c >> 3, ch = c & 7;
      int m = mb * BLOCK + r, k = kb * BLOCK + ch * 8;
      u16* src = tile + (r << 6) + ((ch ^ (r & 7)) << 3);
      u16* dst = out + (i64)m * K + k;
      if (m < rows && k < K) {
        if (vec && k + 8 <= K) {
          *(uint4*)dst = *(const uint4*)src;
        } else {
          for (int e = 0; e < 8 && k + e < K; e++) dst[e] = src[e];
        }
      }
      if (CSL) *(uint4*)src = make_uint4(0, 0, 0, 0);  // this thread's chunk only: no one else reads it
    }
  }
}
