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
// On an H100 (12288x12288, 50 %; docs/experiments.md): every thread copying its share
// of X cost ~80 instructions per warp and stage; and a CTA barrier per stage, with the copies issued
// by the consumers, left the stage loop latency-bound (decode, copies and wgmma added up, 0.58-0.75x).
// Per stage, like bitmap_wg_body: two A register sets, wait_group 1.  The producer warpgroup's one working
// thread hands its registers to the consumers.
#include "common.cuh"
#include "wgmma.cuh"
#include "decode.cuh"

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
  static_assert(FMT != FMT_TILED_CSL && XSTAGES >= 3 && NT % 4 == 0, "the wide kernel decodes bitmap blocks, >= 3 X stages");
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
  // static stall cycles: the stage loop ran ~18 % slower at 128 tokens (docs/experiments.md).
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
