// A CTA's format blocks in shared memory: where they are (load_block_ptrs) and how one becomes A fragments -
// the bitmap and pair-bitmap decodes and Tiled-CSL's scatter.  Shared by the SpMM kernels (spmm_mma.cu,
// spmm_wide.cu) and the expansion to dense (decompress.cu); the layouts are in flashllm/formats/.
#pragma once
#include "common.cuh"
#include "format_ids.cuh"  // FMT_<NAME>: flashllm/formats/base.py FORMAT_IDS, written out by kernels/jit.py

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
// cost 8-15 % at 50 % sparsity when each half had a stream of its own (H200; format version 1).
// A lane's first value sits after the popcount of the bits below; `base` points 2 bytes before its
// half's run so that one popcount (of the bits up to and including the lane's first bit) addresses
// both cases:
//   first bit set:   value pair starts at the lane's first value   (lo = v[c], hi = v[c+1])
//   first bit clear: only the second can be set and it is v[c]     (lo = junk, hi = v[c])
// Each half is loaded only when the lane's bit for it is set (a predicated load of a zeroed register),
// so junk never reaches the fragment.
//
// The decode is bound by the integer pipes, not by memory (H200, docs/kernels.md):
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
