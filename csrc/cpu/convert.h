// Bulk conversion between storage dtypes and the opmath dtype for the CPU kernels' tiles.
// float16 uses the CPU's F16C instructions when it has them (chosen at run time: the extension
// is built for baseline x86-64), else c10's portable conversion; both round to nearest even.
#pragma once

#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace saliency_fast::cpu {

void half_to_float(const c10::Half* src, float* dst, int64_t n);
void float_to_half(const float* src, c10::Half* dst, int64_t n);

// n elements of src as opmath_t: src itself when no conversion is needed, else converted into
// scratch (which must hold n).
template <typename opmath_t, typename scalar_t>
const opmath_t* widen(const scalar_t* src, int64_t n, opmath_t* scratch) {
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    return src;
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    half_to_float(src, scratch, n);
    return scratch;
  } else {
    for (int64_t j = 0; j < n; ++j) scratch[j] = static_cast<opmath_t>(src[j]);
    return scratch;
  }
}

// Rounds n opmath values into dst's dtype.
template <typename opmath_t, typename scalar_t>
void narrow(const opmath_t* src, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<opmath_t, float>) {
    float_to_half(src, dst, n);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<scalar_t>(src[j]);
  }
}

}  // namespace saliency_fast::cpu
