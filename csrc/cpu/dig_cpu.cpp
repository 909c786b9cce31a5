// CPU kernels of the DIG ops. Rows are split across threads; each row's per-dimension rules
// (interval and correction target) are computed once and then applied to all its candidates.
#include <algorithm>
#include <atomic>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "saliency_fast/dig.h"
#include "saliency_fast/dig_args.h"

namespace saliency_fast::dig {
namespace {

// Elementwise work per parallel task, as ATen uses.
constexpr int64_t kGrain = 32768;

template <typename opmath_t>
opmath_t inverse_steps(int64_t steps) {
  return static_cast<opmath_t>(1.0 / static_cast<double>(steps));
}

// One row's rules, structure of arrays so the candidate loop below vectorizes.
template <typename opmath_t>
struct RowRules {
  std::vector<opmath_t> lo, hi, moved;

  template <typename scalar_t>
  void fill(const scalar_t* current, const scalar_t* baseline, int64_t d, opmath_t inv_steps) {
    lo.resize(d);
    hi.resize(d);
    moved.resize(d);
    for (int64_t j = 0; j < d; ++j) {
      const auto rule = dim_rule(static_cast<opmath_t>(current[j]), static_cast<opmath_t>(baseline[j]), inv_steps);
      lo[j] = rule.lo;
      hi[j] = rule.hi;
      moved[j] = rule.moved;
    }
  }
};

// Eight interleaved partial scores: independent accumulation chains the compiler can vectorize.
constexpr int kLanes = 8;

template <typename scalar_t, typename opmath_t>
Score score_candidate(const scalar_t* candidate, const RowRules<opmath_t>& rules, int64_t d) {
  double squared[kLanes] = {};
  int32_t count[kLanes] = {};
  const opmath_t *lo = rules.lo.data(), *hi = rules.hi.data(), *moved = rules.moved.data();
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      const auto c = static_cast<opmath_t>(candidate[j + u]);
      const int monotonic = monotonic_flag(c, lo[j + u], hi[j + u]);
      const double correction = masked_correction(c, moved[j + u], monotonic);
      squared[u] += correction * correction;
      count[u] += monotonic;
    }
  }
  Score score;
  for (; j < d; ++j) add_dim(score, static_cast<opmath_t>(candidate[j]), lo[j], hi[j], moved[j]);
  for (int u = 0; u < kLanes; ++u) score = combine(score, Score{count[u], squared[u]});
  return score;
}

template <typename scalar_t, typename opmath_t>
void monotonize_row(const scalar_t* anchor, const RowRules<opmath_t>& rules, int64_t d, scalar_t* out) {
  for (int64_t j = 0; j < d; ++j) {
    out[j] = static_cast<scalar_t>(monotonize(static_cast<opmath_t>(anchor[j]), rules.lo[j], rules.hi[j],
                                              rules.moved[j]));
  }
}

int64_t row_grain(int64_t work_per_row) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work_per_row));
}

at::Tensor dig_exact_distances_cpu(const at::Tensor& embedding, const at::Tensor& queries,
                                  const at::Tensor& candidates) {
  DistanceArgs args = prepare_distances(embedding, queries, candidates);
  std::atomic<bool> out_of_range{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.embedding.scalar_type(), "dig_distances_cpu", [&] {
    const scalar_t* rows = args.embedding.const_data_ptr<scalar_t>();
    const scalar_t* q = args.queries.const_data_ptr<scalar_t>();
    const int64_t* idx = args.candidates.const_data_ptr<int64_t>();
    double* out = args.out.mutable_data_ptr<double>();
    const int64_t c = args.c, d = args.d, v = args.v;
    at::parallel_for(0, args.m, row_grain(c * d), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t j = 0; j < c; ++j) {
          const int64_t row = idx[i * c + j];
          if (row < 0 || row >= v) {
            out_of_range = true;
            out[i * c + j] = 0.0;
            continue;
          }
          double part[4] = {0.0, 0.0, 0.0, 0.0};
          const scalar_t* e = rows + row * d;
          const scalar_t* qi = q + i * d;
          int64_t t = 0;
          for (; t + 4 <= d; t += 4) {
            for (int u = 0; u < 4; ++u) part[u] += squared_difference(e[t + u], qi[t + u]);
          }
          for (; t < d; ++t) part[0] += squared_difference(e[t], qi[t]);
          out[i * c + j] = (part[0] + part[1]) + (part[2] + part[3]);
        }
      }
    });
  });
  TORCH_CHECK_VALUE(!out_of_range, "candidates must hold row indices of embedding, in [0, ", args.v, ")");
  return args.out;
}

at::Tensor dig_monotonize_cpu(const at::Tensor& anchor, const at::Tensor& current, const at::Tensor& baseline,
                              int64_t steps) {
  MonotonizeArgs args = prepare_monotonize(anchor, current, baseline, steps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.anchor.scalar_type(), "dig_monotonize_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t inv = inverse_steps<opmath_t>(args.steps);
    const scalar_t* a = args.anchor.const_data_ptr<scalar_t>();
    const scalar_t* c = args.current.const_data_ptr<scalar_t>();
    const scalar_t* b = args.baseline.const_data_ptr<scalar_t>();
    scalar_t* out = args.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, args.numel, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const auto rule = dim_rule(static_cast<opmath_t>(c[e]), static_cast<opmath_t>(b[e]), inv);
        out[e] = static_cast<scalar_t>(monotonize(static_cast<opmath_t>(a[e]), rule));
      }
    });
  });
  return args.out;
}

std::tuple<at::Tensor, at::Tensor> dig_monotonic_scores_cpu(const at::Tensor& candidates, const at::Tensor& current,
                                                            const at::Tensor& baseline, int64_t steps) {
  CandidateArgs args = prepare_scores(candidates, current, baseline, steps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.candidates.scalar_type(), "dig_scores_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t inv = inverse_steps<opmath_t>(args.steps);
    const scalar_t* cand = args.candidates.const_data_ptr<scalar_t>();
    const scalar_t* against = args.scored_against.const_data_ptr<scalar_t>();
    const scalar_t* base = args.baseline.const_data_ptr<scalar_t>();
    int64_t* count_out = args.counts.mutable_data_ptr<int64_t>();
    double* norm_out = args.norms.mutable_data_ptr<double>();
    const int64_t k = args.k, d = args.d;
    at::parallel_for(0, args.n, row_grain(k * d), [&](int64_t begin, int64_t end) {
      RowRules<opmath_t> rules;
      for (int64_t row = begin; row < end; ++row) {
        rules.fill(against + row * d, base + row * d, d, inv);
        for (int64_t kk = 0; kk < k; ++kk) {
          const Score s = score_candidate(cand + (row * k + kk) * d, rules, d);
          count_out[row * k + kk] = s.count;
          norm_out[row * k + kk] = correction_norm(s);
        }
      }
    });
  });
  return {args.counts, args.norms};
}

std::tuple<at::Tensor, at::Tensor> dig_select_anchor_cpu(const at::Tensor& candidates, const at::Tensor& valid,
                                                         const at::Tensor& current, const at::Tensor& baseline,
                                                         int64_t steps, c10::string_view strategy,
                                                         const std::optional<at::Tensor>& anchor_word) {
  CandidateArgs args = prepare_select(candidates, valid, current, baseline, steps,
                                      std::string_view(strategy.data(), strategy.size()), anchor_word);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.candidates.scalar_type(), "dig_select_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const opmath_t inv = inverse_steps<opmath_t>(args.steps);
    const scalar_t* cand = args.candidates.const_data_ptr<scalar_t>();
    const bool* ok = args.valid.const_data_ptr<bool>();
    const scalar_t* cur = args.current.const_data_ptr<scalar_t>();
    const scalar_t* against = args.scored_against.const_data_ptr<scalar_t>();
    const scalar_t* base = args.baseline.const_data_ptr<scalar_t>();
    int64_t* choice_out = args.choice.mutable_data_ptr<int64_t>();
    scalar_t* mono_out = args.out.mutable_data_ptr<scalar_t>();
    const int64_t k = args.k, d = args.d;
    at::parallel_for(0, args.n, row_grain(k * d), [&](int64_t begin, int64_t end) {
      RowRules<opmath_t> rules;
      for (int64_t row = begin; row < end; ++row) {
        rules.fill(against + row * d, base + row * d, d, inv);
        int64_t best_k = -1;
        Score best;
        for (int64_t kk = 0; kk < k; ++kk) {
          if (!ok[row * k + kk]) continue;
          const Score s = score_candidate(cand + (row * k + kk) * d, rules, d);
          if (best_k < 0 || better(args.strategy, s, kk, best, best_k)) {
            best = s;
            best_k = kk;
          }
        }
        choice_out[row] = best_k;
        scalar_t* dst = mono_out + row * d;
        if (best_k < 0) {
          std::copy(base + row * d, base + (row + 1) * d, dst);
          continue;
        }
        rules.fill(cur + row * d, base + row * d, d, inv);
        monotonize_row(cand + (row * k + best_k) * d, rules, d, dst);
      }
    });
  });
  return {args.choice, args.out};
}

}  // namespace
}  // namespace saliency_fast::dig

TORCH_LIBRARY_IMPL(saliency_fast, CPU, m) {
  m.impl("dig_exact_distances", &saliency_fast::dig::dig_exact_distances_cpu);
  m.impl("dig_monotonize", &saliency_fast::dig::dig_monotonize_cpu);
  m.impl("dig_monotonic_scores", &saliency_fast::dig::dig_monotonic_scores_cpu);
  m.impl("dig_select_anchor", &saliency_fast::dig::dig_select_anchor_cpu);
}
