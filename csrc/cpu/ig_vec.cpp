#include "ig_vec.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SALIENCY_FAST_X86_AVX2 1
#endif

namespace saliency_fast::cpu {
namespace {

using ig::accumulate_step;
using ig::interpolate_point;

// Steps added per pass over a tile's sums: eight gradient streams in flight (more memory-level
// parallelism than one stream; few enough for the hardware prefetchers to follow each), and the
// sums loaded and stored once per eight steps.
// (Measured against 4 and 16 steps a pass, and against software prefetch 512 and 1024 bytes ahead
// of each stream, which only added instructions.)
constexpr int kStepsPerPass = 8;

// ---------------------------------------------------------------------------------------------
// portable loops (any CPU): the math of ig.h element by element

template <typename T>
void weighted_sum_portable(const T* grads, int64_t stride, const float* weights, int64_t steps, float* sums,
                           int64_t n) {
  std::fill(sums, sums + n, 0.0f);
  for (int64_t k = 0; k < steps; ++k) {
    const T* g = grads + k * stride;
    const float w = weights[k];
    for (int64_t j = 0; j < n; ++j) sums[j] = accumulate_step(sums[j], w, static_cast<float>(g[j]));
  }
}

template <typename T>
void interpolate_portable(const T* x, const T* baseline, const float* alphas, int64_t steps, T* out, int64_t stride,
                          int64_t n) {
  for (int64_t k = 0; k < steps; ++k) {
    T* o = out + k * stride;
    for (int64_t j = 0; j < n; ++j) {
      o[j] = static_cast<T>(interpolate_point(static_cast<float>(x[j]), static_cast<float>(baseline[j]), alphas[k]));
    }
  }
}

float sum_of_portable(const float* values, int64_t n, ig::Reduce reduce) {
  float state = 0.0f;
  ig::with_reduction<float>(reduce, [&](auto reduction) {
    using R = decltype(reduction);
    state = R::identity();
    for (int64_t j = 0; j < n; ++j) state = R::combine(state, R::map(values[j]));
  });
  return state;
}

#ifdef SALIENCY_FAST_X86_AVX2
// ---------------------------------------------------------------------------------------------
// AVX2 + F16C: 8 floats a vector. Everything below carries the target attribute itself (GCC does
// not pass it on to lambdas or to functions it would inline).
#define SF_AVX2 __attribute__((target("avx2,f16c")))

bool has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return supported;
}

SF_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

// bfloat16 is the high half of a float32: widening is a shift, exact.
SF_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

SF_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

SF_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }

// Non-temporal: p aligned to the 8 values' size (32 bytes for float, 16 for the half types).
SF_AVX2 inline void stream8(float* p, __m256 v) { _mm256_stream_ps(p, v); }

SF_AVX2 inline __m128i to_half8(__m256 v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

// Round to nearest even as c10::BFloat16(float) does: add 0x7fff plus the kept part's lowest bit,
// keep the high half; NaN becomes the quiet NaN 0x7fc0.
SF_AVX2 inline __m128i to_bfloat8(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc0), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
}

SF_AVX2 inline void store8(c10::Half* p, __m256 v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_half8(v)); }
SF_AVX2 inline void stream8(c10::Half* p, __m256 v) { _mm_stream_si128(reinterpret_cast<__m128i*>(p), to_half8(v)); }
SF_AVX2 inline void store8(c10::BFloat16* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bfloat8(v));
}
SF_AVX2 inline void stream8(c10::BFloat16* p, __m256 v) {
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), to_bfloat8(v));
}

// One pass: sums[j] (= 0 on the first pass) plus `group` steps in step order, 8 lanes at a time.
template <int kGroup, typename T>
SF_AVX2 void weighted_pass_avx2(const T* grads, int64_t stride, const float* weights, float* sums, int64_t n,
                                bool first) {
  const int64_t vec_end = n - n % 8;
  __m256 w[kGroup];
  const T* g[kGroup];
  for (int i = 0; i < kGroup; ++i) {
    w[i] = _mm256_set1_ps(weights[i]);
    g[i] = grads + i * stride;
  }
  for (int64_t j = 0; j < vec_end; j += 8) {
    __m256 s = first ? _mm256_setzero_ps() : _mm256_loadu_ps(sums + j);
    for (int i = 0; i < kGroup; ++i) s = _mm256_add_ps(s, _mm256_mul_ps(w[i], load8(g[i] + j)));
    _mm256_storeu_ps(sums + j, s);
  }
  for (int64_t j = vec_end; j < n; ++j) {
    float s = first ? 0.0f : sums[j];
    for (int i = 0; i < kGroup; ++i) s = accumulate_step(s, weights[i], static_cast<float>(g[i][j]));
    sums[j] = s;
  }
}

// bfloat16, 16 values a vector load: each 32-bit lane holds two values, the high one already a
// float once masked, the low one once shifted. That is two single-cycle ALU operations per 16
// values where widening 8 at a time (vpmovzxwd + shift) takes a shuffle-port uop and a shift per 8:
// the half types' extra instructions per byte are what kept them below a plain sum's bandwidth.
// Sums of a block of 16 stay as [even lanes | odd lanes] through the passes and are put back in
// element order after the last; the rest (n % 16) runs element by element, the same math.
template <int kGroup>
SF_AVX2 void weighted_pass_bf16_even_odd(const c10::BFloat16* grads, int64_t stride, const float* weights, float* sums,
                                   int64_t vec_end, bool first) {
  __m256 w[kGroup];
  const c10::BFloat16* g[kGroup];
  for (int i = 0; i < kGroup; ++i) {
    w[i] = _mm256_set1_ps(weights[i]);
    g[i] = grads + i * stride;
  }
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t j = 0; j < vec_end; j += 16) {
    __m256 even = first ? _mm256_setzero_ps() : _mm256_loadu_ps(sums + j);
    __m256 odd = first ? _mm256_setzero_ps() : _mm256_loadu_ps(sums + j + 8);
    for (int i = 0; i < kGroup; ++i) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g[i] + j));
      even = _mm256_add_ps(even, _mm256_mul_ps(w[i], _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))));
      odd = _mm256_add_ps(odd, _mm256_mul_ps(w[i], _mm256_castsi256_ps(_mm256_and_si256(v, high))));
    }
    _mm256_storeu_ps(sums + j, even);
    _mm256_storeu_ps(sums + j + 8, odd);
  }
}

SF_AVX2 void weighted_sum_bf16_even_odd(const c10::BFloat16* grads, int64_t stride, const float* weights, int64_t steps,
                                  float* sums, int64_t n) {
  const int64_t vec_end = n - n % 16;
  for (int64_t k = 0; k < steps;) {
    const c10::BFloat16* g = grads + k * stride;
    const bool first = k == 0;
    const int64_t left = steps - k;
    if (left >= 8) {
      weighted_pass_bf16_even_odd<8>(g, stride, weights + k, sums, vec_end, first);
      k += 8;
    } else if (left >= 4) {
      weighted_pass_bf16_even_odd<4>(g, stride, weights + k, sums, vec_end, first);
      k += 4;
    } else if (left >= 2) {
      weighted_pass_bf16_even_odd<2>(g, stride, weights + k, sums, vec_end, first);
      k += 2;
    } else {
      weighted_pass_bf16_even_odd<1>(g, stride, weights + k, sums, vec_end, first);
      k += 1;
    }
  }
  // [even | odd] back to element order: unpack interleaves within 128-bit halves, permute joins them
  for (int64_t j = 0; j < vec_end; j += 16) {
    const __m256 even = _mm256_loadu_ps(sums + j), odd = _mm256_loadu_ps(sums + j + 8);
    const __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
    _mm256_storeu_ps(sums + j, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(sums + j + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  for (int64_t j = vec_end; j < n; ++j) {
    float s = 0.0f;
    for (int64_t k = 0; k < steps; ++k) s = accumulate_step(s, weights[k], static_cast<float>(grads[k * stride + j]));
    sums[j] = s;
  }
}

template <typename T>
SF_AVX2 void weighted_sum_avx2(const T* grads, int64_t stride, const float* weights, int64_t steps, float* sums,
                               int64_t n) {
  if (steps == 0) std::fill(sums, sums + n, 0.0f);
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (steps > 0) return weighted_sum_bf16_even_odd(grads, stride, weights, steps, sums, n);
  }
  for (int64_t k = 0; k < steps;) {
    const T* g = grads + k * stride;
    const bool first = k == 0;
    const int64_t left = steps - k;
    if (left >= kStepsPerPass) {
      weighted_pass_avx2<kStepsPerPass>(g, stride, weights + k, sums, n, first);
      k += kStepsPerPass;
    } else if (left >= 4) {
      weighted_pass_avx2<4>(g, stride, weights + k, sums, n, first);
      k += 4;
    } else if (left >= 2) {
      weighted_pass_avx2<2>(g, stride, weights + k, sums, n, first);
      k += 2;
    } else {
      weighted_pass_avx2<1>(g, stride, weights + k, sums, n, first);
      k += 1;
    }
  }
}

// ig_interpolate's steps into bfloat16 with AVX-512 BF16 (vcvtne2ps2bf16 rounds 32 floats to
// nearest even in one instruction, where the AVX2 narrowing takes a dozen per 8). That instruction
// treats denormal inputs as zero and keeps NaN payloads, unlike c10::BFloat16, so a group of 32
// holding a NaN or a denormal is rounded element by element instead (rare: never for finite
// inputs of normal size).
__attribute__((target("avx512f,avx512dq,avx512bf16"))) void interpolate_steps_bf16_avx512(
    const float* b, const float* d, const float* alphas, int64_t steps, c10::BFloat16* out, int64_t stride, int64_t n,
    bool streaming) {
  constexpr int kSpecial = 0x01 | 0x80 | 0x20;  // fpclass: quiet NaN, signalling NaN, denormal
  for (int64_t k = 0; k < steps; ++k) {
    c10::BFloat16* o = out + k * stride;
    const float alpha = alphas[k];
    const __m512 a = _mm512_set1_ps(alpha);
    int64_t j = 0;
    if (streaming) {  // element by element up to a 64-byte boundary, then whole aligned groups
      const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(o) % 64);
      const int64_t head = std::min<int64_t>(n, misaligned == 0 ? 0 : (64 - misaligned) / 2);
      for (; j < head; ++j) o[j] = static_cast<c10::BFloat16>(b[j] + alpha * d[j]);
    }
    for (; j + 32 <= n; j += 32) {
      const __m512 lo = _mm512_add_ps(_mm512_loadu_ps(b + j), _mm512_mul_ps(a, _mm512_loadu_ps(d + j)));
      const __m512 hi = _mm512_add_ps(_mm512_loadu_ps(b + j + 16), _mm512_mul_ps(a, _mm512_loadu_ps(d + j + 16)));
      if ((_mm512_fpclass_ps_mask(lo, kSpecial) | _mm512_fpclass_ps_mask(hi, kSpecial)) != 0) {
        for (int64_t i = j; i < j + 32; ++i) o[i] = static_cast<c10::BFloat16>(b[i] + alpha * d[i]);
        continue;
      }
      const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // low 16 lanes from lo
      if (streaming) {
        _mm512_stream_si512(reinterpret_cast<__m512i*>(o + j), packed);
      } else {
        _mm512_storeu_si512(reinterpret_cast<void*>(o + j), packed);
      }
    }
    for (; j < n; ++j) o[j] = static_cast<c10::BFloat16>(b[j] + alpha * d[j]);
  }
  if (streaming) _mm_sfence();
}

bool has_avx512_bf16() {
  static const bool supported = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                                __builtin_cpu_supports("avx512bf16");
  return supported;
}

template <typename T>
SF_AVX2 void interpolate_avx2(const T* x, const T* baseline, const float* alphas, int64_t steps, T* out,
                              int64_t stride, int64_t n, float* scratch, bool streaming) {
  float* b = scratch;
  float* d = scratch + n;
  const int64_t vec_end = n - n % 8;
  for (int64_t j = 0; j < vec_end; j += 8) {
    const __m256 bv = load8(baseline + j);
    _mm256_storeu_ps(b + j, bv);
    _mm256_storeu_ps(d + j, _mm256_sub_ps(load8(x + j), bv));
  }
  for (int64_t j = vec_end; j < n; ++j) {
    b[j] = static_cast<float>(baseline[j]);
    d[j] = static_cast<float>(x[j]) - b[j];
  }
  // interpolate_point(x, b, a) = b + a * (x - b), with x - b taken once per element above.
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (has_avx512_bf16()) return interpolate_steps_bf16_avx512(b, d, alphas, steps, out, stride, n, streaming);
  }
  constexpr int64_t kVectorBytes = 8 * sizeof(T);
  for (int64_t k = 0; k < steps; ++k) {
    T* o = out + k * stride;
    const float alpha = alphas[k];
    const __m256 a = _mm256_set1_ps(alpha);
    int64_t j = 0;
    if (streaming) {  // up to the first aligned vector by element, then whole vectors past the caches
      const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(o) % kVectorBytes);
      const int64_t head = std::min<int64_t>(n, misaligned == 0 ? 0 : (kVectorBytes - misaligned) / sizeof(T));
      for (; j < head; ++j) o[j] = static_cast<T>(b[j] + alpha * d[j]);
      for (; j + 8 <= n; j += 8) {
        stream8(o + j, _mm256_add_ps(_mm256_loadu_ps(b + j), _mm256_mul_ps(a, _mm256_loadu_ps(d + j))));
      }
    } else {
      for (; j + 8 <= n; j += 8) {
        store8(o + j, _mm256_add_ps(_mm256_loadu_ps(b + j), _mm256_mul_ps(a, _mm256_loadu_ps(d + j))));
      }
    }
    for (; j < n; ++j) o[j] = static_cast<T>(b[j] + alpha * d[j]);
  }
  if (streaming) _mm_sfence();  // order the non-temporal stores before the caller's next ones
}

// The vector forms of ig.h's Reduction::map (identity, square, absolute value).
SF_AVX2 inline __m256 map8(__m256 v, ig::Reduce reduce) {
  switch (reduce) {
    case ig::Reduce::L2:
      return _mm256_mul_ps(v, v);
    case ig::Reduce::AbsSum:
      return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
    default:
      return v;
  }
}

SF_AVX2 float sum_of_avx2(const float* values, int64_t n, ig::Reduce reduce) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    acc0 = _mm256_add_ps(acc0, map8(_mm256_loadu_ps(values + j), reduce));
    acc1 = _mm256_add_ps(acc1, map8(_mm256_loadu_ps(values + j + 8), reduce));
  }
  if (j + 8 <= n) {
    acc0 = _mm256_add_ps(acc0, map8(_mm256_loadu_ps(values + j), reduce));
    j += 8;
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(acc0, acc1));
  float state = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  return state + sum_of_portable(values + j, n - j, reduce);
}
#undef SF_AVX2
#else
bool has_avx2() { return false; }
#endif

template <typename T>
void weighted_sum_any(const T* grads, int64_t stride, const float* weights, int64_t steps, float* sums, int64_t n) {
#ifdef SALIENCY_FAST_X86_AVX2
  if (has_avx2()) return weighted_sum_avx2(grads, stride, weights, steps, sums, n);
#endif
  weighted_sum_portable(grads, stride, weights, steps, sums, n);
}

template <typename T>
void interpolate_any(const T* x, const T* baseline, const float* alphas, int64_t steps, T* out, int64_t stride,
                     int64_t n, float* scratch, bool streaming) {
#ifdef SALIENCY_FAST_X86_AVX2
  if (has_avx2()) return interpolate_avx2(x, baseline, alphas, steps, out, stride, n, scratch, streaming);
#endif
  (void)scratch;
  (void)streaming;
  interpolate_portable(x, baseline, alphas, steps, out, stride, n);
}

}  // namespace

void weighted_sum(const float* grads, int64_t stride, const float* weights, int64_t steps, float* sums, int64_t n) {
  weighted_sum_any(grads, stride, weights, steps, sums, n);
}
void weighted_sum(const c10::BFloat16* grads, int64_t stride, const float* weights, int64_t steps, float* sums,
                  int64_t n) {
  weighted_sum_any(grads, stride, weights, steps, sums, n);
}
void weighted_sum(const c10::Half* grads, int64_t stride, const float* weights, int64_t steps, float* sums,
                  int64_t n) {
  weighted_sum_any(grads, stride, weights, steps, sums, n);
}

void interpolate(const float* x, const float* baseline, const float* alphas, int64_t steps, float* out,
                 int64_t stride, int64_t n, float* scratch, bool streaming) {
  interpolate_any(x, baseline, alphas, steps, out, stride, n, scratch, streaming);
}
void interpolate(const c10::BFloat16* x, const c10::BFloat16* baseline, const float* alphas, int64_t steps,
                 c10::BFloat16* out, int64_t stride, int64_t n, float* scratch, bool streaming) {
  interpolate_any(x, baseline, alphas, steps, out, stride, n, scratch, streaming);
}
void interpolate(const c10::Half* x, const c10::Half* baseline, const float* alphas, int64_t steps, c10::Half* out,
                 int64_t stride, int64_t n, float* scratch, bool streaming) {
  interpolate_any(x, baseline, alphas, steps, out, stride, n, scratch, streaming);
}

float sum_of(const float* values, int64_t n, ig::Reduce reduce) {
#ifdef SALIENCY_FAST_X86_AVX2
  if (has_avx2()) return sum_of_avx2(values, n, reduce);
#endif
  return sum_of_portable(values, n, reduce);
}

}  // namespace saliency_fast::cpu
