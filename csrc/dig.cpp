// Schemas and argument checks of the Discretized Integrated Gradients ops. Kernels register per
// device in csrc/cpu/dig_cpu.cpp and csrc/cuda/dig_cuda.cu; specification in reference.py.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "saliency_fast/arg_checks.h"
#include "saliency_fast/dig_args.h"

namespace saliency_fast::dig {
namespace {

using checks::check_defined;
using checks::check_floating;
using checks::check_like;
using checks::check_same_shape;

void check_steps(int64_t steps) {
  TORCH_CHECK_VALUE(steps >= 1, "steps must be >= 1, got ", steps);
}

Strategy parse_strategy(std::string_view strategy) {
  if (strategy == "greedy") return Strategy::Greedy;
  if (strategy == "maxcount") return Strategy::MaxCount;
  TORCH_CHECK_VALUE(false, "strategy must be one of ('greedy', 'maxcount'), got '", strategy, "'");
}

}  // namespace

DistanceArgs prepare_distances(const at::Tensor& embedding, const at::Tensor& queries, const at::Tensor& candidates) {
  check_floating("embedding", embedding);
  TORCH_CHECK_VALUE(embedding.dim() == 2, "embedding must have shape (V, D), got ", embedding.sizes());
  check_like("queries", queries, "embedding", embedding);
  TORCH_CHECK_VALUE(queries.dim() == 2 && queries.size(1) == embedding.size(1), "queries must have shape (M, D) = (M, ",
                    embedding.size(1), "), got ", queries.sizes());
  check_defined("candidates", candidates);
  TORCH_CHECK_TYPE(candidates.scalar_type() == at::kLong, "candidates must be an int64 tensor of row indices, got ",
                   candidates.scalar_type());
  TORCH_CHECK_VALUE(candidates.device() == embedding.device(), "candidates is on ", candidates.device(),
                    " but embedding is on ", embedding.device(), "; expected the same device");
  TORCH_CHECK_VALUE(candidates.dim() == 2 && candidates.size(0) == queries.size(0),
                    "candidates must have shape (M, C) with M = ", queries.size(0), " (one row per query), got ",
                    candidates.sizes());
  DistanceArgs args;
  args.embedding = embedding.contiguous();
  args.queries = queries.contiguous();
  args.candidates = candidates.contiguous();
  args.v = embedding.size(0);
  args.d = embedding.size(1);
  args.m = candidates.size(0);
  args.c = candidates.size(1);
  args.out = at::empty({args.m, args.c}, embedding.options().dtype(at::kDouble));
  return args;
}

MonotonizeArgs prepare_monotonize(const at::Tensor& anchor, const at::Tensor& current, const at::Tensor& baseline,
                                  int64_t steps) {
  check_floating("anchor", anchor);
  check_like("current", current, "anchor", anchor);
  check_same_shape("current", current, "anchor", anchor);
  check_like("baseline", baseline, "anchor", anchor);
  check_same_shape("baseline", baseline, "anchor", anchor);
  check_steps(steps);
  MonotonizeArgs args;
  args.anchor = anchor.contiguous();
  args.current = current.contiguous();
  args.baseline = baseline.contiguous();
  args.out = at::empty_like(args.anchor);
  args.numel = anchor.numel();
  args.steps = steps;
  return args;
}

namespace {

// The checks and inputs both candidate ops share (no outputs).
CandidateArgs prepare_candidates(const at::Tensor& candidates, const at::Tensor& current, const at::Tensor& baseline,
                                 int64_t steps) {
  check_floating("candidates", candidates);
  TORCH_CHECK_VALUE(candidates.dim() == 3, "candidates must have shape (N, K, D), got ", candidates.sizes());
  check_like("current", current, "candidates", candidates);
  const int64_t n = candidates.size(0), d = candidates.size(2);
  TORCH_CHECK_VALUE(current.dim() == 2 && current.size(0) == n && current.size(1) == d,
                    "current must have shape (N, D) = (", n, ", ", d, ") to match candidates, got ",
                    current.sizes());
  check_like("baseline", baseline, "candidates", candidates);
  check_same_shape("baseline", baseline, "current", current);
  check_steps(steps);
  CandidateArgs args;
  args.candidates = candidates.contiguous();
  args.current = current.contiguous();
  args.baseline = baseline.contiguous();
  args.scored_against = args.current;
  args.n = n;
  args.k = candidates.size(1);
  args.d = d;
  args.steps = steps;
  return args;
}

}  // namespace

CandidateArgs prepare_scores(const at::Tensor& candidates, const at::Tensor& current, const at::Tensor& baseline,
                             int64_t steps) {
  CandidateArgs args = prepare_candidates(candidates, current, baseline, steps);
  args.counts = at::empty({args.n, args.k}, args.candidates.options().dtype(at::kLong));
  args.norms = at::empty({args.n, args.k}, args.candidates.options().dtype(at::kDouble));
  return args;
}

CandidateArgs prepare_select(const at::Tensor& candidates, const at::Tensor& valid, const at::Tensor& current,
                             const at::Tensor& baseline, int64_t steps, std::string_view strategy,
                             const std::optional<at::Tensor>& anchor_word) {
  CandidateArgs args = prepare_candidates(candidates, current, baseline, steps);
  check_defined("valid", valid);
  TORCH_CHECK_TYPE(valid.scalar_type() == at::kBool, "valid must be a bool tensor, got ", valid.scalar_type());
  TORCH_CHECK_VALUE(valid.device() == candidates.device(), "valid is on ", valid.device(), " but candidates is on ",
                    candidates.device(), "; expected the same device");
  TORCH_CHECK_VALUE(valid.dim() == 2 && valid.size(0) == args.n && valid.size(1) == args.k,
                    "valid must have shape (N, K) = (", args.n, ", ", args.k, ") to match candidates, got ",
                    valid.sizes());
  args.strategy = parse_strategy(strategy);
  if (anchor_word.has_value() && anchor_word->defined()) {
    check_like("anchor_word", *anchor_word, "candidates", candidates);
    check_same_shape("anchor_word", *anchor_word, "current", current);
    args.scored_against = anchor_word->contiguous();
  }
  args.valid = valid.contiguous();
  args.choice = at::empty({args.n}, args.candidates.options().dtype(at::kLong));
  args.out = at::empty({args.n, args.d}, args.candidates.options());
  return args;
}

}  // namespace saliency_fast::dig

TORCH_LIBRARY_FRAGMENT(saliency_fast, m) {
  m.def("dig_exact_distances(Tensor embedding, Tensor queries, Tensor candidates) -> Tensor");
  m.def("dig_monotonize(Tensor anchor, Tensor current, Tensor baseline, int steps) -> Tensor");
  m.def(
      "dig_monotonic_scores(Tensor candidates, Tensor current, Tensor baseline, int steps) "
      "-> (Tensor counts, Tensor correction_norm)");
  m.def(
      "dig_select_anchor(Tensor candidates, Tensor valid, Tensor current, Tensor baseline, int steps, "
      "str strategy, Tensor? anchor_word=None) -> (Tensor choice, Tensor monotonized)");
}
