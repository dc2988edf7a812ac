// Decode attention: one query token per sequence against the KV cache, one CTA per (sequence, head).
//
// At decode torch's fastest SDPA backend (cuDNN) took 23 us for batch 8 x 56 heads x 192 keys on an
// H200 and 64 us at batch 32: 4x and 3x the time to read the keys and values.  Here each of W warps
// (8 or 16, kernels/attention.py) takes every W-th key: a coalesced 8-byte-per-lane slice of the key
// row, a warp-reduced dot product, and an online softmax (running max and sum) over its keys, so a
// key's value row is loaded in the same batch as its key row: one round trip to memory per batch of
// keys, where a softmax between a scores pass and a values pass took two (and a mask read before each).
// The warps' partial results are merged at the end.  A CTA's time is the latency of its dependent load
// batches, hence many warps and a batch of KEYS keys per warp in flight.
#include "common.cuh"

#define NEG_INF __int_as_float(0xff800000)

// PER consecutive 16-bit values (8 or 4 bytes, aligned: rows are whole multiples of D), raw, and as floats.
template <int PER>
__device__ __forceinline__ void load_raw(const u16* src, u32 (&w)[PER / 2]) {
  if (PER == 4) {
    uint2 t = *(const uint2*)src;
    w[0] = t.x; w[PER / 2 - 1] = t.y;
  } else {
    w[0] = *(const u32*)src;
  }
}

template <int PER, bool BF16>
__device__ __forceinline__ void to_floats(const u32 (&w)[PER / 2], float (&out)[PER]) {
#pragma unroll
  for (int i = 0; i < PER / 2; i++) {
    out[2 * i] = to_float<BF16>((u16)(w[i] & 0xFFFF));
    out[2 * i + 1] = to_float<BF16>((u16)(w[i] >> 16));
  }
}

// Strides are in elements.  q [B, H, D]; k, v [B, Hkv, L, D] (a view of the cache: any b/h/l strides,
// d contiguous); mask [B, L] bytes (1 = attend); out [B, H, D] contiguous.  Query head h reads KV head
// h / (H / Hkv).
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
  constexpr int PER = D / 32;  // values per lane: 2 (D = 64) or 4 (D = 128)
  constexpr int KEYS = 8;      // keys per warp and batch: their key and value loads all in flight at once
  __shared__ float part[ATTN_WARPS][D];
  __shared__ float wmax[ATTN_WARPS], wsum[ATTN_WARPS];
  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads, kvh = h / (p.heads / p.kv_heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const u16* kb = p.k + b * p.k_b + kvh * p.k_h + lane * PER;
  const u16* vb = p.v + b * p.v_b + kvh * p.v_h + lane * PER;
  const u8* mb = p.mask + b * p.m_b;

  float q[PER];
  u32 qraw[PER / 2];
  load_raw<PER>(p.q + b * p.q_b + h * p.q_h + lane * PER, qraw);
  to_floats<PER, BF16>(qraw, q);
#pragma unroll
  for (int i = 0; i < PER; i++) q[i] *= p.scale;

  float mx = NEG_INF, sum = 0.f, acc[PER] = {};
  for (int j0 = warp; j0 < p.len; j0 += ATTN_WARPS * KEYS) {
    // A static cache is masked past each sequence's length: those rows are not loaded (the condition
    // is warp-uniform), a third of the cache on average over a 64 + 128-token generation.
    bool live[KEYS];
    u32 kraw[KEYS][PER / 2], vraw[KEYS][PER / 2];  // raw halves: registers for 8 keys in flight
#pragma unroll
    for (int u = 0; u < KEYS; u++) {
      const int j = j0 + u * ATTN_WARPS;
      live[u] = j < p.len && mb[j];
    }
#pragma unroll
    for (int u = 0; u < KEYS; u++) {
      const int j = j0 + u * ATTN_WARPS;
#pragma unroll
      for (int i = 0; i < PER / 2; i++) kraw[u][i] = vraw[u][i] = 0u;
      if (live[u]) {
        load_raw<PER>(kb + j * p.k_l, kraw[u]);
        load_raw<PER>(vb + j * p.v_l, vraw[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < KEYS; u++) {
      float kv[PER], vv[PER], s = 0.f;
      to_floats<PER, BF16>(kraw[u], kv);
#pragma unroll
      for (int i = 0; i < PER; i++) s += q[i] * kv[i];
#pragma unroll
      for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (!live[u]) continue;  // warp-uniform
      to_floats<PER, BF16>(vraw[u], vv);
      const float m = fmaxf(mx, s);
      const float keep = mx == NEG_INF ? 0.f : __expf(mx - m), e = __expf(s - m);
      sum = sum * keep + e;
#pragma unroll
      for (int i = 0; i < PER; i++) acc[i] = acc[i] * keep + e * vv[i];
      mx = m;
    }
  }
  // merge the warps: each one's sum and row rescaled to the CTA's max
#pragma unroll
  for (int i = 0; i < PER; i++) part[warp][lane * PER + i] = acc[i];
  if (lane == 0) { wmax[warp] = mx; wsum[warp] = sum; }
  __syncthreads();
  float top = NEG_INF;
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; w++) top = fmaxf(top, wmax[w]);
  float total = 0.f, scale[ATTN_WARPS];
#pragma unroll
  for (int w = 0; w < ATTN_WARPS; w++) {
    scale[w] = wmax[w] == NEG_INF ? 0.f : __expf(wmax[w] - top);
    total += wsum[w] * scale[w];
  }
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int d = threadIdx.x; d < D; d += ATTN_WARPS * 32) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++) o += part[w][d] * scale[w];
    p.out[(i64)blockIdx.x * D + d] = from_float<BF16>(o * inv);
  }
}
