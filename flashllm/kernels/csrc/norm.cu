// Row normalization (LayerNorm, RMSNorm) for decode-sized inputs: one 256-thread CTA per row.
//
// At decode a norm sees a handful of rows (the batch) of a few thousand values.  On an H200 torch's
// LayerNorm kernel took ~13 us for 8 rows of 7168 (OPT-30B), twice per layer: 1.3 ms of an 18 ms
// step.  Here every row gets a whole CTA and the work is a few coalesced passes over 14 KB.
// Math in fp32; the result is rounded to the input dtype the way torch does:
//   LayerNorm: (x - mean) * rstd * w + b, one rounding at the end (two-pass mean and variance);
//   RMSNorm (Hugging Face's order): h = round(x * rstd), then round(h * w).
#include "common.cuh"

#define NORM_THREADS 256

// Sum over the CTA; every thread gets the total.  `red` holds one float per warp.
__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // the previous call's readers are done with `red`
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = red[lane % (NORM_THREADS / 32)];  // each group of 8 lanes holds all 8 partial sums
#pragma unroll
  for (int o = NORM_THREADS / 64; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

#define NORM_MAX_CHUNKS 8  // 16-byte chunks per thread: rows of up to 8 * 8 * 256 = 16384 values

template <bool BF16>
__device__ __forceinline__ void unpack8(const uint4& q, float (&v)[8]) {
  const u32 w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    v[2 * i] = to_float<BF16>((u16)(w[i] & 0xFFFF));
    v[2 * i + 1] = to_float<BF16>((u16)(w[i] >> 16));
  }
}

// y[r] = norm(x[r]) for row r = blockIdx.x; rows are d values apart in x and y (d % 8 == 0, rows
// 16-byte aligned, d <= 16384: the launcher checks).  w, b may be null (no affine weight / no bias).
// The row stays in registers between the passes.
template <bool BF16, bool RMS>
__global__ void __launch_bounds__(NORM_THREADS) row_norm(const u16* __restrict__ x, const u16* __restrict__ w,
                                                         const u16* __restrict__ b, u16* __restrict__ y, int d,
                                                         float eps) {
  __shared__ float red[NORM_THREADS / 32];
  const uint4* xr = (const uint4*)(x + (i64)blockIdx.x * d);
  uint4* yr = (uint4*)(y + (i64)blockIdx.x * d);
  const int chunks = d >> 3;
  float v[NORM_MAX_CHUNKS][8];
  float s = 0.f;
#pragma unroll
  for (int c = 0; c < NORM_MAX_CHUNKS; c++) {
    const int i = threadIdx.x + c * NORM_THREADS;
    if (i < chunks) {
      unpack8<BF16>(xr[i], v[c]);
#pragma unroll
      for (int e = 0; e < 8; e++) s += v[c][e];
    }
  }
  const float mean = RMS ? 0.f : block_sum(s, red) / d;
  float ss = 0.f;
#pragma unroll
  for (int c = 0; c < NORM_MAX_CHUNKS; c++)
    if (threadIdx.x + c * NORM_THREADS < chunks)
#pragma unroll
      for (int e = 0; e < 8; e++) ss += (v[c][e] - mean) * (v[c][e] - mean);
  const float rstd = rsqrtf(block_sum(ss, red) / d + eps);
#pragma unroll
  for (int c = 0; c < NORM_MAX_CHUNKS; c++) {
    const int i = threadIdx.x + c * NORM_THREADS;
    if (i >= chunks) continue;
    float wv[8], bv[8];
    if (w) unpack8<BF16>(((const uint4*)w)[i], wv);
    if (b) unpack8<BF16>(((const uint4*)b)[i], bv);
    u32 out[4];
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      u16 h[2];
#pragma unroll
      for (int k = 0; k < 2; k++) {
        float t = (v[c][e + k] - mean) * rstd;
        if (RMS) {
          t = to_float<BF16>(from_float<BF16>(t));  // Hugging Face rounds before the weight
          if (w) t *= wv[e + k];
        } else {
          if (w) t *= wv[e + k];
          if (b) t += bv[e + k];
        }
        h[k] = from_float<BF16>(t);
      }
      out[e / 2] = (u32)h[0] | ((u32)h[1] << 16);
    }
    yr[i] = make_uint4(out[0], out[1], out[2], out[3]);
  }
}
