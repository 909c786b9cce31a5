// Per-dimension arithmetic of Discretized Integrated Gradients (Sanyal & Ren, EMNLP 2021), shared
// by the CPU and CUDA kernels so both devices run one copy of the math.
// Specification: the dig_* functions in saliency_fast/reference.py.
//
// Values are widened to the opmath type (float for half types) on load; a monotonized value is
// rounded once on store. The squared correction norm, used only to rank candidates, accumulates
// in double so that the CPU, the GPU and the reference rank candidates the same way (summation
// order then changes the sum only far below any real gap between two candidates).
#pragma once

#include <cmath>
#include <cstdint>

#include "saliency_fast/common.h"

namespace saliency_fast::dig {

enum class Strategy { Greedy, MaxCount };

// Products that the CUDA compiler must not fuse with the following subtraction into an FMA:
// the reference rounds the product first, and so must every device.
HOST_DEVICE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// DIG's correction of a non-monotonic dimension: a fixed 1/steps of the way from the current
// point toward the baseline. `inv_steps` is 1/steps rounded to T.
template <typename T>
HOST_DEVICE T step_toward_baseline(T current, T baseline, T inv_steps) {
  return current - mul_rn(current - baseline, inv_steps);
}

// One dimension of a (current, baseline) pair, precomputed once per row and shared by all of the
// row's candidates: the closed interval monotonic values lie in, i.e. between current and
// baseline inclusive (empty, via NaN ends, when either point is NaN: NaN is never monotonic), and
// the value a non-monotonic dimension is moved to. This is DIG's `monotonic` test.
template <typename T>
struct DimRule {
  T lo, hi, moved;
};

template <typename T>
HOST_DEVICE DimRule<T> dim_rule(T current, T baseline, T inv_steps) {
  const T moved = step_toward_baseline(current, baseline, inv_steps);
  if (!(current == current && baseline == baseline)) return DimRule<T>{moved, moved, moved};  // NaN
  return current <= baseline ? DimRule<T>{current, baseline, moved} : DimRule<T>{baseline, current, moved};
}

// 1 where a candidate's value lies in the rule's interval, else 0. Branch-free (as are the
// helpers below) so the CPU loops vectorize.
template <typename T>
HOST_DEVICE int monotonic_flag(T candidate, T lo, T hi) {
  return static_cast<int>(candidate >= lo) & static_cast<int>(candidate <= hi);
}

// The correction of a non-monotonic dim (moved - candidate, sign aside), 0 for a monotonic one.
// Where `monotonic` is 1 the difference is finite (both values lie in the finite interval), so
// multiplying by 0 gives 0; a NaN candidate is never monotonic and stays NaN.
template <typename T>
HOST_DEVICE double masked_correction(T candidate, T moved, int monotonic) {
  return static_cast<double>((candidate - moved) * static_cast<T>(1 - monotonic));
}

// The monotonized value of one dimension of a candidate anchor.
template <typename T>
HOST_DEVICE T monotonize(T candidate, T lo, T hi, T moved) {
  return monotonic_flag(candidate, lo, hi) ? candidate : moved;
}

template <typename T>
HOST_DEVICE T monotonize(T candidate, const DimRule<T>& rule) {
  return monotonize(candidate, rule.lo, rule.hi, rule.moved);
}

// A candidate's running score over the embedding dims: how many dims are monotonic, and the
// squared norm of the correction monotonization applies. Combining two partial scores of
// disjoint dims is associative, so threads and warps may split the dims freely.
struct Score {
  int64_t count = 0;
  double squared_correction = 0.0;
};

template <typename T>
HOST_DEVICE void add_dim(Score& score, T candidate, T lo, T hi, T moved) {
  const int monotonic = monotonic_flag(candidate, lo, hi);
  const double correction = masked_correction(candidate, moved, monotonic);
  score.count += monotonic;
  score.squared_correction += correction * correction;
}

template <typename T>
HOST_DEVICE void add_dim(Score& score, T candidate, const DimRule<T>& rule) {
  add_dim(score, candidate, rule.lo, rule.hi, rule.moved);
}

HOST_DEVICE Score combine(Score a, Score b) {
  return Score{a.count + b.count, a.squared_correction + b.squared_correction};
}

// The correction norm, in double whatever the input dtype: it ranks candidates.
HOST_DEVICE double correction_norm(const Score& s) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(s.squared_correction);
#else
  return std::sqrt(s.squared_correction);
#endif
}

// The greedy ranking key: a NaN correction ranks as +inf (last, but still above no candidate).
HOST_DEVICE double greedy_key(const Score& s) {
  const double norm = correction_norm(s);
  return norm != norm ? HUGE_VAL : norm;
}

// Whether candidate `a` (index ka) beats candidate `b` (index kb): greedy wants the smallest
// correction, max-count the most monotonic dims; ties go to the lower index, i.e. the nearer
// neighbour, as the official code's stable sort over the neighbour list does.
HOST_DEVICE bool better(Strategy strategy, const Score& a, int64_t ka, const Score& b, int64_t kb) {
  if (strategy == Strategy::Greedy) {
    const double key_a = greedy_key(a), key_b = greedy_key(b);
    if (key_a != key_b) return key_a < key_b;
  } else if (a.count != b.count) {
    return a.count > b.count;
  }
  return ka < kb;
}

// One dimension's term of an exact squared Euclidean distance: the difference taken in double
// (exact for float and half inputs) and squared in double. Used to rank vocabulary neighbours, so
// identical rows get identical distances whatever their position.
template <typename T>
HOST_DEVICE double squared_difference(T a, T b) {
  const double diff = static_cast<double>(a) - static_cast<double>(b);
  return diff * diff;
}

}  // namespace saliency_fast::dig
