// Shared declarations and helpers of the reality_stone CPU kernels (AVX2 + FMA).
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace reality_stone {

inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  sums = _mm_add_ss(sums, shuf);
  return _mm_cvtss_f32(sums);
}

constexpr int kMaxBatch = 8;  // the fused paths serve decode-sized batches; larger ones go tiled

}  // namespace reality_stone

extern const bool kHasAvx512;      // the low-bit fp32 path runs on AVX-512 (int_lowbit_cpu.cpp)
extern const bool kHasAvx512Vnni;  // the int8-activation path is available

torch::Tensor lowbit_gemv(torch::Tensor x, torch::Tensor codes, torch::Tensor scale, torch::Tensor offset,
                          bool zero_point, int64_t group, int64_t bits);
torch::Tensor lowbit_gemv_a8(torch::Tensor x, torch::Tensor codes, torch::Tensor scale, torch::Tensor offset,
                             bool zero_point, int64_t group, int64_t bits);
std::vector<torch::Tensor> quantize_activations_int8(torch::Tensor x, int64_t group);
torch::Tensor seedbasis_gemv(torch::Tensor v, torch::Tensor pattern, torch::Tensor seeds, torch::Tensor exps,
                             torch::Tensor codes);
torch::Tensor packed64_gemv(torch::Tensor x, torch::Tensor leaves, torch::Tensor params, torch::Tensor row_start,
                            torch::Tensor tables, int64_t block);
torch::Tensor packed64_rows(torch::Tensor leaves, torch::Tensor params, torch::Tensor row_start,
                            torch::Tensor tables, int64_t block, int64_t r0, int64_t r1, int64_t cols_pad);
std::vector<torch::Tensor> seedbasis_search(torch::Tensor w, torch::Tensor U, torch::Tensor M, torch::Tensor G,
                                            torch::Tensor e_lo, torch::Tensor e_hi, int64_t coeff_bits);
