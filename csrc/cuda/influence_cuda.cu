// CUDA kernel of per_example_linear_grad: the projections are cuBLAS matmuls (in
// prepare_linear_grad); this kernel contracts over positions with saliency_fast/influence.h's
// time_dot. A block covers one example and a tile of kTile output columns for kRows output rows;
// consecutive threads take consecutive columns, so reads of the [n, t, k] activations coalesce and
// the output-gradient element is a broadcast.
#include <optional>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "saliency_fast/influence.h"
#include "saliency_fast/influence_args.h"

namespace saliency_fast::influence {
namespace {

constexpr int kTile = 128;
constexpr int kRows = 4;

template <typename acc_t>
__global__ void linear_grad_kernel(const acc_t* __restrict__ g, const acc_t* __restrict__ a, int64_t steps,
                                   int64_t k_out, int64_t k_in, acc_t* __restrict__ out) {
  const int64_t example = blockIdx.z;
  const int64_t i = int64_t(blockIdx.x) * kTile + threadIdx.x;
  const int64_t o = int64_t(blockIdx.y) * kRows + threadIdx.y;
  if (i >= k_in || o >= k_out) return;
  const acc_t* g_col = g + example * steps * k_out + o;
  const acc_t* a_col = a + example * steps * k_in + i;
  out[(example * k_out + o) * k_in + i] = time_dot(g_col, k_out, a_col, k_in, steps);
}

at::Tensor per_example_linear_grad_cuda(const at::Tensor& activations, const at::Tensor& output_grads,
                                        const std::optional<at::Tensor>& in_projection,
                                        const std::optional<at::Tensor>& out_projection) {
  const c10::cuda::CUDAGuard guard(activations.device());
  auto args = prepare_linear_grad(activations, output_grads, in_projection, out_projection);
  if (args.out.numel() == 0) return args.out;
  TORCH_CHECK_VALUE(args.n <= 65535, "activations: at most 65535 examples per call on CUDA, got ", args.n);
  const dim3 block(kTile, kRows);
  const dim3 grid((args.k_in + kTile - 1) / kTile, (args.k_out + kRows - 1) / kRows, args.n);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(args.out.scalar_type(), "per_example_linear_grad_cuda", [&] {
    linear_grad_kernel<scalar_t><<<grid, block, 0, stream>>>(
        args.projected_out.const_data_ptr<scalar_t>(), args.projected_in.const_data_ptr<scalar_t>(), args.steps,
        args.k_out, args.k_in, args.out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return args.out;
}

}  // namespace
}  // namespace saliency_fast::influence

TORCH_LIBRARY_IMPL(saliency_fast, CUDA, m) {
  m.impl("per_example_linear_grad", &saliency_fast::influence::per_example_linear_grad_cuda);
}
