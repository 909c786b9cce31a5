// Schemas of the saliency_fast ops. Kernels register per device in csrc/cpu and csrc/cuda;
// other op families add theirs with TORCH_LIBRARY_FRAGMENT(saliency_fast, m).
#include <Python.h>
#include <torch/library.h>

// `import saliency_fast._C` loads this library, which runs the registrations below; the module
// itself is empty (Python calls the ops through torch.ops.saliency_fast).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr,
  };
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(saliency_fast, m) {
  m.def("ig_interpolate(Tensor x, Tensor baseline, Tensor alphas) -> Tensor");
  // into a buffer the caller holds (returns nothing: torch.compile functionalizes only such mutations)
  m.def("ig_interpolate_out(Tensor x, Tensor baseline, Tensor alphas, Tensor(a!) out) -> ()");
  m.def(
      "ig_accumulate(Tensor grads, Tensor weights, Tensor x, Tensor baseline, str reduce, Tensor? partial=None) "
      "-> Tensor");
  m.def("ig_accumulate_(Tensor(a!) acc, Tensor grads, Tensor weights, Tensor x, Tensor baseline) -> ()");
}
