// CUDA kernels of the IG ops: indexing, launch configuration and reductions; the arithmetic is
// saliency_fast/ig.h, the same the CPU kernels run. Element loops are grid-stride with 64-bit
// indices; inputs are made contiguous by prepare_* (ig_args.h).
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "saliency_fast/ig.h"
#include "saliency_fast/ig_args.h"

namespace saliency_fast::ig {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// Enough blocks to fill the GPU a few times over; grid-stride loops cover the rest.
int64_t grid_size(int64_t work_items, int64_t items_per_block) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t needed = (work_items + items_per_block - 1) / items_per_block;
  return std::max<int64_t>(1, std::min(needed, sms * 8));
}

// ---------------------------------------------------------------------------------------------
// ig_interpolate

// V consecutive elements moved as one 16-byte load or store (x, baseline, grads and out are
// contiguous; the vector path runs only when every row of V starts 16-byte aligned).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T>
constexpr int kPack = 16 / sizeof(T) > 0 ? 16 / sizeof(T) : 1;

template <typename T>
bool packable(const T* p, int64_t numel) {
  return numel % kPack<T> == 0 && reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Each thread takes V elements of x (V = 1, or a 16-byte pack), reads x and baseline once and
// writes the V elements of every step: per step a warp stores 32 consecutive packs (512 bytes),
// and no thread divides an index by numel.
template <typename scalar_t, typename opmath_t, int V>
__global__ void interpolate_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ baseline,
                                   const opmath_t* __restrict__ alphas, scalar_t* __restrict__ out, int64_t steps,
                                   int64_t numel) {
  using P = Pack<scalar_t, V>;
  const int64_t packs = numel / V;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < packs; i += int64_t(gridDim.x) * blockDim.x) {
    const P xs = reinterpret_cast<const P*>(x)[i];
    const P bs = reinterpret_cast<const P*>(baseline)[i];
    for (int64_t k = 0; k < steps; ++k) {
      const opmath_t alpha = alphas[k];
      P o;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        o.v[j] = static_cast<scalar_t>(
            interpolate_point(static_cast<opmath_t>(xs.v[j]), static_cast<opmath_t>(bs.v[j]), alpha));
      }
      reinterpret_cast<P*>(out + k * numel)[i] = o;
    }
  }
}

void dispatch_interpolate(const InterpolateArgs& args) {
  const int64_t total = args.steps * args.numel;
  if (total == 0) return;
  const c10::cuda::CUDAGuard guard(args.x.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "ig_interpolate_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int V = kPack<scalar_t>;
    const scalar_t* x = args.x.const_data_ptr<scalar_t>();
    const scalar_t* baseline = args.baseline.const_data_ptr<scalar_t>();
    scalar_t* out = args.out.mutable_data_ptr<scalar_t>();
    if (packable(x, args.numel) && packable(baseline, args.numel) && packable(out, args.numel)) {
      interpolate_kernel<scalar_t, opmath_t, V><<<grid_size(args.numel / V, kThreads), kThreads, 0, stream>>>(
          x, baseline, args.alphas.const_data_ptr<opmath_t>(), out, args.steps, args.numel);
    } else {
      interpolate_kernel<scalar_t, opmath_t, 1><<<grid_size(args.numel, kThreads), kThreads, 0, stream>>>(
          x, baseline, args.alphas.const_data_ptr<opmath_t>(), out, args.steps, args.numel);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---------------------------------------------------------------------------------------------
// ig_accumulate

template <typename scalar_t, typename out_t>
struct AccumulateParams {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict__ grads;
  const opmath_t* __restrict__ weights;
  const scalar_t* __restrict__ x;
  const scalar_t* __restrict__ baseline;
  const out_t* partial;  // nullptr when absent; may alias out (in-place op): same element, same thread
  out_t* out;
  int64_t steps, numel, dim, rows;

  explicit AccumulateParams(const AccumulateArgs& a)
      : grads(a.grads.const_data_ptr<scalar_t>()),
        weights(a.weights.const_data_ptr<opmath_t>()),
        x(a.x.const_data_ptr<scalar_t>()),
        baseline(a.baseline.const_data_ptr<scalar_t>()),
        partial(a.partial.defined() ? a.partial.const_data_ptr<out_t>() : nullptr),
        out(a.out.mutable_data_ptr<out_t>()),
        steps(a.steps),
        numel(a.numel),
        dim(a.dim),
        rows(a.rows) {}

  // The unreduced attribution of element e (consecutive threads read consecutive elements of
  // every step, so the loads coalesce).
  __device__ opmath_t attribution(int64_t e) const {
    opmath_t sum = 0;
    for (int64_t k = 0; k < steps; ++k) {
      sum = accumulate_step(sum, weights[k], static_cast<opmath_t>(grads[k * numel + e]));
    }
    const opmath_t p = partial != nullptr ? static_cast<opmath_t>(partial[e]) : opmath_t(0);
    return finalize(sum, static_cast<opmath_t>(x[e]), static_cast<opmath_t>(baseline[e]), p);
  }
};

template <typename scalar_t, typename out_t>
__global__ void accumulate_unreduced_kernel(const AccumulateParams<scalar_t, out_t> p) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < p.numel; e += int64_t(gridDim.x) * blockDim.x) {
    p.out[e] = static_cast<out_t>(p.attribution(e));
  }
}

// The same with V elements a thread: every step's gradients arrive as one 16-byte load per thread
// (a warp reads 512 consecutive bytes), the steps unrolled so several loads are in flight.
template <typename scalar_t, typename out_t, int V>
__global__ void accumulate_unreduced_packed_kernel(const AccumulateParams<scalar_t, out_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, V>;
  const int64_t packs = p.numel / V;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < packs; i += int64_t(gridDim.x) * blockDim.x) {
    opmath_t sums[V] = {};
#pragma unroll 4
    for (int64_t k = 0; k < p.steps; ++k) {
      const P g = reinterpret_cast<const P*>(p.grads + k * p.numel)[i];
      const opmath_t w = p.weights[k];
#pragma unroll
      for (int j = 0; j < V; ++j) sums[j] = accumulate_step(sums[j], w, static_cast<opmath_t>(g.v[j]));
    }
    const P xs = reinterpret_cast<const P*>(p.x)[i];
    const P bs = reinterpret_cast<const P*>(p.baseline)[i];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t e = i * V + j;
      const opmath_t partial = p.partial != nullptr ? static_cast<opmath_t>(p.partial[e]) : opmath_t(0);
      p.out[e] = static_cast<out_t>(
          finalize(sums[j], static_cast<opmath_t>(xs.v[j]), static_cast<opmath_t>(bs.v[j]), partial));
    }
  }
}

template <typename Reduction, typename T>
__device__ T warp_reduce(T value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value = Reduction::combine(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Reduces over the whole block; the result is valid in thread 0. Every thread must call it.
template <typename Reduction, typename T>
__device__ T block_reduce(T value, T* shared) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  value = warp_reduce<Reduction>(value);
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  value = threadIdx.x < warps ? shared[threadIdx.x] : Reduction::identity();
  if (warp == 0) value = warp_reduce<Reduction>(value);
  __syncthreads();  // `shared` is reused by the next row
  return value;
}

// One warp per row (small dims): blockDim.x / 32 rows per block.
template <typename scalar_t, typename out_t, typename Reduction>
__global__ void accumulate_reduced_warp_kernel(const AccumulateParams<scalar_t, out_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  for (int64_t row = blockIdx.x * warps_per_block + threadIdx.x / kWarp; row < p.rows;
       row += int64_t(gridDim.x) * warps_per_block) {
    opmath_t state = Reduction::identity();
    for (int64_t j = lane; j < p.dim; j += kWarp) {
      state = Reduction::combine(state, Reduction::map(p.attribution(row * p.dim + j)));
    }
    state = warp_reduce<Reduction>(state);
    if (lane == 0) p.out[row] = static_cast<out_t>(Reduction::finalize(state));
  }
}

// One block per row (large dims).
template <typename scalar_t, typename out_t, typename Reduction>
__global__ void accumulate_reduced_block_kernel(const AccumulateParams<scalar_t, out_t> p) {
  using opmath_t = at::opmath_type<scalar_t>;
  __shared__ opmath_t shared[kThreads / kWarp];
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    opmath_t state = Reduction::identity();
    for (int64_t j = threadIdx.x; j < p.dim; j += blockDim.x) {
      state = Reduction::combine(state, Reduction::map(p.attribution(row * p.dim + j)));
    }
    state = block_reduce<Reduction>(state, shared);
    if (threadIdx.x == 0) p.out[row] = static_cast<out_t>(Reduction::finalize(state));
  }
}

// Rows up to this many elements get one warp each; longer rows a block.
constexpr int64_t kWarpRowMaxDim = 256;

template <typename scalar_t, typename out_t>
void launch_accumulate(const AccumulateArgs& args, cudaStream_t stream) {
  using opmath_t = at::opmath_type<scalar_t>;
  const AccumulateParams<scalar_t, out_t> params(args);
  if (args.reduce == Reduce::None) {
    if (args.numel == 0) return;
    constexpr int V = kPack<scalar_t>;
    if (packable(params.grads, args.numel) && packable(params.x, args.numel) && packable(params.baseline, args.numel)) {
      accumulate_unreduced_packed_kernel<scalar_t, out_t, V>
          <<<grid_size(args.numel / V, kThreads), kThreads, 0, stream>>>(params);
    } else {
      accumulate_unreduced_kernel<<<grid_size(args.numel, kThreads), kThreads, 0, stream>>>(params);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  if (args.rows == 0) return;
  with_reduction<opmath_t>(args.reduce, [&](auto reduction) {
    using Reduction = decltype(reduction);
    if (args.dim <= kWarpRowMaxDim) {
      accumulate_reduced_warp_kernel<scalar_t, out_t, Reduction>
          <<<grid_size(args.rows, kThreads / kWarp), kThreads, 0, stream>>>(params);
    } else {
      accumulate_reduced_block_kernel<scalar_t, out_t, Reduction>
          <<<grid_size(args.rows, 1), kThreads, 0, stream>>>(params);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The output has x's dtype, or float32 when a float32 partial/acc accompanies half-type x.
void dispatch_accumulate(const AccumulateArgs& args) {
  const c10::cuda::CUDAGuard guard(args.x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "ig_accumulate_cuda", [&] {
    if (args.out.scalar_type() == args.x.scalar_type()) {
      launch_accumulate<scalar_t, scalar_t>(args, stream);
    } else {
      launch_accumulate<scalar_t, at::opmath_type<scalar_t>>(args, stream);
    }
  });
}

}  // namespace
}  // namespace saliency_fast::ig

TORCH_LIBRARY_IMPL(saliency_fast, CUDA, m) {
  m.impl("ig_interpolate", &saliency_fast::ig::interpolate_op<saliency_fast::ig::dispatch_interpolate>);
  m.impl("ig_interpolate_out", &saliency_fast::ig::interpolate_out_op<saliency_fast::ig::dispatch_interpolate>);
  m.impl("ig_accumulate", &saliency_fast::ig::accumulate_op<saliency_fast::ig::dispatch_accumulate>);
  m.impl("ig_accumulate_", &saliency_fast::ig::accumulate_inplace_op<saliency_fast::ig::dispatch_accumulate>);
}
