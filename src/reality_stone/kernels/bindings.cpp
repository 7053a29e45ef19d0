// Python bindings of the reality_stone CPU kernels (one extension module).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lowbit_gemv", &lowbit_gemv, "fused 2/3/4-bit group-quantised GEMV/small-batch GEMM, fp32 activations");
  m.def("lowbit_gemv_a8", &lowbit_gemv_a8, "the same with int8 activations (AVX-512 VNNI)");
  m.def("quantize_activations_int8", &quantize_activations_int8, "per-group int8 activation quantiser");
  m.def("has_avx512", []() { return kHasAvx512; }, "whether the low-bit fp32 path runs on AVX-512");
  m.def("has_avx512_vnni", []() { return kHasAvx512Vnni; }, "whether the int8-activation path is available");
  m.def("seedbasis_gemv", &seedbasis_gemv, "fused seed-basis GEMV/small-batch GEMM (expanded z rows + FMA)");
  m.def("seedbasis_search", &seedbasis_search, "seed-basis encoder: best quantised seed per block (all seeds)");
  m.def("packed64_gemv", &packed64_gemv, "fused Packed64 GEMV/small-batch GEMM (leaves generated row by row)");
  m.def("packed64_rows", &packed64_rows, "rows [r0, r1) of a Packed64 weight, generated (tiled path, backward)");
}
