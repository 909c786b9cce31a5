#include "saliency_fast/ig_args.h"

#include "saliency_fast/arg_checks.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

namespace saliency_fast::ig {
namespace {

using checks::check_floating;
using checks::check_one_dim;

void check_x_and_baseline(const at::Tensor& x, const at::Tensor& baseline) {
  checks::check_defined("x", x);
  checks::check_defined("baseline", baseline);
  check_floating("x", x);
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least one dim (the last is the embedding dim), got a scalar");
  checks::check_same_device("baseline", baseline, "x", x);
  checks::check_same_dtype("baseline", baseline, "x", x);
  checks::check_same_shape("baseline", baseline, "x", x);
}

Reduce parse_reduce(std::string_view reduce) {
  if (reduce == "none") return Reduce::None;
  if (reduce == "sum") return Reduce::Sum;
  if (reduce == "l2") return Reduce::L2;
  if (reduce == "abs_sum") return Reduce::AbsSum;
  TORCH_CHECK_VALUE(false, "reduce must be one of ('none', 'sum', 'l2', 'abs_sum'), got '", reduce, "'");
}

// partial / acc: same device and shape as x, dtype x's or (for half types) float32.
void check_accumulator(const char* name, const at::Tensor& t, const at::Tensor& x) {
  checks::check_same_device(name, t, "x", x);
  checks::check_same_shape(name, t, "x", x);
  const auto opmath = at::toOpMathType(x.scalar_type());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type() || t.scalar_type() == opmath, name, " must have dtype ",
                   x.scalar_type(), " or ", opmath, " (x's dtype or its accumulation dtype), got ", t.scalar_type());
}

AccumulateArgs prepare_accumulate_common(const at::Tensor& grads, const at::Tensor& weights, const at::Tensor& x,
                                         const at::Tensor& baseline) {
  check_x_and_baseline(x, baseline);
  TORCH_CHECK_VALUE(grads.defined() && weights.defined(), "grads and weights must be defined tensors");
  checks::check_same_device("grads", grads, "x", x);
  checks::check_same_dtype("grads", grads, "x", x);
  TORCH_CHECK_VALUE(grads.dim() == x.dim() + 1 && grads.sizes().slice(1) == x.sizes(),
                    "grads must have shape (steps, *x.shape) with x.shape = ", x.sizes(), ", got ", grads.sizes());
  check_floating("weights", weights);
  check_one_dim("weights", weights);
  checks::check_same_device("weights", weights, "x", x);
  TORCH_CHECK_VALUE(weights.size(0) == grads.size(0), "weights must have one entry per step of grads (",
                    grads.size(0), "), got ", weights.size(0));

  AccumulateArgs args;
  args.grads = grads.contiguous();
  args.weights = weights.to(at::toOpMathType(x.scalar_type())).contiguous();
  args.x = x.contiguous();
  args.baseline = baseline.contiguous();
  args.steps = grads.size(0);
  args.numel = x.numel();
  args.dim = x.size(-1);
  args.rows = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  return args;
}

}  // namespace

InterpolateArgs prepare_interpolate(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& alphas,
                                    const at::Tensor* out) {
  check_x_and_baseline(x, baseline);
  TORCH_CHECK_VALUE(alphas.defined(), "alphas must be a defined tensor");
  check_floating("alphas", alphas);
  check_one_dim("alphas", alphas);
  checks::check_same_device("alphas", alphas, "x", x);

  InterpolateArgs args;
  args.x = x.contiguous();
  args.baseline = baseline.contiguous();
  args.alphas = alphas.to(at::toOpMathType(x.scalar_type())).contiguous();
  args.steps = alphas.size(0);
  args.numel = x.numel();
  std::vector<int64_t> shape{args.steps};
  shape.insert(shape.end(), x.sizes().begin(), x.sizes().end());
  if (out == nullptr) {
    args.out = at::empty(shape, x.options().memory_format(at::MemoryFormat::Contiguous));
    return args;
  }
  TORCH_CHECK_VALUE(out->defined(), "out must be a defined tensor");
  checks::check_same_device("out", *out, "x", x);
  checks::check_same_dtype("out", *out, "x", x);
  TORCH_CHECK_VALUE(out->sizes() == at::IntArrayRef(shape), "out must have shape (len(alphas), *x.shape) = ",
                    at::IntArrayRef(shape), ", got ", out->sizes());
  TORCH_CHECK_VALUE(out->is_contiguous(), "out must be contiguous (a buffer the op writes in place)");
  // the kernel reads x and baseline while it writes out
  for (const auto& [name, input] : {std::pair<const char*, const at::Tensor&>{"x", x}, {"baseline", baseline}}) {
    const auto overlap = at::get_overlap_status(*out, input);
    TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial,
                      "out shares memory with ", name, "; pass a separate buffer");
  }
  args.out = *out;
  return args;
}

AccumulateArgs prepare_accumulate(const at::Tensor& grads, const at::Tensor& weights, const at::Tensor& x,
                                  const at::Tensor& baseline, std::string_view reduce,
                                  const std::optional<at::Tensor>& partial) {
  AccumulateArgs args = prepare_accumulate_common(grads, weights, x, baseline);
  args.reduce = parse_reduce(reduce);
  auto out_dtype = x.scalar_type();
  if (partial.has_value() && partial->defined()) {
    check_accumulator("partial", *partial, x);
    args.partial = partial->contiguous();
    out_dtype = partial->scalar_type();
  }
  const auto out_shape = args.reduce == Reduce::None ? x.sizes() : x.sizes().slice(0, x.dim() - 1);
  args.out = at::empty(out_shape, x.options().dtype(out_dtype).memory_format(at::MemoryFormat::Contiguous));
  return args;
}

AccumulateArgs prepare_accumulate_inplace(const at::Tensor& acc, const at::Tensor& grads, const at::Tensor& weights,
                                          const at::Tensor& x, const at::Tensor& baseline) {
  AccumulateArgs args = prepare_accumulate_common(grads, weights, x, baseline);
  TORCH_CHECK_VALUE(acc.defined(), "acc must be a defined tensor");
  check_accumulator("acc", acc, x);
  TORCH_CHECK_VALUE(at::has_internal_overlap(acc) != at::MemOverlap::Yes,
                    "acc must not have overlapping memory (e.g. an expanded tensor); pass a writable buffer");
  args.partial = acc.contiguous();
  args.out = args.partial;
  return args;
}

void finish_accumulate_inplace(const at::Tensor& acc, const AccumulateArgs& args) {
  if (!args.out.is_same(acc)) {
    acc.copy_(args.out);
  }
}

}  // namespace saliency_fast::ig
