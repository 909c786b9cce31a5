// Per-element arithmetic of the Integrated Gradients ops, shared by the CPU and CUDA kernels so
// both devices run (and the C++ unit tests check) one copy of the math. Everything here is in
// the opmath type (float for half types): inputs are widened on load and rounded once on store.
// Specification: saliency_fast/reference.py.
#pragma once

#include <cmath>

#include "saliency_fast/common.h"

namespace saliency_fast::ig {

// One point on the straight path from the baseline to x.
template <typename T>
HOST_DEVICE T interpolate_point(T x, T baseline, T alpha) {
  return baseline + alpha * (x - baseline);
}

// One quadrature step of the weighted gradient sum: sum_k weight_k * grad_k.
template <typename T>
HOST_DEVICE T accumulate_step(T sum, T weight, T grad) {
  return sum + weight * grad;
}

// The unreduced attribution of one element: (x - baseline) * weighted gradient sum + partial.
template <typename T>
HOST_DEVICE T finalize(T weighted_sum, T x, T baseline, T partial) {
  return weighted_sum * (x - baseline) + partial;
}

template <typename T>
HOST_DEVICE T square_root(T v) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(v);
#else
  return std::sqrt(v);
#endif
}

template <typename T>
HOST_DEVICE T absolute(T v) {
#if defined(__CUDA_ARCH__)
  return ::fabs(v);
#else
  return std::fabs(v);
#endif
}

// Reductions over the embedding (last) dim, as map -> combine (associative, from identity) ->
// finalize, so a kernel may combine partial results in any order (threads, tiles, warps).
enum class Reduce { None, Sum, L2, AbsSum };

template <typename T>
struct SumReduction {
  static HOST_DEVICE T identity() { return T(0); }
  static HOST_DEVICE T map(T v) { return v; }
  static HOST_DEVICE T combine(T a, T b) { return a + b; }
  static HOST_DEVICE T finalize(T a) { return a; }
};

template <typename T>
struct L2Reduction {
  static HOST_DEVICE T identity() { return T(0); }
  static HOST_DEVICE T map(T v) { return v * v; }
  static HOST_DEVICE T combine(T a, T b) { return a + b; }
  static HOST_DEVICE T finalize(T a) { return square_root(a); }
};

template <typename T>
struct AbsSumReduction {
  static HOST_DEVICE T identity() { return T(0); }
  static HOST_DEVICE T map(T v) { return absolute(v); }
  static HOST_DEVICE T combine(T a, T b) { return a + b; }
  static HOST_DEVICE T finalize(T a) { return a; }
};

// Calls body(Reduction{}) with the functor for `reduce` (host side: picks a kernel). Not for
// Reduce::None, which has no functor (the unreduced values are stored as they are).
template <typename T, typename Body>
void with_reduction(Reduce reduce, Body&& body) {
  switch (reduce) {
    case Reduce::Sum:
      body(SumReduction<T>{});
      return;
    case Reduce::L2:
      body(L2Reduction<T>{});
      return;
    case Reduce::AbsSum:
      body(AbsSumReduction<T>{});
      return;
    case Reduce::None:
      break;
  }
}

}  // namespace saliency_fast::ig
