// CPU kernels of the IG ops. Rows (all dims but the last) are split across threads; each thread
// walks its contiguous span of elements in tiles that fit in cache, so every step's gradients
// stream through memory once while the running sums stay in L1/L2. Inputs are widened to the
// opmath dtype a tile at a time and results rounded once on store (see convert.h).
#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <string_view>
#include <type_traits>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "convert.h"
#include "saliency_fast/ig.h"
#include "saliency_fast/ig_args.h"

namespace saliency_fast::ig {
namespace {

using cpu::narrow;
using cpu::widen;

// Elements per tile: 8 KiB of float per buffer, so a tile's working set stays near L1.
constexpr int64_t kTile = 2048;
// Multiply-adds per parallel task, as ATen's GRAIN_SIZE.
constexpr int64_t kGrain = 32768;

template <typename T>
using TileBuffer = std::array<T, kTile>;

// Writes n opmath values to dst: fill(dst) directly when dst is opmath, else fill(scratch) and
// round into dst.
template <typename opmath_t, typename out_t, typename Fill>
void store_tile(out_t* dst, int64_t n, opmath_t* scratch, const Fill& fill) {
  if constexpr (std::is_same_v<out_t, opmath_t>) {
    fill(dst);
  } else {
    fill(scratch);
    narrow(scratch, dst, n);
  }
}

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
    TileBuffer<opmath_t> x_buf, b_buf, out_buf;
    for (int64_t start = begin; start < end; start += kTile) {
      const int64_t n = std::min(kTile, end - start);
      const opmath_t* xs = widen(x + start, n, x_buf.data());
      const opmath_t* bs = widen(baseline + start, n, b_buf.data());
      for (int64_t k = 0; k < steps; ++k) {
        const opmath_t alpha = alphas[k];
        store_tile(out + k * numel + start, n, out_buf.data(), [&](opmath_t* values) {
          for (int64_t j = 0; j < n; ++j) values[j] = interpolate_point(xs[j], bs[j], alpha);
        });
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

template <typename scalar_t, typename out_t>
class AccumulateKernel {
 public:
  using opmath_t = at::opmath_type<scalar_t>;

  explicit AccumulateKernel(const AccumulateArgs& args)
      : args_(args),
        grads_(args.grads.const_data_ptr<scalar_t>()),
        weights_(args.weights.const_data_ptr<opmath_t>()),
        x_(args.x.const_data_ptr<scalar_t>()),
        baseline_(args.baseline.const_data_ptr<scalar_t>()),
        partial_(args.partial.defined() ? args.partial.const_data_ptr<out_t>() : nullptr),
        out_(args.out.mutable_data_ptr<out_t>()) {}

  void unreduced() const {
    for_each_tile([&](Tile& t, int64_t start, int64_t n, opmath_t& /*row_state*/) {
      store_tile(out_ + start, n, t.values.data(), [&](opmath_t* values) { attributions(t, start, n, values); });
    });
  }

  // A tile may end inside a row (dim > kTile) or hold many rows: a row's running reduction
  // carries across the tiles of one thread, and rows never straddle threads.
  template <typename Reduction>
  void reduced() const {
    const int64_t dim = args_.dim;
    if (args_.numel == 0) {  // rows of an empty embedding dim reduce to the identity
      std::fill(out_, out_ + args_.rows, static_cast<out_t>(Reduction::finalize(Reduction::identity())));
      return;
    }
    for_each_tile([&](Tile& t, int64_t start, int64_t n, opmath_t& row_state) {
      attributions(t, start, n, t.values.data());
      const int64_t end = start + n;
      for (int64_t e = start; e < end;) {
        const int64_t row = e / dim;
        const int64_t row_end = (row + 1) * dim;
        const int64_t segment_end = std::min(end, row_end);
        opmath_t state = e == row * dim ? Reduction::identity() : row_state;
        for (; e < segment_end; ++e) state = Reduction::combine(state, Reduction::map(t.values[e - start]));
        row_state = state;
        if (segment_end == row_end) out_[row] = static_cast<out_t>(Reduction::finalize(state));
      }
    });
  }

 private:
  // Steps added per pass over the running sums (in step order: the same rounding as one by one).
  static constexpr int kStepsPerPass = 4;

  // Per-thread scratch: the running sums, and widened inputs for the types that need it.
  struct Tile {
    TileBuffer<opmath_t> sums, x, baseline, partial, values;
    std::array<TileBuffer<opmath_t>, kStepsPerPass> grads;
  };

  // How the inner loop reads gradients: float16 is widened in bulk first (F16C, see convert.h);
  // other types are read as stored and widened in the loop, which the compiler vectorises.
  using grad_load_t = std::conditional_t<std::is_same_v<scalar_t, c10::Half>, opmath_t, scalar_t>;

  // Calls body(tile, start, n, row_state) for each tile of each thread's share of rows.
  template <typename Body>
  void for_each_tile(const Body& body) const {
    const int64_t dim = args_.dim;
    const int64_t work_per_row = std::max<int64_t>(1, dim) * std::max<int64_t>(1, args_.steps);
    const int64_t grain = std::max<int64_t>(1, kGrain / work_per_row);
    at::parallel_for(0, args_.rows, grain, [&](int64_t row_begin, int64_t row_end) {
      const auto tile = std::make_unique<Tile>();  // too big for every thread's stack
      opmath_t row_state{};
      const int64_t end = row_end * dim;
      for (int64_t start = row_begin * dim; start < end; start += kTile) {
        const int64_t n = std::min(kTile, end - start);
        weighted_sum(*tile, start, n);
        body(*tile, start, n, row_state);
      }
    });
  }

  const grad_load_t* step_grads(int64_t k, int64_t start, int64_t n, opmath_t* scratch) const {
    const scalar_t* g = grads_ + k * args_.numel + start;
    if constexpr (std::is_same_v<grad_load_t, scalar_t>) {
      return g;
    } else {
      return widen(g, n, scratch);
    }
  }

  // tile.sums[j] = sum_k weights[k] * grads[k, start + j]: one contiguous stream per step.
  void weighted_sum(Tile& t, int64_t start, int64_t n) const {
    opmath_t* sums = t.sums.data();
    std::fill(sums, sums + n, opmath_t(0));
    int64_t k = 0;
    for (; k + kStepsPerPass <= args_.steps; k += kStepsPerPass) {
      std::array<const grad_load_t*, kStepsPerPass> g;
      std::array<opmath_t, kStepsPerPass> w;
      for (int i = 0; i < kStepsPerPass; ++i) {
        g[i] = step_grads(k + i, start, n, t.grads[i].data());
        w[i] = weights_[k + i];
      }
      for (int64_t j = 0; j < n; ++j) {
        opmath_t sum = sums[j];
        for (int i = 0; i < kStepsPerPass; ++i) sum = accumulate_step(sum, w[i], static_cast<opmath_t>(g[i][j]));
        sums[j] = sum;
      }
    }
    for (; k < args_.steps; ++k) {
      const grad_load_t* g = step_grads(k, start, n, t.grads[0].data());
      const opmath_t w = weights_[k];
      for (int64_t j = 0; j < n; ++j) sums[j] = accumulate_step(sums[j], w, static_cast<opmath_t>(g[j]));
    }
  }

  // values[j] = the unreduced attribution of element start + j.
  void attributions(Tile& t, int64_t start, int64_t n, opmath_t* values) const {
    const opmath_t* sums = t.sums.data();
    const opmath_t* xs = widen(x_ + start, n, t.x.data());
    const opmath_t* bs = widen(baseline_ + start, n, t.baseline.data());
    if (partial_ != nullptr) {
      const opmath_t* ps = widen(partial_ + start, n, t.partial.data());
      for (int64_t j = 0; j < n; ++j) values[j] = finalize(sums[j], xs[j], bs[j], ps[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) values[j] = finalize(sums[j], xs[j], bs[j], opmath_t(0));
    }
  }

  const AccumulateArgs& args_;
  const scalar_t* grads_;
  const opmath_t* weights_;
  const scalar_t* x_;
  const scalar_t* baseline_;
  const out_t* partial_;  // nullptr when absent; aliases out_ for the in-place op
  out_t* out_;
};

template <typename scalar_t, typename out_t>
void run_accumulate(const AccumulateArgs& args) {
  using opmath_t = at::opmath_type<scalar_t>;
  const AccumulateKernel<scalar_t, out_t> kernel(args);
  if (args.reduce == Reduce::None) {
    kernel.unreduced();
    return;
  }
  with_reduction<opmath_t>(args.reduce, [&](auto reduction) { kernel.template reduced<decltype(reduction)>(); });
}

// The output has x's dtype, or float32 when a float32 partial/acc accompanies half-type x.
void dispatch_accumulate(const AccumulateArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "ig_accumulate_cpu", [&] {
    if (args.out.scalar_type() == args.x.scalar_type()) {
      run_accumulate<scalar_t, scalar_t>(args);
    } else {
      run_accumulate<scalar_t, at::opmath_type<scalar_t>>(args);
    }
  });
}

}  // namespace
}  // namespace saliency_fast::ig

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) {
  m.impl("ig_interpolate", &saliency_fast::ig::ig_interpolate_cpu);
  m.impl("ig_accumulate", &saliency_fast::ig::accumulate_op<saliency_fast::ig::dispatch_accumulate>);
  m.impl("ig_accumulate_", &saliency_fast::ig::accumulate_inplace_op<saliency_fast::ig::dispatch_accumulate>);
}
