// CPU kernels of the IG ops. Rows (all dims but the last) are split across threads; each thread
// walks its contiguous span of elements in cache-sized tiles, so every step's gradients stream
// through once and the running sums stay in L1.
#include <algorithm>
#include <array>
#include <optional>
#include <string_view>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "saliency_fast/ig.h"
#include "saliency_fast/ig_args.h"

namespace saliency_fast::ig {
namespace {

// Elements per tile: 16 KiB of float running sums, leaving L1 room for the streamed inputs.
constexpr int64_t kTile = 4096;
// Elementwise work per parallel task, as ATen uses.
constexpr int64_t kGrain = 32768;

// ---------------------------------------------------------------------------------------------
// ig_interpolate: out[k, e] = interpolate_point(x[e], baseline[e], alphas[k]).

template <typename scalar_t>
void interpolate_kernel(const InterpolateArgs& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* x = args.x.const_data_ptr<scalar_t>();
  const scalar_t* baseline = args.baseline.const_data_ptr<scalar_t>();
  const opmath_t* alphas = args.alphas.const_data_ptr<opmath_t>();
  scalar_t* out = args.out.mutable_data_ptr<scalar_t>();
  const int64_t numel = args.numel;
  const int64_t steps = args.steps;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, steps));

  at::parallel_for(0, numel, grain, [&](int64_t begin, int64_t end) {
    std::array<opmath_t, kTile> xs, bs;
    for (int64_t start = begin; start < end; start += kTile) {
      const int64_t n = std::min(kTile, end - start);
      for (int64_t j = 0; j < n; ++j) {
        xs[j] = static_cast<opmath_t>(x[start + j]);
        bs[j] = static_cast<opmath_t>(baseline[start + j]);
      }
      for (int64_t k = 0; k < steps; ++k) {
        const opmath_t alpha = alphas[k];
        scalar_t* dst = out + k * numel + start;
        for (int64_t j = 0; j < n; ++j) {
          dst[j] = static_cast<scalar_t>(interpolate_point(xs[j], bs[j], alpha));
        }
      }
    }
  });
}

at::Tensor ig_interpolate_cpu(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& alphas) {
  InterpolateArgs args = prepare_interpolate(x, baseline, alphas);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ig_interpolate_cpu",
                                  [&] { interpolate_kernel<scalar_t>(args); });
  return args.out;
}

// ---------------------------------------------------------------------------------------------
// ig_accumulate: out = reduce(finalize(sum_k w_k * grads[k], x, baseline, partial)).

// sums[j] = sum_k weights[k] * grads[k * numel + j] for the n elements of one tile.
template <typename scalar_t, typename opmath_t>
void weighted_sum_tile(const scalar_t* grads, int64_t numel, const opmath_t* weights, int64_t steps, int64_t n,
                       opmath_t* sums) {
  std::fill(sums, sums + n, opmath_t(0));
  for (int64_t k = 0; k < steps; ++k) {
    const opmath_t w = weights[k];
    const scalar_t* g = grads + k * numel;
    for (int64_t j = 0; j < n; ++j) {
      sums[j] = accumulate_step(sums[j], w, static_cast<opmath_t>(g[j]));
    }
  }
}

template <typename scalar_t, typename out_t>
struct AccumulatePointers {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* grads;
  const opmath_t* weights;
  const scalar_t* x;
  const scalar_t* baseline;
  const out_t* partial;  // nullptr when absent
  out_t* out;

  explicit AccumulatePointers(const AccumulateArgs& a)
      : grads(a.grads.const_data_ptr<scalar_t>()),
        weights(a.weights.const_data_ptr<opmath_t>()),
        x(a.x.const_data_ptr<scalar_t>()),
        baseline(a.baseline.const_data_ptr<scalar_t>()),
        partial(a.partial.defined() ? a.partial.const_data_ptr<out_t>() : nullptr),
        out(a.out.mutable_data_ptr<out_t>()) {}

  opmath_t value(opmath_t sum, int64_t e) const {
    const opmath_t p = partial != nullptr ? static_cast<opmath_t>(partial[e]) : opmath_t(0);
    return finalize(sum, static_cast<opmath_t>(x[e]), static_cast<opmath_t>(baseline[e]), p);
  }
};

// Calls tile(start, n, sums, state) over the tiles of each thread's rows; `state` lives as long
// as the thread's share of rows (a reduction carries a row's running value in it).
template <typename scalar_t, typename out_t, typename TileFn>
void for_each_tile(const AccumulateArgs& args, const AccumulatePointers<scalar_t, out_t>& p, const TileFn& tile) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t dim = args.dim;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, dim * std::max<int64_t>(1, args.steps)));
  at::parallel_for(0, args.rows, grain, [&](int64_t row_begin, int64_t row_end) {
    std::array<opmath_t, kTile> sums;
    opmath_t state{};
    const int64_t end = row_end * dim;
    for (int64_t start = row_begin * dim; start < end; start += kTile) {
      const int64_t n = std::min(kTile, end - start);
      weighted_sum_tile(p.grads + start, args.numel, p.weights, args.steps, n, sums.data());
      tile(start, n, sums.data(), state);
    }
  });
}

template <typename scalar_t, typename out_t>
void accumulate_unreduced(const AccumulateArgs& args) {
  const AccumulatePointers<scalar_t, out_t> p(args);
  for_each_tile(args, p, [&](int64_t start, int64_t n, const auto* sums, auto& /*state*/) {
    for (int64_t j = 0; j < n; ++j) {
      p.out[start + j] = static_cast<out_t>(p.value(sums[j], start + j));
    }
  });
}

// A tile may end inside a row (dim > kTile) or hold many rows: the row's running reduction
// state carries across tiles of the same thread, and rows never straddle threads.
template <typename scalar_t, typename out_t, typename Reduction>
void accumulate_reduced(const AccumulateArgs& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const AccumulatePointers<scalar_t, out_t> p(args);
  const int64_t dim = args.dim;
  if (args.numel == 0) {  // rows of an empty embedding dim reduce to the identity
    for (int64_t row = 0; row < args.rows; ++row) p.out[row] = static_cast<out_t>(Reduction::finalize(Reduction::identity()));
    return;
  }
  for_each_tile(args, p, [&](int64_t start, int64_t n, const opmath_t* sums, opmath_t& state) {
    int64_t e = start;
    const int64_t end = start + n;
    while (e < end) {
      const int64_t row = e / dim;
      const int64_t row_start = row * dim;
      const int64_t seg_end = std::min(end, row_start + dim);
      if (e == row_start) state = Reduction::identity();
      opmath_t s = state;
      for (; e < seg_end; ++e) {
        s = Reduction::combine(s, Reduction::map(p.value(sums[e - start], e)));
      }
      state = s;
      if (seg_end == row_start + dim) p.out[row] = static_cast<out_t>(Reduction::finalize(s));
    }
  });
}

template <typename scalar_t, typename out_t>
void accumulate_kernel(const AccumulateArgs& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (args.reduce == Reduce::None) {
    accumulate_unreduced<scalar_t, out_t>(args);
    return;
  }
  with_reduction<opmath_t>(args.reduce, [&](auto reduction) {
    accumulate_reduced<scalar_t, out_t, decltype(reduction)>(args);
  });
}

// The output has x's dtype, or float32 when a float32 partial/acc accompanies half-type x.
void dispatch_accumulate(const AccumulateArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "ig_accumulate_cpu", [&] {
    if (args.out.scalar_type() == args.x.scalar_type()) {
      accumulate_kernel<scalar_t, scalar_t>(args);
    } else {
      accumulate_kernel<scalar_t, at::opmath_type<scalar_t>>(args);
    }
  });
}

at::Tensor ig_accumulate_cpu(const at::Tensor& grads, const at::Tensor& weights, const at::Tensor& x,
                             const at::Tensor& baseline, c10::string_view reduce,
                             const std::optional<at::Tensor>& partial) {
  AccumulateArgs args = prepare_accumulate(grads, weights, x, baseline, std::string_view(reduce.data(), reduce.size()), partial);
  dispatch_accumulate(args);
  return args.out;
}

void ig_accumulate_inplace_cpu(const at::Tensor& acc, const at::Tensor& grads, const at::Tensor& weights,
                               const at::Tensor& x, const at::Tensor& baseline) {
  AccumulateArgs args = prepare_accumulate_inplace(acc, grads, weights, x, baseline);
  dispatch_accumulate(args);
  finish_accumulate_inplace(acc, args);
}

}  // namespace
}  // namespace saliency_fast::ig

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) {
  m.impl("ig_interpolate", &saliency_fast::ig::ig_interpolate_cpu);
  m.impl("ig_accumulate", &saliency_fast::ig::ig_accumulate_cpu);
  m.impl("ig_accumulate_", &saliency_fast::ig::ig_accumulate_inplace_cpu);
}
