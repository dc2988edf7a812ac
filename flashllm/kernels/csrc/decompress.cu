// Decompression to dense (the large-N path: expand a chunk of rows, then cuBLAS).  A CTA expands KPER
// consecutive 64x64 blocks of one row block: while it builds block i's dense tile in shared memory (the
// same decode as the SpMM kernels) and writes it out row by row, the next blocks' bytes are on their way
// (a STAGES-deep cp.async ring).  One block per CTA with a synchronous load measured ~60 % of copy
// bandwidth (12288x12288, 50 %, H100: 245-288 us for 472 MB; now 216-248 us).  rows/cols bound the chunk
// (M and K edges).
#include "common.cuh"
#include "decode.cuh"

#define DECOMPRESS_KPER 8
#define DECOMPRESS_STAGES 3
template <int FMT>
__global__ void __launch_bounds__(THREADS) decompress(const u8* __restrict__ weight, const i64* __restrict__ block_ptr,
                                                      u16* __restrict__ out, int mb0, int rows, int K, int KB,
                                                      int stage_bytes) {
  extern __shared__ __align__(16) u8 smem[];
  constexpr bool CSL = FMT == FMT_TILED_CSL;
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
