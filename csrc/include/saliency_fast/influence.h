// Per-example Linear-layer gradients for training-data influence, shared by the CPU and CUDA
// kernels. For one example, the (projected) gradient of a Linear layer's weight is
//   out[o, i] = sum_t G[t, o] * A[t, i]
// with G = g P_out (output gradients, projected) and A = a P_in (input activations, projected),
// both already in the accumulation type. Both devices sum over positions t from t = 0 upward with
// one multiply-add per term: the CUDA kernel one output element at a time (time_dot), the CPU
// kernel a whole output row per position (add_scaled_row, which vectorizes over the row).
#pragma once

#include <cstdint>

#include "saliency_fast/common.h"

namespace saliency_fast::influence {

// sum_t g[t * g_stride] * a[t * a_stride], accumulated in acc_t from t = 0 upward.
template <typename acc_t>
HOST_DEVICE acc_t time_dot(const acc_t* g, int64_t g_stride, const acc_t* a, int64_t a_stride, int64_t steps) {
  acc_t sum = acc_t(0);
  for (int64_t t = 0; t < steps; ++t) sum += g[t * g_stride] * a[t * a_stride];
  return sum;
}

// out[i] += g * a[i] for i < n: position t's term of every element of one output row.
template <typename acc_t>
HOST_DEVICE void add_scaled_row(acc_t* __restrict__ out, acc_t g, const acc_t* __restrict__ a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] += g * a[i];
}

}  // namespace saliency_fast::influence
