// CPU kernel of per_example_linear_grad. The projections are BLAS matmuls (in prepare_linear_grad);
// this kernel contracts over positions. Each (example, output row) is one task, accumulating the
// row position by position with add_scaled_row (contiguous, vectorized over the row).
#include <algorithm>
#include <optional>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "saliency_fast/influence.h"
#include "saliency_fast/influence_args.h"

namespace saliency_fast::influence {
namespace {

at::Tensor per_example_linear_grad_cpu(const at::Tensor& activations, const at::Tensor& output_grads,
                                       const std::optional<at::Tensor>& in_projection,
                                       const std::optional<at::Tensor>& out_projection) {
  auto args = prepare_linear_grad(activations, output_grads, in_projection, out_projection);
  if (args.out.numel() == 0) return args.out;
  const int64_t steps = args.steps, k_in = args.k_in, k_out = args.k_out;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, k_in * steps));
  AT_DISPATCH_FLOATING_TYPES(args.out.scalar_type(), "per_example_linear_grad_cpu", [&] {
    const scalar_t* a = args.projected_in.const_data_ptr<scalar_t>();   // [n, t, k_in]
    const scalar_t* g = args.projected_out.const_data_ptr<scalar_t>();  // [n, t, k_out]
    scalar_t* out = args.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, args.n * k_out, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t example = row / k_out, o = row % k_out;
        scalar_t* out_row = out + row * k_in;
        std::fill(out_row, out_row + k_in, scalar_t(0));
        for (int64_t t = 0; t < steps; ++t) {
          add_scaled_row(out_row, g[(example * steps + t) * k_out + o], a + (example * steps + t) * k_in, k_in);
        }
      }
    });
  });
  return args.out;
}

}  // namespace
}  // namespace saliency_fast::influence

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) {
  m.impl("per_example_linear_grad", &saliency_fast::influence::per_example_linear_grad_cpu);
}
