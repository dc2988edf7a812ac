// Shared pieces of the flashllm SpMM kernels: PTX wrappers, the X-tile pipeline, the MMA and
// the epilogue.  Header-free on purpose: NVRTC has no default include path, so fp16/bf16 travel
// as raw 16-bit words and every conversion is one PTX instruction.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

#define BLOCK 64          // rows and K columns of a format block
#define THREADS 128       // 4 warps; warp w owns strip w (16 rows) of every block of the CTA
#define X_ROW_BYTES 128   // one token's 64 K-values in a stage

// Everything a launch needs, passed by value as one struct (one pointer per launch from Python).
struct Params {
  const u8* weight;        // bitmap: block bytes; tiled_csl: int32 words
  const i64* block_ptr;    // bitmap: byte offsets; tiled_csl: word offsets
  const u16* x;            // [N, ldx] activations, ldx % 8 == 0, 16-byte aligned rows
  u16* y;                  // [N, M] output (split == 1)
  float* partial;          // [split, N, M] fp32 partial sums (split > 1); the wide kernel: [G, 2, 128 x NT*8]
  int M, N, K, ldx;
  int MB, KB;              // blocks along M and K
  int kb_per_split;        // K-blocks per grid.z slice
  int stage_w_bytes;       // bytes reserved per weight block in a stage (>= largest block)
  const u16* bias;         // [M] added before the output is rounded, or null
  int cluster;             // split > 1 on Hopper: the grid.z slices of a tile form a cluster and sum in
                           // distributed shared memory (cluster_reduce), no fp32 partials in global memory
  int w_stages;            // the wide kernel: depth of its weight ring (deeper than its X ring)
  int* counters;           // the wide kernel: per-tile arrival counts of its stream-K segments (zeroed)
};

__device__ __forceinline__ u32 smem_addr(const void* p) {
  return (u32)__cvta_generic_to_shared(p);
}

// 16-byte async copy; src_bytes == 0 zero-fills the destination (used past N and K).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }

// Hopper bulk copies (the 1-D TMA path): one thread moves a whole compressed block, global ->
// shared, and the bytes are counted on an mbarrier, instead of a warp issuing one 16-byte cp.async
// per chunk (the copy loop was ~100 instructions per stage).  sm_80 keeps the cp.async loop.
#if __CUDA_ARCH__ >= 900
#define FLASHLLM_BULK 1
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive_expect(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               :: "r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  asm volatile("{\n.reg .pred done;\nwait:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "@!done bra wait;\n}\n" :: "r"(bar), "r"(parity) : "memory");
}
// Orders this thread's earlier generic-proxy shared-memory accesses before later async-proxy ones.
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
#else
#define FLASHLLM_BULK 0
#endif

__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2(u32 (&r)[2], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
  if (BF16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

template <bool BF16>
__device__ __forceinline__ float to_float(u16 v) {
  if (BF16) return __uint_as_float((u32)v << 16);
  float f;
  asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(v));
  return f;
}

template <bool BF16>
__device__ __forceinline__ u16 from_float(float v) {
  u16 r;
  if (BF16) asm("cvt.rn.bf16.f32 %0, %1;\n" : "=h"(r) : "f"(v));
  else asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(r) : "f"(v));
  return r;
}

// X tile of one stage: NT*8 tokens x 64 K-values, 16-byte chunk c of token n stored at chunk
// c ^ (n % 8) so that ldmatrix's 8 row addresses fall in 8 different bank groups.
// Issued by STRIDE threads (a multiple of 8), this one being number t: it always copies chunk column
// t % 8, of rows t / 8 + i * STRIDE / 8 - a fixed trip count, so the row math is loop-invariant and
// hoisted out of the stage loop (it was ~1/6 of the instructions at N = 32, when all threads copy).
template <int NT, int STRIDE>
__device__ __forceinline__ void load_x_tile(u32 xs, const Params& p, int n0, int kb, int t) {
  constexpr int ROWS = NT * 8, ROW_STEP = STRIDE / 8;
  static_assert(STRIDE % 8 == 0, "a thread keeps one chunk column");
  const int ch = t & 7, k = kb * BLOCK + ch * 8;
  const bool k_ok = k < p.K;  // ldx is padded to 8 with zeros, so a chunk is all in or all out
#pragma unroll
  for (int i = 0; i < (ROWS + ROW_STEP - 1) / ROW_STEP; i++) {
    const int r = (t >> 3) + i * ROW_STEP;
    if (ROWS % ROW_STEP != 0 && r >= ROWS) break;
    const int n = n0 + r;
    const bool ok = k_ok && n < p.N;
    const u16* src = ok ? p.x + (i64)n * p.ldx + k : p.x;
    cp_async16(xs + r * X_ROW_BYTES + ((ch ^ (r & 7)) << 4), src, ok ? 16 : 0);
  }
}

// B fragments (X^T) for the 16-wide K slice f of the stage, for all NT n8 tiles: one ldmatrix.x4
// per pair of n8 tiles (matrices: tile 2i k0-7, tile 2i k8-15, tile 2i+1 k0-7, tile 2i+1 k8-15).
template <int NT>
__device__ __forceinline__ void load_b_frags(u32 (&b)[NT][2], u32 xs, int f) {
  int lane = threadIdx.x & 31;
  int ch = 2 * f + ((lane >> 3) & 1);
  if (NT == 1) {
    int row = lane & 7;
    ldmatrix_x2(b[0], xs + row * X_ROW_BYTES + ((ch ^ (row & 7)) << 4));
  } else {
#pragma unroll
    for (int i = 0; i < NT / 2; i++) {
      int row = (2 * i + (lane >> 4)) * 8 + (lane & 7);
      u32 r[4];
      ldmatrix_x4(r, xs + row * X_ROW_BYTES + ((ch ^ (row & 7)) << 4));
      b[2 * i][0] = r[0]; b[2 * i][1] = r[1];
      b[2 * i + 1][0] = r[2]; b[2 * i + 1][1] = r[3];
    }
  }
}

// Write the warp's 16 x (NT*8) accumulator tile of strip rows m0.. : to y directly (+ bias), or as
// an fp32 partial (split-K; the reduce kernel sums the slices in a fixed order, so results are bitwise
// reproducible, and adds the bias).
template <int NT, bool BF16>
__device__ __forceinline__ void store_tile(const Params& p, const float (&acc)[NT][4], int m0, int n0) {
  int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  bool split = gridDim.z > 1;
  float* part = p.partial + (i64)blockIdx.z * p.N * p.M;
  float bias[2] = {0.f, 0.f};  // rows g and g + 8
  if (!split && p.bias) {
    if (m0 + g < p.M) bias[0] = to_float<BF16>(p.bias[m0 + g]);
    if (m0 + g + 8 < p.M) bias[1] = to_float<BF16>(p.bias[m0 + g + 8]);
  }
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
      int m = m0 + g + ((i >> 1) << 3), n = n0 + nt * 8 + 2 * t + (i & 1);
      if (m < p.M && n < p.N) {
        if (split) part[(i64)n * p.M + m] = acc[nt][i];
        else p.y[(i64)n * p.M + m] = from_float<BF16>(acc[nt][i] + bias[i >> 1]);
      }
    }
  }
}
