// Schema and argument checks of per_example_linear_grad, the per-example (projected) gradient of a
// Linear layer's weight for training-data influence. Kernels register per device in
// csrc/cpu/influence_cpu.cpp and csrc/cuda/influence_cuda.cu; specification in reference.py.
// The op is autograd-free: influence needs gradients as data, never gradients of them.
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <torch/library.h>

#include "saliency_fast/arg_checks.h"
#include "saliency_fast/influence_args.h"

namespace saliency_fast::influence {
namespace {

// x [n, t, d] projected by p [d, k] (or kept) in the accumulation dtype, contiguous.
at::Tensor project(const at::Tensor& x, const std::optional<at::Tensor>& p, const char* p_name, at::ScalarType acc) {
  if (!p.has_value()) return x.to(acc).contiguous();
  checks::check_like(p_name, *p, "activations", x);
  TORCH_CHECK_VALUE(p->dim() == 2 && p->size(0) == x.size(2), p_name, " must have shape (", x.size(2), ", k), got ",
                    p->sizes());
  return at::matmul(x.to(acc), p->to(acc)).contiguous();
}

}  // namespace

LinearGradArgs prepare_linear_grad(const at::Tensor& activations, const at::Tensor& output_grads,
                                   const std::optional<at::Tensor>& in_projection,
                                   const std::optional<at::Tensor>& out_projection) {
  checks::check_floating("activations", activations);
  TORCH_CHECK_VALUE(activations.dim() == 3, "activations must have shape (N, T, d_in), got ", activations.sizes());
  checks::check_like("output_grads", output_grads, "activations", activations);
  TORCH_CHECK_VALUE(output_grads.dim() == 3 && output_grads.size(0) == activations.size(0) &&
                        output_grads.size(1) == activations.size(1),
                    "output_grads must have shape (N, T, d_out) = (", activations.size(0), ", ", activations.size(1),
                    ", d_out), got ", output_grads.sizes());
  const auto acc = at::toOpMathType(activations.scalar_type());
  LinearGradArgs args;
  args.projected_in = project(activations, in_projection, "in_projection", acc);
  args.projected_out = project(output_grads, out_projection, "out_projection", acc);
  args.n = activations.size(0);
  args.steps = activations.size(1);
  args.k_in = args.projected_in.size(2);
  args.k_out = args.projected_out.size(2);
  args.out = at::empty({args.n, args.k_out, args.k_in}, activations.options().dtype(acc));
  return args;
}

}  // namespace saliency_fast::influence

TORCH_LIBRARY_FRAGMENT(saliency_fast, m) {
  m.def(
      "per_example_linear_grad(Tensor activations, Tensor output_grads, Tensor? in_projection=None, "
      "Tensor? out_projection=None) -> Tensor");
}
