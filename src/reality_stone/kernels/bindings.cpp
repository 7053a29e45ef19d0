// Python bindings of the reality_stone CPU kernels (one extension module).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int4_gemv", &int4_gemv, "fused int4 group-quantised GEMV/small-batch GEMM (AVX2 + FMA)");
  m.def("has_avx512", []() { return kHasAvx512; }, "whether the batch-1 int4 path runs on AVX-512");
  m.def("seedbasis_gemv", &seedbasis_gemv, "fused seed-basis GEMV/small-batch GEMM (AVX2 gathers + FMA)");
}
