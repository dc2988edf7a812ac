// The split-K reduce: y = the sum of the fp32 partial slices [split, N, M] (+ bias), in slice order, so the
// output is bitwise reproducible.  For the SpMM kernels' split-K (spmm_mma.cu) and sliced ELL's (sell.cu).
#include "common.cuh"

// Sums the split-K slices in slice order (deterministic), adds the bias (of output column i % m) and
// casts to the output dtype.
template <bool BF16>
__device__ __forceinline__ void reduce_partials(const float* partial, u16* y, int split, i64 count, const u16* bias,
                                                int m) {
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int z = 0; z < split; z++) s += partial[z * count + i];
    if (bias) s += to_float<BF16>(bias[i % m]);
    y[i] = from_float<BF16>(s);
  }
}

template <bool BF16>
__global__ void splitk_reduce(const float* partial, u16* y, int split, i64 count, const u16* bias, int m) {
  reduce_partials<BF16>(partial, y, split, count, bias, m);
}
