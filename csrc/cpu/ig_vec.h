// Vector loops of the IG CPU kernels' tiles, float32 opmath (float32, bfloat16 and float16 storage).
// The extension is built for baseline x86-64, so these run AVX2 + F16C code when the CPU has it
// (chosen once at run time) and portable loops otherwise. Both do the same arithmetic as
// saliency_fast/ig.h, operation for operation (a multiply then an add, never a fused multiply-add;
// inputs widened exactly, results rounded once to nearest even), so the two paths give identical
// results; only sum_of may add in another order (the reductions are associative, see ig.h).
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "saliency_fast/ig.h"

namespace saliency_fast::cpu {

// sums[j] = sum over k in step order of weights[k] * grads[k * stride + j], for j < n: each step's
// tile is one contiguous stream, steps taken a few at a time, sums kept in the caller's (cached) tile.
void weighted_sum(const float* grads, int64_t stride, const float* weights, int64_t steps, float* sums, int64_t n);
void weighted_sum(const c10::BFloat16* grads, int64_t stride, const float* weights, int64_t steps, float* sums,
                  int64_t n);
void weighted_sum(const c10::Half* grads, int64_t stride, const float* weights, int64_t steps, float* sums,
                  int64_t n);

// out[k * stride + j] = interpolate_point(x[j], baseline[j], alphas[k]) for k < steps, j < n, rounded
// once to the output's dtype; `scratch` holds 2 * n floats (the widened baseline and x - baseline).
// `streaming`: write with non-temporal stores, which skip reading the output's cache lines before
// writing them; for outputs far larger than the caches, where the lines would be evicted unread.
void interpolate(const float* x, const float* baseline, const float* alphas, int64_t steps, float* out,
                 int64_t stride, int64_t n, float* scratch, bool streaming);
void interpolate(const c10::BFloat16* x, const c10::BFloat16* baseline, const float* alphas, int64_t steps,
                 c10::BFloat16* out, int64_t stride, int64_t n, float* scratch, bool streaming);
void interpolate(const c10::Half* x, const c10::Half* baseline, const float* alphas, int64_t steps, c10::Half* out,
                 int64_t stride, int64_t n, float* scratch, bool streaming);

// Reduction::combine over Reduction::map(values[j]) for j < n, from the identity, in any order
// (vector lanes); the caller combines it into its running state and finalizes the row.
float sum_of(const float* values, int64_t n, ig::Reduce reduce);

}  // namespace saliency_fast::cpu
