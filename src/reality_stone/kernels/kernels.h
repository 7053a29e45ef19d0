// Shared helpers of the reality_stone CPU kernels (AVX2 + FMA) and the bindings registry.
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

// Batch rows a fused kernel holds in registers per pass; larger batches loop over slices of this
// size. Which batches reach a fused kernel at all is Python's choice (linear_op.MAX_FUSED_BATCH).
constexpr int kMaxBatch = 8;

// y[N] = W x for one contiguous fp32 row x (the layout's padded width K) and a group-quantised W
// in the int_lowbit_cpu.cpp layout (codes uint8 [N, K/64·8·bits], scale/offset fp16 [N, K/group]);
// int8: x quantised to int8 per group inside (AVX-512 VNNI only; lowbit_gemv_a8's numbers).
void lowbit_gemv_row(const float* x, const torch::Tensor& codes, const torch::Tensor& scale,
                     const torch::Tensor& offset, bool zero_point, int64_t group, int64_t bits, bool int8, float* y);

// The seed-basis batch-1 kernel (seedbasis_cpu.cpp) on one fp32 row x [K]: y[rows] = W x for each
// of n_weights weights of one format that read this x (one pass over x's tables for all of them).
// A weight: its layout's records (G·nb·R + 16 bytes, nb = ⌈K/8⌉, G = Np/8), row scales fp32 [Np]
// (each row's 2^t), and y. pat: `seedbasis_gemv_table` of the layouts' pattern ids, int32
// [2^S, PL], entries in [0, 256]. The caller checks the sizes.
struct SeedbasisWeight {
  const uint8_t* rec;
  const float* scale;
  int64_t Np, rows;
  float* y;
};
torch::Tensor seedbasis_gemv_table(const torch::Tensor& pattern);
void seedbasis_gemv_rows(const float* x, int64_t K, const SeedbasisWeight* weights, int n_weights, const int32_t* pat,
                         int64_t PL, int S, int E, int P, int Q);
// The same weights with x [B, K] (rows K apart) quantised to int8 per 64 inputs (the numbers of
// seedbasis.py's `seedbasis_linear_a8_reference`): weight w's row r of batch row b goes to
// y[b·ldy + r]. pat8: the pattern ids as uint8 [2^S][4] (padding coefficients any id). Needs
// seedbasis_a8_supported(S, E, P, Q).
void seedbasis_gemm_a8_rows(const float* x, int64_t B, int64_t K, const SeedbasisWeight* weights, int n_weights,
                            int64_t ldy, const uint8_t* pat8, int S, int E, int P, int Q);
bool seedbasis_a8_supported(int S, int E, int P, int Q);

// Each kernel source registers its own Python bindings beside its definitions (bindings.cpp runs
// them all), so adding a kernel is its .cpp, its ops module and its conformance case.
using BindFn = void (*)(pybind11::module_&);
std::vector<BindFn>& binding_registry();
struct RegisterBindings {
  explicit RegisterBindings(BindFn f) { binding_registry().push_back(f); }
};

}  // namespace reality_stone
