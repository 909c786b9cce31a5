// The argument checks every native op runs before a kernel reads raw memory (IG, DIG, influence):
// written once here. ValueError for shapes, devices and options, TypeError for dtypes, each message
// naming the argument and what was expected, as saliency_fast/_checks.py does for the reference.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace saliency_fast::checks {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_defined(const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), name, " must be a defined tensor");
}

inline void check_floating(const char* name, const at::Tensor& t) {
  check_defined(name, t);
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), name,
                   " must have a floating dtype (float32, float64, bfloat16, float16), got ", t.scalar_type());
}

inline void check_same_device(const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device(), "; expected the same device");
}

inline void check_same_dtype(const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", ref_name,
                   " has ", ref.scalar_type(), "; expected the same dtype");
}

inline void check_same_shape(const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), name, " has shape ", t.sizes(), " but ", ref_name, " has ",
                    ref.sizes(), "; expected the same shape");
}

// `t` is defined and shares `ref`'s device and dtype.
inline void check_like(const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  check_defined(name, t);
  check_same_device(name, t, ref_name, ref);
  check_same_dtype(name, t, ref_name, ref);
}

inline void check_one_dim(const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
}

}  // namespace saliency_fast::checks
