// Sliced-ELL SpMM on CUDA cores: y = x @ W^T for few tokens and high sparsity.
//
// Why not tensor cores here: expanding a tile to dense costs work per *weight* (the bitmap decode,
// Tiled-CSL's zero fill and ldmatrix), however few of them are non-zero.  At 85-90% sparsity and
// N <= 16 the multiply-adds per *non-zero* (N of them) are cheaper than that (measured: README), so
// this kernel skips the dense tile: each lane owns one output row and walks that row's non-zeros.
//
// Format (flashllm/formats/sell.py): rows in slices of 32, K in chunks of SELL_CHUNK columns.  A
// (slice, chunk) holds L entries per row (L = the slice's longest row there, padded to 4; short rows
// padded with zero-valued entries), stored so that step i of all 32 lanes is one coalesced 512-byte
// read: entry j of lane l at (j / 4) * 128 + l * 4 + j % 4.  An entry is 32 bits: low 16 the value, high
// 16 the byte offset of its column's slot in the X tile (see load_x_chunk): one LEA.HI makes the address.
//
// X tile of a chunk: P planes of SELL_CHUNK columns of T tokens (T = 8, or 1/2/4 when N < 8), so one
// shared load brings a column's T tokens.  The encoder deals each row's entries round-robin over the 8 bank
// groups, starting at row % 8: at most steps the 8 lanes of a quarter-warp read 8 different groups.
#include "common.cuh"

#define SELL_SLICE 32
#define SELL_CHUNK 2048

struct SellParams {
  const uint4* entries;   // 4 entries per uint4
  const i64* slice_ptr;   // [S * C + 1] entry offsets of each (slice, chunk), slice-major, multiples of 128
  const u16* x;           // [N, ldx] (ldx % 8 == 0, columns K..ldx zero)
  u16* y;                 // [N, M] output (split == 1)
  float* partial;         // [split, N, M] (split > 1)
  int M, N, K, ldx;
  int S, C;               // slices of 32 rows, chunks of SELL_CHUNK columns
  int chunks_per_split;   // chunks per grid.z slice
  int parts;              // grid.z = chunk groups x parts: part q takes the q-th share of each row's steps
  const u16* bias;        // [M] or null
};

// The entry's value (its low 16 bits) as fp32: one instruction either way.
template <bool BF16>
__device__ __forceinline__ float entry_value(u32 e) {
  return to_float<BF16>((u16)(e & 0xFFFF));
}

// T 16-bit values of one X column (T = 1, 2, 4, 8 tokens: 2T bytes at an aligned address) as words.
template <int T>
__device__ __forceinline__ void load_column(u32 (&w)[(T + 1) / 2], const u8* at) {
  if constexpr (T == 8) {
    const uint4 q = *(const uint4*)at;
    w[0] = q.x; w[1] = q.y; w[2] = q.z; w[3] = q.w;
  } else if constexpr (T == 4) {
    const uint2 q = *(const uint2*)at;
    w[0] = q.x; w[1] = q.y;
  } else if constexpr (T == 2) {
    w[0] = *(const u32*)at;
  } else {
    w[0] = *(const u16*)at;
  }
}

// acc[0..T) += v * the T tokens of one X column.
template <int T, bool BF16>
__device__ __forceinline__ void fma_column(float* acc, float v, const u8* at) {
  u32 w[(T + 1) / 2];
  load_column<T>(w, at);
#pragma unroll
  for (int i = 0; i < T; i++)
    acc[i] = fmaf(v, to_float<BF16>((u16)(i & 1 ? w[i / 2] >> 16 : w[i / 2] & 0xFFFF)), acc[i]);
}

// A tile slot holds a column's T tokens in 2T bytes; the entry's offset is slot * 16, so the byte
// address is base + offset * T / 8 (one LEA.HI for every T: the shift folds into it).
template <int T, int P, bool BF16>
__device__ __forceinline__ void sell_entry(float (&acc)[T * P], const u8* xs, u32 e) {
  const float v = entry_value<BF16>(e);
  const u8* col = xs + ((e >> 16) >> (T == 8 ? 0 : T == 4 ? 1 : T == 2 ? 2 : 3));
#pragma unroll
  for (int pl = 0; pl < P; pl++) fma_column<T, BF16>(acc + T * pl, v, col + pl * SELL_CHUNK * 2 * T);
}

// Column c of a chunk sits in tile slot c ^ ((c / 8) % 8): the thread that transposes columns
// 8g..8g+7 then stores column j to bank group j ^ (g % 8), so 8 consecutive threads hit 8 different
// groups.  (The encoder writes slot * 16 as the entry's offset, so the kernel never swizzles.)
//
// X columns [c * SELL_CHUNK, +SELL_CHUNK) of tokens n0.. n0 + T * P into the tile: per (plane, 8
// columns) one thread loads T tokens x 16 bytes and transposes them with byte permutes.
template <int T, int P, int W>
__device__ __forceinline__ void load_x_chunk(u8* xs, const SellParams& p, int n0, int c) {
  const int k0 = c * SELL_CHUNK;
  for (int i = threadIdx.x; i < P * SELL_CHUNK / 8; i += W * 32) {
    const int pl = i / (SELL_CHUNK / 8), g = i % (SELL_CHUNK / 8), k = k0 + 8 * g;
    u32 tok[T][4];
#pragma unroll
    for (int t = 0; t < T; t++) {
      const int n = n0 + T * pl + t;
      // ldx is padded to 8 with zeros, so 8 columns are all in or all out
      const uint4 q = (n < p.N && k < p.K) ? *(const uint4*)(p.x + (i64)n * p.ldx + k) : make_uint4(0, 0, 0, 0);
      tok[t][0] = q.x; tok[t][1] = q.y; tok[t][2] = q.z; tok[t][3] = q.w;
    }
    u8* dst = xs + (pl * SELL_CHUNK + 8 * g) * 2 * T;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      u8* at = dst + (j ^ (g & 7)) * 2 * T;
      if constexpr (T == 1) {
        *(u16*)at = (u16)(j & 1 ? tok[0][j >> 1] >> 16 : tok[0][j >> 1] & 0xFFFF);
      } else {
        u32 q[T / 2];  // token pairs (2t, 2t + 1) of column j
#pragma unroll
        for (int t = 0; t < T / 2; t++) q[t] = __byte_perm(tok[2 * t][j >> 1], tok[2 * t + 1][j >> 1], j & 1 ? 0x7632 : 0x5410);
        if constexpr (T == 8) *(uint4*)at = make_uint4(q[0], q[1], q[2], q[3]);
        else if constexpr (T == 4) *(uint2*)at = make_uint2(q[0], q[1]);
        else *(u32*)at = q[0];
      }
    }
  }
}

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// grid: (slices / W, token groups of T * P, K splits); W warps, warp w owns slice blockIdx.x * W + w;
// T tokens per plane (1, 2, 4 for N < 8, else 8), P planes; D: steps (4 entries per lane) loaded ahead.
template <int T, int P, int W, int D, bool BF16>
__global__ void __launch_bounds__(W * 32) spmm_sell(SellParams p) {
  extern __shared__ uint4 smem[];  // the X tile: [P][SELL_CHUNK] slots of 2T bytes
  u8* xs = (u8*)smem;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int s = blockIdx.x * W + warp;
  const int n0 = blockIdx.y * T * P;
  // Small matrices have too few (slice, chunk) pairs to fill the GPU: the steps of one pair can be
  // dealt to `parts` CTAs (each still loads the whole X chunk: entries are in bank order, not by column).
  const int part = blockIdx.z % p.parts;
  const int c0 = blockIdx.z / p.parts * p.chunks_per_split;
  const int c1 = min(p.C, c0 + p.chunks_per_split);
  float acc[T * P];
#pragma unroll
  for (int i = 0; i < T * P; i++) acc[i] = 0.f;

  for (int c = c0; c < c1; c++) {
    __syncthreads();  // every warp is done with the previous chunk's tile
    load_x_chunk<T, P, W>(xs, p, n0, c);
    __syncthreads();
    if (s >= p.S) continue;
    const i64 begin = p.slice_ptr[(i64)s * p.C + c];
    const int all_steps = (int)((p.slice_ptr[(i64)s * p.C + c + 1] - begin) >> 7);
    const int first = all_steps * part / p.parts;
    const int steps = all_steps * (part + 1) / p.parts - first;
    const uint4* src = p.entries + (begin >> 2) + (i64)first * 32 + lane;
    // D steps in flight ahead of the one being multiplied: with few warps per SM (the X tile takes
    // the shared memory) the stream's latency hides only behind a deep per-warp queue.
    uint4 buf[D];
#pragma unroll
    for (int d = 0; d < D; d++) buf[d] = d < steps ? ld_stream(src + d * 32) : make_uint4(0, 0, 0, 0);
    for (int i = 0; i < steps; i += D) {
#pragma unroll
      for (int d = 0; d < D; d++) {
        if (i + d < steps) {
          const uint4 cur = buf[d];
          if (i + d + D < steps) buf[d] = ld_stream(src + (i + d + D) * 32);
          sell_entry<T, P, BF16>(acc, xs, cur.x);
          sell_entry<T, P, BF16>(acc, xs, cur.y);
          sell_entry<T, P, BF16>(acc, xs, cur.z);
          sell_entry<T, P, BF16>(acc, xs, cur.w);
        }
      }
    }
  }

  if (s >= p.S) return;
  const int m = s * SELL_SLICE + lane;
  if (m >= p.M) return;
  const bool split = gridDim.z > 1;
  const float bias = (!split && p.bias) ? to_float<BF16>(p.bias[m]) : 0.f;
  float* out = p.partial + (i64)blockIdx.z * p.N * p.M;
#pragma unroll
  for (int i = 0; i < T * P; i++) {
    const int n = n0 + i;
    if (n < p.N) {
      if (split) out[(i64)n * p.M + m] = acc[i];
      else p.y[(i64)n * p.M + m] = from_float<BF16>(acc[i] + bias);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Decompression to dense (the large-N path): rows [row0, row0 + rows) of W into `out` [rows, K].
// One CTA per (slice, chunk) builds the 32 x SELL_CHUNK tile in shared memory (zero fill, scatter of
// the entries) and writes it out row by row: every global write is coalesced and nothing needs a
// memset first (a thread per entry scattering 2-byte writes straight to global memory ran at a third
// of the speed in prefill).
#define SELL_DECOMP_THREADS 512
template <bool UNUSED>
__global__ void __launch_bounds__(SELL_DECOMP_THREADS) sell_decompress(const u32* __restrict__ entries,
                                                                       const i64* __restrict__ slice_ptr,
                                                                       u16* __restrict__ out, int row0, int rows,
                                                                       int K, int C) {
  extern __shared__ uint4 tile4[];  // [32][SELL_CHUNK] fp16
  u16* tile = (u16*)tile4;
  const int s = row0 / SELL_SLICE + blockIdx.y, c = blockIdx.x;
  for (int i = threadIdx.x; i < SELL_SLICE * SELL_CHUNK / 8; i += SELL_DECOMP_THREADS) tile4[i] = make_uint4(0, 0, 0, 0);
  __syncthreads();
  const i64 begin = slice_ptr[(i64)s * C + c], end = slice_ptr[(i64)s * C + c + 1];
  for (i64 i = begin + threadIdx.x; i < end; i += SELL_DECOMP_THREADS) {
    const u32 e = entries[i];
    if ((e & 0x7FFF) == 0) continue;  // padding (+0; a stored value is never zero)
    const int lane = (int)((i - begin) & 127) >> 2;
    const int slot = (int)(e >> 20);  // (slot * 16) >> 4
    tile[lane * SELL_CHUNK + (slot ^ ((slot >> 3) & 7))] = (u16)(e & 0xFFFF);
  }
  __syncthreads();
  const int r0 = s * SELL_SLICE - row0, k0 = c * SELL_CHUNK;
  const int cols = min(SELL_CHUNK, K - k0), nrows = min(SELL_SLICE, rows - r0);
  if ((K & 7) == 0) {  // rows 16-byte aligned: 8 values per store
    for (int i = threadIdx.x; i < nrows * (cols >> 3); i += SELL_DECOMP_THREADS) {
      const int r = i / (cols >> 3), q = i % (cols >> 3);
      *(uint4*)(out + (i64)(r0 + r) * K + k0 + 8 * q) = tile4[r * (SELL_CHUNK / 8) + q];
    }
  } else {
    for (int i = threadIdx.x; i < nrows * cols; i += SELL_DECOMP_THREADS) {
      const int r = i / cols, q = i % cols;
      out[(i64)(r0 + r) * K + k0 + q] = tile[r * SELL_CHUNK + q];
    }
  }
}
