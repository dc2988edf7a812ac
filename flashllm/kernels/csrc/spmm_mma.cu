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
// The wide kernel (spmm_wide.cu) decodes the bitmap formats the same way for 17-1024 tokens at once, with
// wgmma, TMA and a producer warpgroup.
#include "common.cuh"
#include "wgmma.cuh"
#include "decode.cuh"

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

// Tiled-CSL: the dense tiles that scatter_words (decode.cuh) fills, and their MMA.

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
  constexpr bool CSL = FMT == FMT_TILED_CSL, PAIRS = FMT == FMT_PAIRMAP;
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
FLASHLLM_KERNEL(spmm_tiled_csl, FMT_TILED_CSL)
FLASHLLM_KERNEL(spmm_pairmap, FMT_PAIRMAP)

