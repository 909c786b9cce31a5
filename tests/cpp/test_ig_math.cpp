// Unit tests of saliency_fast/ig.h: the per-element math both the CPU and CUDA kernels run.
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include <gtest/gtest.h>

#include "saliency_fast/ig.h"

namespace ig = saliency_fast::ig;

template <typename T>
class IgMath : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(IgMath, FloatTypes);

TYPED_TEST(IgMath, InterpolateHitsBothEndsAndTheMiddle) {
  using T = TypeParam;
  const T x = T(2.5), b = T(-1.5);
  EXPECT_EQ(ig::interpolate_point(x, b, T(0)), b);
  EXPECT_EQ(ig::interpolate_point(x, b, T(1)), x);  // exact here: x - b and b + (x - b) are representable
  EXPECT_EQ(ig::interpolate_point(x, b, T(0.5)), T(0.5));
  EXPECT_EQ(ig::interpolate_point(x, b, T(0.25)), T(-0.5));
}

TYPED_TEST(IgMath, InterpolateIsLinearInAlpha) {
  using T = TypeParam;
  const T x = T(0.3), b = T(0.7);
  for (T alpha : {T(0.1), T(0.37), T(0.9)}) {
    EXPECT_NEAR(ig::interpolate_point(x, b, alpha), b + alpha * (x - b), 4 * std::numeric_limits<T>::epsilon());
    EXPECT_NEAR(ig::interpolate_point(x, b, alpha), (1 - alpha) * b + alpha * x, 4 * std::numeric_limits<T>::epsilon());
  }
}

TYPED_TEST(IgMath, AccumulateIsTheWeightedSum) {
  using T = TypeParam;
  const std::vector<T> weights{T(0.5), T(0.25), T(-2)};
  const std::vector<T> grads{T(4), T(8), T(1.5)};
  T sum = 0;
  for (size_t k = 0; k < weights.size(); ++k) sum = ig::accumulate_step(sum, weights[k], grads[k]);
  EXPECT_EQ(sum, T(2 + 2 - 3));
}

TYPED_TEST(IgMath, FinalizeScalesByTheInputDifferenceAndAddsThePartial) {
  using T = TypeParam;
  EXPECT_EQ(ig::finalize(T(3), T(2), T(0.5), T(0)), T(4.5));
  EXPECT_EQ(ig::finalize(T(3), T(2), T(0.5), T(-1)), T(3.5));
  EXPECT_EQ(ig::finalize(T(0), T(2), T(0.5), T(7)), T(7));  // no steps: the partial alone
  EXPECT_EQ(ig::finalize(T(5), T(1), T(1), T(0)), T(0));    // x == baseline: nothing to attribute
}

// Reduces `values` the way a kernel does: map, combine from the identity, finalize.
template <typename Reduction, typename T>
T reduce(const std::vector<T>& values) {
  T state = Reduction::identity();
  for (T v : values) state = Reduction::combine(state, Reduction::map(v));
  return Reduction::finalize(state);
}

// The same, but combining the partial states of separate chunks (as threads, tiles and warps do).
template <typename Reduction, typename T>
T reduce_in_chunks(const std::vector<T>& values, size_t chunk) {
  T state = Reduction::identity();
  for (size_t start = 0; start < values.size(); start += chunk) {
    T part = Reduction::identity();
    for (size_t j = start; j < std::min(values.size(), start + chunk); ++j) {
      part = Reduction::combine(part, Reduction::map(values[j]));
    }
    state = Reduction::combine(state, part);
  }
  return Reduction::finalize(state);
}

TYPED_TEST(IgMath, Reductions) {
  using T = TypeParam;
  const std::vector<T> values{T(3), T(-4), T(12), T(0)};
  EXPECT_EQ(reduce<ig::SumReduction<T>>(values), T(11));
  EXPECT_EQ(reduce<ig::AbsSumReduction<T>>(values), T(19));
  EXPECT_EQ(reduce<ig::L2Reduction<T>>(values), T(13));
}

TYPED_TEST(IgMath, ReductionsOfNothingAreZero) {
  using T = TypeParam;
  const std::vector<T> none;
  EXPECT_EQ(reduce<ig::SumReduction<T>>(none), T(0));
  EXPECT_EQ(reduce<ig::AbsSumReduction<T>>(none), T(0));
  EXPECT_EQ(reduce<ig::L2Reduction<T>>(none), T(0));
}

TYPED_TEST(IgMath, ChunkedReductionsAgree) {
  using T = TypeParam;
  std::vector<T> values(1000);
  for (size_t j = 0; j < values.size(); ++j) values[j] = std::sin(T(j) * T(0.37)) * T(j % 7 + 1);
  const T tol = 64 * std::numeric_limits<T>::epsilon() * T(values.size());
  for (size_t chunk : {1, 7, 32, 999, 1000}) {
    EXPECT_NEAR(reduce_in_chunks<ig::SumReduction<T>>(values, chunk), reduce<ig::SumReduction<T>>(values), tol);
    EXPECT_NEAR(reduce_in_chunks<ig::AbsSumReduction<T>>(values, chunk), reduce<ig::AbsSumReduction<T>>(values), tol);
    EXPECT_NEAR(reduce_in_chunks<ig::L2Reduction<T>>(values, chunk), reduce<ig::L2Reduction<T>>(values), tol);
  }
}

TYPED_TEST(IgMath, NonFiniteValuesPropagate) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  EXPECT_TRUE(std::isnan(reduce<ig::SumReduction<T>>(std::vector<T>{T(1), nan})));
  EXPECT_TRUE(std::isnan(reduce<ig::L2Reduction<T>>(std::vector<T>{nan})));
  EXPECT_EQ(reduce<ig::AbsSumReduction<T>>(std::vector<T>{-inf, T(1)}), inf);
}

TEST(IgMath, WithReductionPicksTheFunctor) {
  using ig::Reduce;
  const std::vector<double> values{-3, 4};
  auto run = [&](Reduce r) {
    double result = std::numeric_limits<double>::quiet_NaN();
    ig::with_reduction<double>(r, [&](auto reduction) { result = reduce<decltype(reduction)>(values); });
    return result;
  };
  EXPECT_EQ(run(Reduce::Sum), 1.0);
  EXPECT_EQ(run(Reduce::L2), 5.0);
  EXPECT_EQ(run(Reduce::AbsSum), 7.0);
  EXPECT_TRUE(std::isnan(run(Reduce::None)));  // no functor: the caller stores unreduced values
}
