// Unit tests of saliency_fast/dig.h: the per-dimension DIG math both the CPU and CUDA kernels run.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "saliency_fast/dig.h"

namespace dig = saliency_fast::dig;

template <typename T>
class DigMath : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(DigMath, FloatTypes);

TYPED_TEST(DigMath, RuleIntervalIsBetweenCurrentAndBaselineEitherWay) {
  using T = TypeParam;
  const T inv = T(0.25);
  for (auto [current, baseline] : {std::pair<T, T>{T(0), T(2)}, std::pair<T, T>{T(2), T(0)}}) {
    const auto rule = dig::dim_rule(current, baseline, inv);
    EXPECT_EQ(rule.lo, T(0));
    EXPECT_EQ(rule.hi, T(2));
    EXPECT_EQ(rule.moved, current - (current - baseline) * inv);  // a quarter of the way to the baseline
    EXPECT_EQ(dig::monotonic_flag(T(1), rule.lo, rule.hi), 1);
    EXPECT_EQ(dig::monotonic_flag(T(0), rule.lo, rule.hi), 1);  // inclusive at both ends
    EXPECT_EQ(dig::monotonic_flag(T(2), rule.lo, rule.hi), 1);
    EXPECT_EQ(dig::monotonic_flag(T(2.5), rule.lo, rule.hi), 0);
    EXPECT_EQ(dig::monotonic_flag(T(-0.5), rule.lo, rule.hi), 0);
  }
}

TYPED_TEST(DigMath, EqualEndsAcceptOnlyThatValue) {
  using T = TypeParam;
  const auto rule = dig::dim_rule(T(1.5), T(1.5), T(0.1));
  EXPECT_EQ(dig::monotonic_flag(T(1.5), rule.lo, rule.hi), 1);
  EXPECT_EQ(dig::monotonic_flag(std::nextafter(T(1.5), T(2)), rule.lo, rule.hi), 0);
  EXPECT_EQ(rule.moved, T(1.5));
}

TYPED_TEST(DigMath, NanIsNeverMonotonic) {
  using T = TypeParam;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const auto rule = dig::dim_rule(T(0), T(1), T(0.5));
  EXPECT_EQ(dig::monotonic_flag(nan, rule.lo, rule.hi), 0);
  for (auto nan_rule : {dig::dim_rule(nan, T(1), T(0.5)), dig::dim_rule(T(0), nan, T(0.5))}) {
    EXPECT_EQ(dig::monotonic_flag(T(0.5), nan_rule.lo, nan_rule.hi), 0);
    EXPECT_TRUE(std::isnan(dig::monotonize(T(0.5), nan_rule)));
  }
  dig::Score score;
  dig::add_dim(score, nan, rule);
  EXPECT_EQ(score.count, 0);
  EXPECT_TRUE(std::isnan(score.squared_correction));
}

TYPED_TEST(DigMath, MonotonizeKeepsMonotonicValuesAndMovesTheRest) {
  using T = TypeParam;
  const auto rule = dig::dim_rule(T(0), T(2), T(0.25));
  EXPECT_EQ(dig::monotonize(T(1.25), rule), T(1.25));
  EXPECT_EQ(dig::monotonize(T(7), rule), T(0.5));
  EXPECT_EQ(dig::monotonize(T(-3), rule), T(0.5));
}

TYPED_TEST(DigMath, ScoreCountsMonotonicDimsAndSumsSquaredCorrections) {
  using T = TypeParam;
  const auto rule = dig::dim_rule(T(0), T(2), T(0.25));  // moved = 0.5
  dig::Score a, b;
  dig::add_dim(a, T(1), rule);   // monotonic
  dig::add_dim(a, T(3), rule);   // correction 2.5
  dig::add_dim(b, T(-1), rule);  // correction 1.5
  const dig::Score total = dig::combine(a, b);
  EXPECT_EQ(total.count, 1);
  EXPECT_DOUBLE_EQ(total.squared_correction, 2.5 * 2.5 + 1.5 * 1.5);
  EXPECT_DOUBLE_EQ(dig::correction_norm(total), std::sqrt(2.5 * 2.5 + 1.5 * 1.5));
  EXPECT_EQ(dig::masked_correction(T(1), rule.moved, 1), 0.0);
}

TEST(DigMath, GreedyPrefersTheSmallestCorrectionAndTiesGoToTheLowerIndex) {
  const dig::Score small{0, 1.0}, large{5, 4.0};
  EXPECT_TRUE(dig::better(dig::Strategy::Greedy, small, 7, large, 2));
  EXPECT_FALSE(dig::better(dig::Strategy::Greedy, large, 2, small, 7));
  EXPECT_TRUE(dig::better(dig::Strategy::Greedy, small, 1, small, 3));
  EXPECT_FALSE(dig::better(dig::Strategy::Greedy, small, 3, small, 1));
  const dig::Score nan{0, std::numeric_limits<double>::quiet_NaN()};
  EXPECT_TRUE(dig::better(dig::Strategy::Greedy, large, 9, nan, 0));  // NaN ranks last
  EXPECT_FALSE(dig::better(dig::Strategy::Greedy, nan, 0, large, 9));
}

TEST(DigMath, MaxCountPrefersMoreMonotonicDimsAndTiesGoToTheLowerIndex) {
  const dig::Score many{5, 9.0}, few{2, 0.0};
  EXPECT_TRUE(dig::better(dig::Strategy::MaxCount, many, 4, few, 0));
  EXPECT_FALSE(dig::better(dig::Strategy::MaxCount, few, 0, many, 4));
  EXPECT_TRUE(dig::better(dig::Strategy::MaxCount, few, 0, dig::Score{2, 7.0}, 1));  // count ties: index
}

TEST(DigMath, SquaredDifferenceIsExactForFloats) {
  const float a = 1.0f + std::numeric_limits<float>::epsilon(), b = 1.0f;
  EXPECT_EQ(dig::squared_difference(a, b), double(std::numeric_limits<float>::epsilon()) *
                                               double(std::numeric_limits<float>::epsilon()));
  EXPECT_EQ(dig::squared_difference(3.0f, -1.0f), 16.0);
}
