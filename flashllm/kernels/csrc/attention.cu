// Decode attention: one query token per sequence against the KV cache, one CTA per (sequence, head).
//
// At decode torch's fastest SDPA backend (cuDNN) took 23 us for batch 8 x 56 heads x 192 keys on an
// H200 and 64 us at batch 32: 4x and 3x the time to read the keys and values.  Here each of W warps
// (8 or 16, kernels/attention.py) takes every W-th key: a coalesced 8-byte-per-lane slice of the key
// row, a warp-reduced dot product;
// then a softmax over the CTA's scores in shared memory (fp32) and the same walk over the values.
// A CTA's time is the latency of its dependent load batches, hence many warps and deep unrolling
// (4 warps unrolled by 4 measured 42 us at batch 8, slower than cuDNN).
#include "common.cuh"

#define NEG_INF __int_as_float(0xff800000)

// PER consecutive 16-bit values (8 or 4 bytes, aligned: rows are whole multiples of D) as floats.
template <int PER, bool BF16>
__device__ __forceinline__ void load_row_slice(const u16* src, float (&out)[PER]) {
  u32 w[PER / 2];
  if (PER == 4) {
    uint2 t = *(const uint2*)src;
    w[0] = t.x; w[PER / 2 - 1] = t.y;
  } else {
    w[0] = *(const u32*)src;
  }
#pragma unroll
  for (int i = 0; i < PER / 2; i++) {
    out[2 * i] = to_float<BF16>((u16)(w[i] & 0xFFFF));
    out[2 * i + 1] = to_float<BF16>((u16)(w[i] >> 16));
  }
}

// Strides are in elements.  q [B, H, D]; k, v [B, Hkv, L, D] (a view of the cache: any b/h/l strides,
// d contiguous); mask [B, L] bytes (1 = attend); out [B, H, D] contiguous.  Query head h reads KV head
// h / (H / Hkv).  scores: L floats of dynamic shared memory.
struct AttnParams {
  const u16* q;
  const u16* k;
  const u16* v;
  const u8* mask;
  u16* out;
  int heads, kv_heads, len;
  float scale;
  i64 q_b, q_h, k_b, k_h, k_l, v_b, v_h, v_l, m_b;
};

template <int D, bool BF16, int ATTN_WARPS>
__global__ void __launch_bounds__(ATTN_WARPS * 32) decode_attention(const AttnParams p) {
  constexpr int ATTN_THREADS = ATTN_WARPS * 32;
  constexpr int PER = D / 32;  // values per lane: 2 (D = 64) or 4 (D = 128)
  extern __shared__ float scores[];
  __shared__ float part[ATTN_WARPS][D];
  __shared__ float red[ATTN_WARPS];
  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads, kvh = h / (p.heads / p.kv_heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const u16* kb = p.k + b * p.k_b + kvh * p.k_h + lane * PER;
  const u16* vb = p.v + b * p.v_b + kvh * p.v_h + lane * PER;
  const u8* mb = p.mask + b * p.m_b;

  float q[PER];
  load_row_slice<PER, BF16>(p.q + b * p.q_b + h * p.q_h + lane * PER, q);
#pragma unroll
  for (int i = 0; i < PER; i++) q[i] *= p.scale;

  // scores, and the running max per thread
  float mx = NEG_INF;
#pragma unroll 8
  for (int j = warp; j < p.len; j += ATTN_WARPS) {
    // A static cache is masked past each sequence's length: skip those rows' loads (the branch is
    // warp-uniform), a third of the cache on average over a 64 + 128-token generation.
    const bool live = mb[j];
    float kv[PER] = {};
    if (live) load_row_slice<PER, BF16>(kb + j * p.k_l, kv);
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < PER; i++) s += q[i] * kv[i];
#pragma unroll
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    s = live ? s : NEG_INF;
    if (lane == 0) scores[j] = s;
    mx = fmaxf(mx, s);
  }
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
#pragma unroll
  for (int w = 1; w < ATTN_WARPS; w++) mx = fmaxf(mx, red[w]);

  // exp and its sum
  float sum = 0.f;
  for (int j = threadIdx.x; j < p.len; j += ATTN_THREADS) {
    float e = scores[j] == NEG_INF ? 0.f : __expf(scores[j] - mx);
    scores[j] = e;
    sum += e;
  }
#pragma unroll
  for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  __syncthreads();  // every warp has read red[] for the max
  if (lane == 0) red[warp] = sum;
  __syncthreads();
  sum = 0.f;
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; w++) sum += red[w];

  // weighted sum of the values: each warp its keys, then the warps' partial rows added up
  float acc[PER] = {};
#pragma unroll 8
  for (int j = warp; j < p.len; j += ATTN_WARPS) {
    const float e = scores[j];
    float vv[PER] = {};
    if (mb[j]) load_row_slice<PER, BF16>(vb + j * p.v_l, vv);  // a masked key adds nothing
#pragma unroll
    for (int i = 0; i < PER; i++) acc[i] += e * vv[i];
  }
#pragma unroll
  for (int i = 0; i < PER; i++) part[warp][lane * PER + i] = acc[i];
  __syncthreads();
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int d = threadIdx.x; d < D; d += ATTN_THREADS) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++) o += part[w][d];
    p.out[(i64)blockIdx.x * D + d] = from_float<BF16>(o * inv);
  }
}
