// CPU kernel of per_example_linear_grad. The projections are BLAS matmuls (in prepare_linear_grad);
// this kernel contracts over positions. Each (example, output row) is one task: the projected
// output gradients and activations are transposed to [n, k, t] so every time_dot reads contiguous
// memory.
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
  const auto a_t = args.projected_in.transpose(1, 2).contiguous();   // [n, k_in, t]
  const auto g_t = args.projected_out.transpose(1, 2).contiguous();  // [n, k_out, t]
  const int64_t steps = args.steps, k_in = args.k_in, k_out = args.k_out;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, k_in * steps));
  AT_DISPATCH_FLOATING_TYPES(args.out.scalar_type(), "per_example_linear_grad_cpu", [&] {
    const scalar_t* a = a_t.const_data_ptr<scalar_t>();
    const scalar_t* g = g_t.const_data_ptr<scalar_t>();
    scalar_t* out = args.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, args.n * k_out, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t example = row / k_out;
        const scalar_t* g_row = g + row * steps;
        const scalar_t* a_example = a + example * k_in * steps;
        scalar_t* out_row = out + row * k_in;
        for (int64_t i = 0; i < k_in; ++i) out_row[i] = time_dot(g_row, 1, a_example + i * steps, 1, steps);
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
