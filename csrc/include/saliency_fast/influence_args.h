// Validation and preparation of per_example_linear_grad's arguments, shared by the CPU and CUDA
// entry points. The checks mirror check_per_example_linear_grad_args in saliency_fast/_checks.py.
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>

namespace saliency_fast::influence {

// activations [n, t, d_in] and output_grads [n, t, d_out] projected (when a projection is given)
// into the accumulation dtype, each laid out [n, t, k] contiguous; out [n, k_out, k_in].
struct LinearGradArgs {
  at::Tensor projected_in, projected_out, out;
  int64_t n = 0, steps = 0, k_in = 0, k_out = 0;
};

LinearGradArgs prepare_linear_grad(const at::Tensor& activations, const at::Tensor& output_grads,
                                   const std::optional<at::Tensor>& in_projection,
                                   const std::optional<at::Tensor>& out_projection);

}  // namespace saliency_fast::influence
