// Validation and preparation of the IG ops' arguments, shared by the CPU and CUDA entry points.
// The checks mirror saliency_fast/_checks.py (ValueError for shapes/devices/options, TypeError
// for dtypes, each naming the argument), so calling torch.ops.saliency_fast.* directly with bad
// input raises the same kind of error and a kernel never reads out of bounds.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <ATen/core/Tensor.h>

#include "saliency_fast/ig.h"

namespace saliency_fast::ig {

// Contiguous inputs, alphas in the opmath dtype, and the allocated output.
struct InterpolateArgs {
  at::Tensor x, baseline, alphas, out;
  int64_t steps = 0;  // len(alphas)
  int64_t numel = 0;  // elements of x
};

// Contiguous inputs, weights in the opmath dtype, the output, and sizes. `partial` is undefined
// when absent; for the in-place op it is the (contiguous) accumulator and `out` aliases it.
struct AccumulateArgs {
  at::Tensor grads, weights, x, baseline, partial, out;
  Reduce reduce = Reduce::None;
  int64_t steps = 0;  // grads.size(0)
  int64_t numel = 0;  // elements of x
  int64_t dim = 0;    // the embedding (last) dim of x
  int64_t rows = 0;   // numel / dim: one reduced output per row
};

// `out` (ig_interpolate_out): a contiguous tensor of shape (len(alphas), *x.shape) and x's dtype on
// x's device, written in place; absent, a fresh output is allocated.
InterpolateArgs prepare_interpolate(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& alphas,
                                    const at::Tensor* out = nullptr);

AccumulateArgs prepare_accumulate(const at::Tensor& grads, const at::Tensor& weights, const at::Tensor& x,
                                  const at::Tensor& baseline, std::string_view reduce,
                                  const std::optional<at::Tensor>& partial);

// ig_accumulate_: `acc` becomes both partial and out (a contiguous copy when acc is strided;
// finish_accumulate_inplace then writes it back).
AccumulateArgs prepare_accumulate_inplace(const at::Tensor& acc, const at::Tensor& grads, const at::Tensor& weights,
                                          const at::Tensor& x, const at::Tensor& baseline);
void finish_accumulate_inplace(const at::Tensor& acc, const AccumulateArgs& args);

// A backend's ig_accumulate and ig_accumulate_ ops: the shared preparation around its kernel
// dispatch (`Dispatch` fills args.out), so only the dispatch differs between CPU and CUDA.
// A backend's ig_interpolate and ig_interpolate_out ops around its kernel dispatch (which fills args.out).
template <void (*Dispatch)(const InterpolateArgs&)>
at::Tensor interpolate_op(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& alphas) {
  InterpolateArgs args = prepare_interpolate(x, baseline, alphas);
  Dispatch(args);
  return args.out;
}

template <void (*Dispatch)(const InterpolateArgs&)>
void interpolate_out_op(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& alphas,
                        const at::Tensor& out) {
  InterpolateArgs args = prepare_interpolate(x, baseline, alphas, &out);
  Dispatch(args);
}

template <void (*Dispatch)(const AccumulateArgs&)>
at::Tensor accumulate_op(const at::Tensor& grads, const at::Tensor& weights, const at::Tensor& x,
                         const at::Tensor& baseline, c10::string_view reduce,
                         const std::optional<at::Tensor>& partial) {
  AccumulateArgs args =
      prepare_accumulate(grads, weights, x, baseline, std::string_view(reduce.data(), reduce.size()), partial);
  Dispatch(args);
  return args.out;
}

template <void (*Dispatch)(const AccumulateArgs&)>
void accumulate_inplace_op(const at::Tensor& acc, const at::Tensor& grads, const at::Tensor& weights,
                           const at::Tensor& x, const at::Tensor& baseline) {
  AccumulateArgs args = prepare_accumulate_inplace(acc, grads, weights, x, baseline);
  Dispatch(args);
  finish_accumulate_inplace(acc, args);
}

}  // namespace saliency_fast::ig
