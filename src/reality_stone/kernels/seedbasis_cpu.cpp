// Fused seed-basis matmul for CPU: y = x Wᵀ with W stored as seed-basis blocks (C = 8).
//
// Block (row r, column block j) decodes to 2^e[r,j] · Σ_p q[r,j,p] · U_{s[r,j], p}, each basis
// row U_{s,p} ∈ {±1}^8 being one of 256 sign patterns. So with
//     v[b, j, k] = Σ_c sign_k(c) · x[b, 8j + c]          (all 256 patterns, computed per call)
// the block's contribution is 2^e · Σ_p q_p · v[b, j, pattern[s·P + p]] — table lookups per
// block, never W. The v table is 1 KB per column block and stays in L1 while a thread walks
// its rows (column block outer, rows inner); 8 rows go through one AVX2 register. When a
// thread has enough rows, it first expands z[s·P + p] = v[j, pattern[s·P + p]] for every
// seed (2^S·P floats, L1/L2-resident), so each coefficient costs one gather instead of two;
// AVX2 gathers are this kernel's bottleneck.
//
// Compute layout (seedbasis.py, built once): seeds uint16 [nb, Np], exps int8 [nb, Np]
// (absolute block exponents, in [-126, 127]), codes uint8 [nb, P, Np/2] (code + 8, 4 bits;
// per 8-row group 4 bytes, byte i = row i in the low nibble and row i + 4 in the high one),
// Np = rows padded to a multiple of 8.
#include "kernels.h"

#include <cstring>
#include <vector>

using reality_stone::kMaxBatch;

namespace {
constexpr int kMaxCoeffs = 8;
constexpr int kPatterns = 256;
}  // namespace

// v: [B, nb, 256] fp32, pattern: [2^S · P] int32. Returns y: [B, Np].
torch::Tensor seedbasis_gemv(torch::Tensor v, torch::Tensor pattern, torch::Tensor seeds, torch::Tensor exps,
                             torch::Tensor codes, int64_t coeffs) {
  TORCH_CHECK(v.dim() == 3 && v.scalar_type() == torch::kFloat && v.is_contiguous() && v.size(2) == kPatterns,
              "v must be contiguous fp32 [B, nb, 256]");
  TORCH_CHECK(pattern.scalar_type() == torch::kInt && pattern.is_contiguous(), "pattern must be contiguous int32");
  TORCH_CHECK(seeds.scalar_type() == torch::kShort && seeds.is_contiguous() && seeds.dim() == 2, "seeds: int16 [nb, Np]");
  TORCH_CHECK(exps.scalar_type() == torch::kChar && exps.is_contiguous() && exps.sizes() == seeds.sizes(), "exps: int8 [nb, Np]");
  const int64_t B = v.size(0), nb = v.size(1), Np = seeds.size(1), P = coeffs;
  TORCH_CHECK(B >= 1 && B <= kMaxBatch, "batch must be in [1, 8] for the fused path");
  TORCH_CHECK(P >= 1 && P <= kMaxCoeffs, "coeffs must be in [1, 8] for the fused path");
  TORCH_CHECK(seeds.size(0) == nb && Np % 8 == 0, "seeds must be [nb, Np] with Np a multiple of 8");
  TORCH_CHECK(pattern.numel() % P == 0, "pattern must hold 2^S · P entries");
  TORCH_CHECK(codes.scalar_type() == torch::kByte && codes.is_contiguous() && codes.dim() == 3 && codes.size(0) == nb &&
                  codes.size(1) == P && codes.size(2) == Np / 2,
              "codes: uint8 [nb, P, Np/2]");
  // Batch 1: threads split the column blocks, so each expands z only for its own blocks, and sum
  // into private copies of y (added at the end). Larger batches: threads split the rows (every
  // thread expands every block, but its share of y stays in L1/L2) — measured at 4096²:
  // batch 1 2.64 → 2.24 ms by columns, batch 8 15.9 → 17.9 ms.
  const bool split_columns = B == 1;
  const int64_t n_parts = split_columns ? at::get_num_threads() : 1;
  auto y_parts = torch::zeros({n_parts, B, Np}, v.options());
  const float* vp = v.data_ptr<float>();
  const int32_t* pat = pattern.data_ptr<int32_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(seeds.data_ptr<int16_t>());
  const int8_t* ep = exps.data_ptr<int8_t>();
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  float* y_all = y_parts.data_ptr<float>();
  const int64_t half = Np / 2, n_seed_rows = pattern.numel();
  // columns [j0, j1) × 8-row groups [o0, o1) into yp
  auto run = [&](int64_t j0, int64_t j1, int64_t o0, int64_t o1, float* yp) {
    const __m256i shifts = _mm256_setr_epi32(0, 8, 16, 24, 4, 12, 20, 28);
    const __m256i nib = _mm256_set1_epi32(0x0F), eight = _mm256_set1_epi32(8), bias = _mm256_set1_epi32(127);
    const __m256i vP = _mm256_set1_epi32(static_cast<int>(P));
    __m256 q[kMaxCoeffs];
    __m256i pid[kMaxCoeffs];
    // expanding z costs 2^S·P scalar loads per column block and batch row; it saves P gathers
    // (~5–8 cycles each here) per 8 rows
    const bool expand = (o1 - o0) * 6 > n_seed_rows / P;
    std::vector<float> z(expand ? B * n_seed_rows : 0);
    for (int64_t j = j0; j < j1; ++j) {
      if (expand) {
        for (int64_t b = 0; b < B; ++b) {
          const float* vb = vp + (b * nb + j) * kPatterns;
          float* zb = z.data() + b * n_seed_rows;
          for (int64_t k = 0; k < n_seed_rows; ++k) zb[k] = vb[pat[k]];
        }
      }
      const uint16_t* sj = sp + j * Np;
      const int8_t* ej = ep + j * Np;
      const uint8_t* cj = cp + j * P * half;
      for (int64_t o = o0; o < o1; ++o) {
        const __m256i s = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sj + 8 * o)));
        const __m256i sP = _mm256_mullo_epi32(s, vP);
        const __m256i e = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ej + 8 * o)));
        // 2^e built from its IEEE-754 bits (the exponents were range-checked at layout time)
        const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, bias), 23));
        for (int64_t p = 0; p < P; ++p) {
          uint32_t word;
          std::memcpy(&word, cj + p * half + 4 * o, 4);
          const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts), nib);
          q[p] = _mm256_cvtepi32_ps(_mm256_sub_epi32(c, eight));
          const __m256i idx = _mm256_add_epi32(sP, _mm256_set1_epi32(static_cast<int>(p)));
          pid[p] = expand ? idx : _mm256_i32gather_epi32(pat, idx, 4);
        }
        for (int64_t b = 0; b < B; ++b) {
          const float* vb = expand ? z.data() + b * n_seed_rows : vp + (b * nb + j) * kPatterns;
          __m256 acc = _mm256_mul_ps(q[0], _mm256_i32gather_ps(vb, pid[0], 4));
          for (int64_t p = 1; p < P; ++p) acc = _mm256_fmadd_ps(q[p], _mm256_i32gather_ps(vb, pid[p], 4), acc);
          float* yb = yp + b * Np + 8 * o;
          _mm256_storeu_ps(yb, _mm256_fmadd_ps(scale, acc, _mm256_loadu_ps(yb)));
        }
      }
    }
  };
  if (split_columns) {
    at::parallel_for(0, nb, 1, [&](int64_t j0, int64_t j1) {
      run(j0, j1, 0, Np / 8, y_all + at::get_thread_num() * B * Np);
    });
    return y_parts.sum(0);
  }
  at::parallel_for(0, Np / 8, 16, [&](int64_t o0, int64_t o1) { run(0, nb, o0, o1, y_all); });
  return y_parts[0];
}
