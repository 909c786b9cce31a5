// CUDA kernels of the DIG ops: indexing, launch configuration and reductions; the arithmetic is
// saliency_fast/dig.h, the same the CPU kernels run. A warp scores one candidate, or measures one
// candidate's distance (its lanes split the embedding dims, then a shuffle reduction); dig_select_anchor gives each row a block whose
// warps share out the row's candidates and keep the best, then write the monotonized winner.
#include <algorithm>
#include <limits>
#include <optional>
#include <string_view>
#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <math_constants.h>
#include <torch/library.h>

#include "saliency_fast/dig.h"
#include "saliency_fast/dig_args.h"

namespace saliency_fast::dig {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;

template <typename opmath_t>
opmath_t inverse_steps(int64_t steps) {
  return static_cast<opmath_t>(1.0 / static_cast<double>(steps));
}

__device__ Score warp_sum(Score s) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    s.count += static_cast<int64_t>(__shfl_down_sync(0xffffffffu, static_cast<long long>(s.count), offset));
    s.squared_correction += __shfl_down_sync(0xffffffffu, s.squared_correction, offset);
  }
  return s;
}

// This lane's share of one candidate's score; the warp's total lands in lane 0.
template <typename scalar_t, typename opmath_t>
__device__ Score warp_score(const scalar_t* __restrict__ candidate, const scalar_t* __restrict__ against,
                            const scalar_t* __restrict__ baseline, int64_t d, opmath_t inv, int lane) {
  Score s;
  for (int64_t j = lane; j < d; j += kWarp) {
    const auto rule = dim_rule(static_cast<opmath_t>(against[j]), static_cast<opmath_t>(baseline[j]), inv);
    add_dim(s, static_cast<opmath_t>(candidate[j]), rule);
  }
  return warp_sum(s);
}

template <typename scalar_t, typename opmath_t>
__global__ void scores_kernel(const scalar_t* __restrict__ candidates, const scalar_t* __restrict__ against,
                              const scalar_t* __restrict__ baseline, int64_t n, int64_t k, int64_t d, opmath_t inv,
                              int64_t* __restrict__ counts, double* __restrict__ norms) {
  const int lane = threadIdx.x % kWarp;
  const int64_t pair = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (pair >= n * k) return;  // whole warps leave together
  const int64_t row = pair / k;
  const Score s = warp_score(candidates + pair * d, against + row * d, baseline + row * d, d, inv, lane);
  if (lane == 0) {
    counts[pair] = s.count;
    norms[pair] = correction_norm(s);
  }
}

template <typename scalar_t, typename opmath_t>
__global__ void select_kernel(const scalar_t* __restrict__ candidates, const bool* __restrict__ valid,
                              const scalar_t* __restrict__ current, const scalar_t* __restrict__ against,
                              const scalar_t* __restrict__ baseline, int64_t k, int64_t d, opmath_t inv,
                              Strategy strategy, int64_t* __restrict__ choice, scalar_t* __restrict__ out) {
  // Score has member initializers, which __shared__ variables may not: keep its fields apart
  __shared__ int64_t warp_best_count[kWarps];
  __shared__ double warp_best_squared[kWarps];
  __shared__ int64_t warp_best_k[kWarps];
  __shared__ int64_t row_best_k;
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const scalar_t* row_against = against + row * d;
  const scalar_t* row_baseline = baseline + row * d;

  Score best;
  int64_t best_k = -1;
  for (int64_t kk = warp; kk < k; kk += kWarps) {
    if (!valid[row * k + kk]) continue;  // uniform across the warp
    const Score s = warp_score(candidates + (row * k + kk) * d, row_against, row_baseline, d, inv, lane);
    if (lane == 0 && (best_k < 0 || better(strategy, s, kk, best, best_k))) {
      best = s;
      best_k = kk;
    }
  }
  if (lane == 0) {
    warp_best_count[warp] = best.count;
    warp_best_squared[warp] = best.squared_correction;
    warp_best_k[warp] = best_k;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t winner = -1;
    Score top;
    for (int w = 0; w < kWarps; ++w) {
      const Score candidate{warp_best_count[w], warp_best_squared[w]};
      if (warp_best_k[w] >= 0 && (winner < 0 || better(strategy, candidate, warp_best_k[w], top, winner))) {
        top = candidate;
        winner = warp_best_k[w];
      }
    }
    row_best_k = winner;
    choice[row] = winner;
  }
  __syncthreads();

  const int64_t winner = row_best_k;
  scalar_t* dst = out + row * d;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    if (winner < 0) {
      dst[j] = row_baseline[j];
      continue;
    }
    const auto rule = dim_rule(static_cast<opmath_t>(current[row * d + j]), static_cast<opmath_t>(row_baseline[j]), inv);
    dst[j] = static_cast<scalar_t>(monotonize(static_cast<opmath_t>(candidates[(row * k + winner) * d + j]), rule));
  }
}

// One warp per (query, candidate) pair. An index outside the embedding's rows yields NaN (a
// device kernel cannot raise; the Python wrapper checks the indices before the call).
template <typename scalar_t>
__global__ void distances_kernel(const scalar_t* __restrict__ rows, const scalar_t* __restrict__ queries,
                                 const int64_t* __restrict__ candidates, int64_t v, int64_t m, int64_t c, int64_t d,
                                 double* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t pair = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (pair >= m * c) return;
  const int64_t row = candidates[pair];
  if (row < 0 || row >= v) {
    if (lane == 0) out[pair] = CUDART_NAN;
    return;
  }
  const scalar_t* e = rows + row * d;
  const scalar_t* q = queries + (pair / c) * d;
  double sum = 0.0;
  for (int64_t j = lane; j < d; j += kWarp) sum += squared_difference(e[j], q[j]);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) out[pair] = sum;
}

template <typename scalar_t, typename opmath_t>
__global__ void monotonize_kernel(const scalar_t* __restrict__ anchor, const scalar_t* __restrict__ current,
                                  const scalar_t* __restrict__ baseline, opmath_t inv, int64_t numel,
                                  scalar_t* __restrict__ out) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < numel; e += int64_t(gridDim.x) * blockDim.x) {
    const auto rule = dim_rule(static_cast<opmath_t>(current[e]), static_cast<opmath_t>(baseline[e]), inv);
    out[e] = static_cast<scalar_t>(monotonize(static_cast<opmath_t>(anchor[e]), rule));
  }
}

int64_t grid_size(int64_t work_items, int64_t items_per_block) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t needed = (work_items + items_per_block - 1) / items_per_block;
  return std::max<int64_t>(1, std::min(needed, sms * 8));
}

at::Tensor dig_exact_distances_cuda(const at::Tensor& embedding, const at::Tensor& queries,
                                   const at::Tensor& candidates) {
  DistanceArgs args = prepare_distances(embedding, queries, candidates);
  const int64_t pairs = args.m * args.c;
  if (pairs == 0) return args.out;
  const int64_t blocks = (pairs + kWarps - 1) / kWarps;
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int32_t>::max(), "too many candidates for one call: ", pairs);
  const c10::cuda::CUDAGuard guard(embedding.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.embedding.scalar_type(), "dig_distances_cuda", [&] {
    distances_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        args.embedding.const_data_ptr<scalar_t>(), args.queries.const_data_ptr<scalar_t>(),
        args.candidates.const_data_ptr<int64_t>(), args.v, args.m, args.c, args.d, args.out.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return args.out;
}

at::Tensor dig_monotonize_cuda(const at::Tensor& anchor, const at::Tensor& current, const at::Tensor& baseline,
                               int64_t steps) {
  MonotonizeArgs args = prepare_monotonize(anchor, current, baseline, steps);
  if (args.numel == 0) return args.out;
  const c10::cuda::CUDAGuard guard(anchor.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.anchor.scalar_type(), "dig_monotonize_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    monotonize_kernel<scalar_t, opmath_t><<<grid_size(args.numel, kThreads), kThreads, 0, stream>>>(
        args.anchor.const_data_ptr<scalar_t>(), args.current.const_data_ptr<scalar_t>(),
        args.baseline.const_data_ptr<scalar_t>(), inverse_steps<opmath_t>(args.steps), args.numel,
        args.out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return args.out;
}

std::tuple<at::Tensor, at::Tensor> dig_monotonic_scores_cuda(const at::Tensor& candidates, const at::Tensor& current,
                                                             const at::Tensor& baseline, int64_t steps) {
  CandidateArgs args = prepare_scores(candidates, current, baseline, steps);
  const int64_t pairs = args.n * args.k;
  if (pairs == 0) return {args.counts, args.norms};
  const c10::cuda::CUDAGuard guard(candidates.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t blocks = (pairs + kWarps - 1) / kWarps;
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int32_t>::max(), "too many candidates for one call: ", pairs);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.candidates.scalar_type(), "dig_scores_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    scores_kernel<scalar_t, opmath_t><<<blocks, kThreads, 0, stream>>>(
        args.candidates.const_data_ptr<scalar_t>(), args.scored_against.const_data_ptr<scalar_t>(),
        args.baseline.const_data_ptr<scalar_t>(), args.n, args.k, args.d, inverse_steps<opmath_t>(args.steps),
        args.counts.mutable_data_ptr<int64_t>(), args.norms.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {args.counts, args.norms};
}

std::tuple<at::Tensor, at::Tensor> dig_select_anchor_cuda(const at::Tensor& candidates, const at::Tensor& valid,
                                                          const at::Tensor& current, const at::Tensor& baseline,
                                                          int64_t steps, c10::string_view strategy,
                                                          const std::optional<at::Tensor>& anchor_word) {
  CandidateArgs args = prepare_select(candidates, valid, current, baseline, steps,
                                      std::string_view(strategy.data(), strategy.size()), anchor_word);
  if (args.n == 0) return {args.choice, args.out};
  TORCH_CHECK_VALUE(args.n <= std::numeric_limits<int32_t>::max(), "too many rows for one call: ", args.n);
  const c10::cuda::CUDAGuard guard(candidates.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.candidates.scalar_type(), "dig_select_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    select_kernel<scalar_t, opmath_t><<<args.n, kThreads, 0, stream>>>(
        args.candidates.const_data_ptr<scalar_t>(), args.valid.const_data_ptr<bool>(),
        args.current.const_data_ptr<scalar_t>(), args.scored_against.const_data_ptr<scalar_t>(),
        args.baseline.const_data_ptr<scalar_t>(), args.k, args.d, inverse_steps<opmath_t>(args.steps),
        args.strategy, args.choice.mutable_data_ptr<int64_t>(), args.out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {args.choice, args.out};
}

}  // namespace
}  // namespace saliency_fast::dig

TORCH_LIBRARY_IMPL(saliency_fast, CUDA, m) {
  m.impl("dig_exact_distances", &saliency_fast::dig::dig_exact_distances_cuda);
  m.impl("dig_monotonize", &saliency_fast::dig::dig_monotonize_cuda);
  m.impl("dig_monotonic_scores", &saliency_fast::dig::dig_monotonic_scores_cuda);
  m.impl("dig_select_anchor", &saliency_fast::dig::dig_select_anchor_cuda);
}
