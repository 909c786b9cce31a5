#include "convert.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SALIENCY_FAST_X86_F16C 1
#endif

namespace saliency_fast::cpu {
namespace {

#ifdef SALIENCY_FAST_X86_F16C
// Only intrinsics inside: the target attribute must not reach inline functions shared with
// other translation units (they would be compiled for an ISA the caller may lack).
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(h));
  }
  for (; j < n; ++j) dst[j] = _cvtsh_ss(src[j]);
}

__attribute__((target("avx,f16c"))) void float_to_half_f16c(const float* src, uint16_t* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), h);
  }
  for (; j < n; ++j) dst[j] = _cvtss_sh(src[j], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

bool has_f16c() {
  static const bool supported = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return supported;
}
#endif

}  // namespace

// c10::Half is a standard-layout wrapper of its uint16_t bits, hence the reinterpret_casts.
static_assert(sizeof(c10::Half) == sizeof(uint16_t));

void half_to_float(const c10::Half* src, float* dst, int64_t n) {
#ifdef SALIENCY_FAST_X86_F16C
  if (has_f16c()) {
    half_to_float_f16c(reinterpret_cast<const uint16_t*>(src), dst, n);
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}

void float_to_half(const float* src, c10::Half* dst, int64_t n) {
#ifdef SALIENCY_FAST_X86_F16C
  if (has_f16c()) {
    float_to_half_f16c(src, reinterpret_cast<uint16_t*>(dst), n);
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<c10::Half>(src[j]);
}

}  // namespace saliency_fast::cpu
