// Per-example Linear-layer gradients for training-data influence, shared by the CPU and CUDA
// kernels. For one example, the (projected) gradient of a Linear layer's weight is
//   out[o, i] = sum_t G[t, o] * A[t, i]
// with G = g P_out (output gradients, projected) and A = a P_in (input activations, projected),
// both already in the accumulation type. The sum over positions t runs in the same order on both
// devices, so the CPU tests check the arithmetic the GPU runs.
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

}  // namespace saliency_fast::influence
