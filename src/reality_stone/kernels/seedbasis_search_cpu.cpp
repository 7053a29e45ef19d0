// Seed-basis encoder search for CPU: for every block w (C inputs) try every seed s and keep the
// quantised fit with the smallest error — the inner loop of `SeedBasisConfig._search`, whose
// torch form (`seedbasis.py`) is the reference this is tested against.
//
// Per (block, seed), P = number of coefficients:
//   b = U_s w,  t = M_s w                      (M_s = (U_s U_sᵀ)⁺ U_s: least-squares coefficients)
//   e = ceil(log2(max(max t / qmax, min t / qmin)) − 1e-5), clamped to [e_lo, e_hi]
//   q = clamp(round_half_even(t / 2^e), qmin, qmax),  qs = 2^e q
//   err = qsᵀ G_s qs − 2 qsᵀ b                  (= ‖w − qsᵀ U_s‖² − ‖w‖²)
// Seeds are the SIMD dimension: U, M are laid out [P][C][ns] and G [P][P][ns] (seed innermost),
// so one AVX2 vector holds 8 seeds and every step is a broadcast-FMA (C = 8, P compile-time); the errors of all seeds go to a
// per-thread buffer and one scalar pass takes the first minimum (torch.argmin's tie rule).
// log2/exp2 of the step come from the float's exponent bits (the step is a power of two), so no
// vector math library is needed. Blocks are independent: threads split them.
#include "kernels.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// ceil(log2(x) − 1e-5) for a normal positive float x: x = m·2^k, m ∈ [1, 2) → k, or k + 1 when
// m exceeds 2^(1e-5) (mantissa field > 58; the reference's tolerance against float rounding of
// an exact power of two).
inline int32_t ceil_log2(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, 4);
  const int32_t k = ((bits >> 23) & 0xFF) - 127;
  return k + ((bits & 0x7FFFFF) > 58 ? 1 : 0);
}

inline float exp2i(int32_t e) {  // 2^e for e in [-126, 127]
  const int32_t bits = (e + 127) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

constexpr int64_t C = 8;  // inputs per block (every preset); compile-time so the seed loop vectorises

template <int P>
void search_block(const float* w, int64_t ns, const float* U, const float* M, const float* G, float lo,
                  float hi, int32_t qmin, int32_t qmax, float* err_buf, int64_t* seed_out, float* e_out,
                  int64_t* q_out, float* err_out) {
  const float inv_qmax = 1.0f / float(qmax), inv_qmin = 1.0f / float(qmin);
  const int32_t ilo = std::max(int32_t(lo), -126), ihi = std::min(int32_t(hi), 127);
  __m256 wv[C];
  for (int64_t c = 0; c < C; ++c) wv[c] = _mm256_set1_ps(w[c]);
  const __m256 vinv_qmax = _mm256_set1_ps(inv_qmax), vinv_qmin = _mm256_set1_ps(inv_qmin);
  const __m256 tiny = _mm256_set1_ps(1e-30f), vqmin = _mm256_set1_ps(float(qmin)), vqmax = _mm256_set1_ps(float(qmax));
  const __m256 two = _mm256_set1_ps(2.f);
  const __m256i vlo = _mm256_set1_epi32(ilo), vhi = _mm256_set1_epi32(ihi), b127 = _mm256_set1_epi32(127);
  const __m256i ff = _mm256_set1_epi32(0xFF), mant = _mm256_set1_epi32(0x7FFFFF), k58 = _mm256_set1_epi32(58);
  for (int64_t s = 0; s < ns; s += 8) {  // 8 seeds per vector (ns is a multiple of 8)
    __m256 b[P], t[P];
    for (int p = 0; p < P; ++p) {
      __m256 bp = _mm256_setzero_ps(), tp = _mm256_setzero_ps();
      for (int64_t c = 0; c < C; ++c) {
        bp = _mm256_fmadd_ps(_mm256_loadu_ps(U + (p * C + c) * ns + s), wv[c], bp);
        tp = _mm256_fmadd_ps(_mm256_loadu_ps(M + (p * C + c) * ns + s), wv[c], tp);
      }
      b[p] = bp;
      t[p] = tp;
    }
    __m256 tmax = t[0], tmin = t[0];
    for (int p = 1; p < P; ++p) {
      tmax = _mm256_max_ps(tmax, t[p]);
      tmin = _mm256_min_ps(tmin, t[p]);
    }
    const __m256 need = _mm256_max_ps(_mm256_max_ps(_mm256_mul_ps(tmax, vinv_qmax), _mm256_mul_ps(tmin, vinv_qmin)), tiny);
    const __m256i bits = _mm256_castps_si256(need);
    __m256i e = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 23), ff), b127);
    e = _mm256_sub_epi32(e, _mm256_cmpgt_epi32(_mm256_and_si256(bits, mant), k58));  // true = −1: round up
    e = _mm256_min_epi32(_mm256_max_epi32(e, vlo), vhi);
    const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, b127), 23));
    const __m256 inv = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(b127, e), 23));
    __m256 qs[P];
    for (int p = 0; p < P; ++p) {
      const __m256 q = _mm256_round_ps(_mm256_mul_ps(t[p], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      qs[p] = _mm256_mul_ps(_mm256_min_ps(_mm256_max_ps(q, vqmin), vqmax), scale);
    }
    __m256 err = _mm256_setzero_ps();
    for (int p = 0; p < P; ++p) {
      __m256 gq = _mm256_setzero_ps();
      for (int r = 0; r < P; ++r) gq = _mm256_fmadd_ps(_mm256_loadu_ps(G + (p * P + r) * ns + s), qs[r], gq);
      err = _mm256_fmadd_ps(qs[p], _mm256_fnmadd_ps(two, b[p], gq), err);
    }
    _mm256_storeu_ps(err_buf + s, err);
  }
  int64_t best = 0;
  for (int64_t s = 1; s < ns; ++s)
    if (err_buf[s] < err_buf[best]) best = s;
  // the winner's codes, recomputed in scalar code with the same arithmetic
  float t[P];
  for (int p = 0; p < P; ++p) {
    float tp = 0.f;
    for (int64_t c = 0; c < C; ++c) tp += M[(p * C + c) * ns + best] * w[c];
    t[p] = tp;
  }
  float tmax = t[0], tmin = t[0];
  for (int p = 1; p < P; ++p) {
    tmax = std::max(tmax, t[p]);
    tmin = std::min(tmin, t[p]);
  }
  int32_t e = ceil_log2(std::max(std::max(tmax * inv_qmax, tmin * inv_qmin), 1e-30f));
  e = std::min(std::max(e, ilo), ihi);
  const float inv = exp2i(-e);
  for (int p = 0; p < P; ++p)
    q_out[p] = int64_t(std::min(std::max(std::nearbyint(t[p] * inv), float(qmin)), float(qmax)));
  *seed_out = best;
  *e_out = float(e);
  *err_out = err_buf[best];
}

template <int P>
void search_all(const torch::Tensor& w, const torch::Tensor& U, const torch::Tensor& M, const torch::Tensor& G,
                const float* lo, const float* hi, int32_t qmin, int32_t qmax, torch::Tensor& seed, torch::Tensor& e,
                torch::Tensor& q, torch::Tensor& err) {
  const int64_t n = w.size(0), ns = U.size(2);
  const float *wp = w.data_ptr<float>(), *Up = U.data_ptr<float>(), *Mp = M.data_ptr<float>(), *Gp = G.data_ptr<float>();
  int64_t *sp = seed.data_ptr<int64_t>(), *qp = q.data_ptr<int64_t>();
  float *ep = e.data_ptr<float>(), *errp = err.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
    std::vector<float> buf(ns);
    for (int64_t i = i0; i < i1; ++i) {
      const float l = lo ? lo[i] : -126.f, h = hi ? hi[i] : 127.f;
      search_block<P>(wp + i * C, ns, Up, Mp, Gp, l, h, qmin, qmax, buf.data(), sp + i, ep + i, qp + i * P, errp + i);
    }
  });
}

}  // namespace

// w (n, 8) float32; U, M (P, 8, ns) float32; G (P, P, ns) float32; e_lo, e_hi (n,) float32 or
// empty (unbounded). Returns seed (n,) int64, exponent (n,) float32, codes (n, P) int64 and
// error ‖w − ŵ‖² − ‖w‖² (n,) float32.
std::vector<torch::Tensor> seedbasis_search(torch::Tensor w, torch::Tensor U, torch::Tensor M, torch::Tensor G,
                                            torch::Tensor e_lo, torch::Tensor e_hi, int64_t coeff_bits) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kFloat32 && w.is_contiguous(), "w must be contiguous float32 (n, C)");
  TORCH_CHECK(U.dim() == 3 && M.sizes() == U.sizes() && U.scalar_type() == torch::kFloat32 &&
                  M.scalar_type() == torch::kFloat32 && U.is_contiguous() && M.is_contiguous(),
              "U and M must be contiguous float32 (P, C, ns) of the same shape");
  const int64_t P = U.size(0), ns = U.size(2), n = w.size(0);
  TORCH_CHECK(U.size(1) == C && w.size(1) == C, "blocks of ", C, " inputs only, got U with ", U.size(1), " and w with ",
              w.size(1));
  TORCH_CHECK(P >= 1 && P <= 8 && ns >= 8 && ns % 8 == 0, "need 1 <= P <= 8 coefficients and a multiple of 8 seeds");
  TORCH_CHECK(G.dim() == 3 && G.size(0) == P && G.size(1) == P && G.size(2) == ns && G.scalar_type() == torch::kFloat32 &&
                  G.is_contiguous(), "G must be contiguous float32 (P, P, ns)");
  TORCH_CHECK(coeff_bits >= 2 && coeff_bits <= 8, "coeff_bits must be in [2, 8]");
  const bool bounded = e_lo.numel() > 0;
  if (bounded)
    TORCH_CHECK(e_lo.numel() == n && e_hi.numel() == n && e_lo.scalar_type() == torch::kFloat32 &&
                    e_hi.scalar_type() == torch::kFloat32 && e_lo.is_contiguous() && e_hi.is_contiguous(),
                "e_lo and e_hi must be contiguous float32 (n,)");
  TORCH_CHECK(torch::isfinite(w).all().item<bool>(), "w contains NaN or Inf");
  const int32_t qmax = (1 << (coeff_bits - 1)) - 1, qmin = -qmax - 1;
  auto seed = torch::empty({n}, torch::kInt64), q = torch::empty({n, P}, torch::kInt64);
  auto e = torch::empty({n}, torch::kFloat32), err = torch::empty({n}, torch::kFloat32);
  const float* lo = bounded ? e_lo.data_ptr<float>() : nullptr;
  const float* hi = bounded ? e_hi.data_ptr<float>() : nullptr;
  switch (P) {
#define CASE(k) \
  case k: search_all<k>(w, U, M, G, lo, hi, qmin, qmax, seed, e, q, err); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
  }
  return {seed, e, q, err};
}

static reality_stone::RegisterBindings bind_seedbasis_search([](pybind11::module_& m) {
  m.def("seedbasis_search", &seedbasis_search, "seed-basis encoder: best quantised seed per block (all seeds)");
});
