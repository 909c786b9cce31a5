// Validation and preparation of the DIG ops' arguments, shared by the CPU and CUDA entry points.
// The checks mirror the DIG section of saliency_fast/_checks.py (ValueError for shapes, devices
// and options, TypeError for dtypes, each naming the argument), so a direct torch.ops call with
// bad input raises the same kind of error and a kernel never reads out of bounds.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <ATen/core/Tensor.h>

#include "saliency_fast/dig.h"

namespace saliency_fast::dig {

// dig_monotonize: contiguous inputs of one shape and the output.
struct MonotonizeArgs {
  at::Tensor anchor, current, baseline, out;
  int64_t numel = 0;
  int64_t steps = 0;
};

// dig_monotonic_scores and dig_select_anchor: candidates [n, k, d]; current, baseline and
// scored_against [n, d] (scored_against is anchor_word, or current when absent); valid [n, k];
// the allocated outputs: counts int64 and norms float64 [n, k] (scores), choice int64 [n] and
// out [n, d] (select).
struct CandidateArgs {
  at::Tensor candidates, valid, current, baseline, scored_against;
  at::Tensor counts, norms, choice, out;
  int64_t n = 0, k = 0, d = 0;
  int64_t steps = 0;
  Strategy strategy = Strategy::Greedy;
};

// dig_exact_distances: embedding [v, d], queries [m, d], candidates int64 [m, c], out float64 [m, c].
struct DistanceArgs {
  at::Tensor embedding, queries, candidates, out;
  int64_t v = 0, d = 0, m = 0, c = 0;
};

DistanceArgs prepare_distances(const at::Tensor& embedding, const at::Tensor& queries, const at::Tensor& candidates);

MonotonizeArgs prepare_monotonize(const at::Tensor& anchor, const at::Tensor& current, const at::Tensor& baseline,
                                  int64_t steps);

CandidateArgs prepare_scores(const at::Tensor& candidates, const at::Tensor& current, const at::Tensor& baseline,
                             int64_t steps);

CandidateArgs prepare_select(const at::Tensor& candidates, const at::Tensor& valid, const at::Tensor& current,
                             const at::Tensor& baseline, int64_t steps, std::string_view strategy,
                             const std::optional<at::Tensor>& anchor_word);

}  // namespace saliency_fast::dig
