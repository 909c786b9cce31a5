// CPU kernels of the IG ops. Rows (all dims but the last) are split across threads; each thread
// walks its contiguous span of elements in tiles that fit in cache, so every step's gradients
// stream through memory once while the running sums stay in L1/L2. Inputs are widened to the
// opmath dtype a tile at a time and results rounded once on store (see convert.h). The float32
// opmath types (float32, bfloat16, float16) run the tiles' hot loops in ig_vec.h's vector code;
// float64 runs the same math element by element here.
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
#include "ig_vec.h"
#include "saliency_fast/ig.h"
#include "saliency_fast/ig_args.h"

namespace saliency_fast::ig {
namespace {

using cpu::narrow;
using cpu::widen;

// Elements per tile: 64 KiB of float per buffer (the sums stay in L2) while each step's gradients
// arrive as a 64 KiB (float32) run the prefetchers follow; measured against 8 and 16 KiB tiles.
constexpr int64_t kTile = 16384;
// ig_interpolate's tile: the widened baseline and x - baseline (2 x 8 KiB) stay in L1 while every
// step writes its run of the output (8 KiB in float32, 4 KiB in the half types). Measured against
// 8192- and 16384-element tiles (whose scratch spills to L2): the half types' stores, which cost
// more instructions per byte, keep up with a plain fill only when their inputs come from L1.
constexpr int64_t kInterpolateTile = 2048;
// Outputs at least this big are written past the caches (non-temporal stores): larger than any
// last-level cache slice a thread sees, they would be evicted before the caller reads them.
constexpr int64_t kStreamingBytes = int64_t(32) << 20;
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

  const bool streaming = steps * numel * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamingBytes;
  at::parallel_for(0, numel, grain, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<opmath_t, float>) {
      const auto scratch = std::make_unique<std::array<float, 2 * kInterpolateTile>>();
      for (int64_t start = begin; start < end; start += kInterpolateTile) {
        const int64_t n = std::min(kInterpolateTile, end - start);
        cpu::interpolate(x + start, baseline + start, alphas, steps, out + start, numel, n, scratch->data(),
                         streaming);
      }
    } else {
      static_assert(std::is_same_v<scalar_t, opmath_t>, "the element loop reads and writes values as stored");
      for (int64_t start = begin; start < end; start += kInterpolateTile) {
        const int64_t n = std::min(kInterpolateTile, end - start);
        for (int64_t k = 0; k < steps; ++k) {
          scalar_t* o = out + k * numel + start;
          for (int64_t j = 0; j < n; ++j) o[j] = interpolate_point(x[start + j], baseline[start + j], alphas[k]);
        }
      }
    }
  });
}

void dispatch_interpolate(const InterpolateArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "ig_interpolate_cpu",
                                  [&] { interpolate_kernel<scalar_t>(args); });
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
        if constexpr (std::is_same_v<opmath_t, float>) {
          state = Reduction::combine(state, cpu::sum_of(t.values.data() + (e - start), segment_end - e, args_.reduce));
          e = segment_end;
        } else {
          for (; e < segment_end; ++e) state = Reduction::combine(state, Reduction::map(t.values[e - start]));
        }
        row_state = state;
        if (segment_end == row_end) out_[row] = static_cast<out_t>(Reduction::finalize(state));
      }
    });
  }

 private:
  // Per-thread scratch: the running sums, and widened inputs for the types that need it.
  struct Tile {
    TileBuffer<opmath_t> sums, x, baseline, partial, values;
  };

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

  // tile.sums[j] = sum_k weights[k] * grads[k, start + j]: one contiguous stream per step. The
  // float32-opmath types take ig_vec.h's vector loop; float64 (stored as computed) this one.
  void weighted_sum(Tile& t, int64_t start, int64_t n) const {
    opmath_t* sums = t.sums.data();
    if constexpr (std::is_same_v<opmath_t, float>) {
      cpu::weighted_sum(grads_ + start, args_.numel, weights_, args_.steps, sums, n);
    } else {
      static_assert(std::is_same_v<scalar_t, opmath_t>, "the element loop reads gradients as stored");
      std::fill(sums, sums + n, opmath_t(0));
      for (int64_t k = 0; k < args_.steps; ++k) {
        const scalar_t* g = grads_ + k * args_.numel + start;
        const opmath_t w = weights_[k];
        for (int64_t j = 0; j < n; ++j) sums[j] = accumulate_step(sums[j], w, g[j]);
      }
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
  m.impl("ig_interpolate", &saliency_fast::ig::interpolate_op<saliency_fast::ig::dispatch_interpolate>);
  m.impl("ig_interpolate_out", &saliency_fast::ig::interpolate_out_op<saliency_fast::ig::dispatch_interpolate>);
  m.impl("ig_accumulate", &saliency_fast::ig::accumulate_op<saliency_fast::ig::dispatch_accumulate>);
  m.impl("ig_accumulate_", &saliency_fast::ig::accumulate_inplace_op<saliency_fast::ig::dispatch_accumulate>);
}
