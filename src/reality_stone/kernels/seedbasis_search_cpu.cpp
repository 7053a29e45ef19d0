// Seed-basis encoder search for CPU: for every block try every seed s and keep the quantised fit
// with the smallest error — the inner loop of `SeedBasisConfig._search`, whose torch form
// (`SeedBasisConfig._search_reference`) is the reference this is tested against.
//
// The error is measured in a metric K (identity data-free; A Aᵀ of GPTQ's whitening data-aware).
// Per (block w, seed s), P = number of coefficients, z = w K (the caller's input):
//   b = U_s z                                   (U_s: P × C bases, unwhitened)
//   t = G_s⁺ b                                  (G_s = U_s K U_sᵀ: least-squares coefficients)
//   e₀ = ceil(log2(max(max t / qmax, min t / qmin)) − 1e-5)   (the smallest step that fits t)
//   for e in (e₀, e₀ − 1), each clamped to [e_lo, e_hi]:
//     q = clamp(round_half_even(t / 2^e), qmin, qmax),  qs = 2^e q
//     err = qsᵀ G_s qs − 2 qsᵀ b                 (= ‖w − qsᵀ U_s‖²_K − ‖w‖²_K)
//   and e₀ − 1 is kept only when its error is strictly smaller
// Rows are the SIMD dimension: one AVX2 vector holds 8 blocks, each seed's table entries are
// broadcast, so the tables are read once per 8 blocks (the seeds-as-lanes layout before this
// streamed ~320 KB of tables through L2 for every block). For ±1 bases (the LFSR tables) b comes
// from a per-tile table of all 256 sign-pattern sums of z — one load per coefficient instead of C
// FMAs; the sums are built in the same order (c = 0…7, left to right) as the generic FMA path, so
// both give the same bits. The running minimum takes a seed only when strictly smaller: the first
// minimum, torch.argmin's tie rule. log2/exp2 of the step come from the float's exponent bits
// (the step is a power of two), so no vector math library is needed. Tiles are independent:
// threads split them.
#include "kernels.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int C = 8;        // inputs per block (every preset); compile-time so the loops unroll
constexpr int kLanes = 8;   // blocks per AVX2 vector
constexpr int kPatterns = 1 << C;

template <int P, bool kPattern>
void search_tile(const float* z, int64_t rows, int64_t ns, const float* U, const uint8_t* pid, const float* G,
                 const float* Gi, const float* lo, const float* hi, int32_t qmin, int32_t qmax, float* S,
                 int64_t* seed_out, float* e_out, int64_t* q_out, float* err_out) {
  // lanes past `rows` hold zero blocks; their results are not written
  alignas(32) float zt[C][kLanes] = {};
  alignas(32) int32_t lo_i[kLanes], hi_i[kLanes];
  for (int64_t r = 0; r < kLanes; ++r) {
    for (int c = 0; c < C; ++c) zt[c][r] = r < rows ? z[r * C + c] : 0.f;
    lo_i[r] = std::max(r < rows && lo ? int32_t(lo[r]) : -126, -126);
    hi_i[r] = std::min(r < rows && hi ? int32_t(hi[r]) : 127, 127);
  }
  __m256 zc[C];
  for (int c = 0; c < C; ++c) zc[c] = _mm256_load_ps(zt[c]);
  if constexpr (kPattern) {
    // S[i] = Σ_c (bit c of i ? +z_c : −z_c), built in place one coordinate at a time
    _mm256_store_ps(S, _mm256_setzero_ps());
    for (int c = 0; c < C; ++c)
      for (int i = (1 << c) - 1; i >= 0; --i) {
        const __m256 v = _mm256_load_ps(S + i * kLanes);
        _mm256_store_ps(S + (i + (1 << c)) * kLanes, _mm256_add_ps(v, zc[c]));
        _mm256_store_ps(S + i * kLanes, _mm256_sub_ps(v, zc[c]));
      }
  }
  const __m256 vinv_qmax = _mm256_set1_ps(1.0f / float(qmax)), vinv_qmin = _mm256_set1_ps(1.0f / float(qmin));
  const __m256 tiny = _mm256_set1_ps(1e-30f), vqmin = _mm256_set1_ps(float(qmin)), vqmax = _mm256_set1_ps(float(qmax));
  const __m256 two = _mm256_set1_ps(2.f);
  const __m256i vlo = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo_i));
  const __m256i vhi = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi_i));
  const __m256i b127 = _mm256_set1_epi32(127), ff = _mm256_set1_epi32(0xFF), mant = _mm256_set1_epi32(0x7FFFFF),
                k58 = _mm256_set1_epi32(58);
  __m256 best_err = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256i best_s = _mm256_setzero_si256(), best_e = _mm256_setzero_si256();
  __m256 best_q[P];
  for (int p = 0; p < P; ++p) best_q[p] = _mm256_setzero_ps();
  for (int64_t s = 0; s < ns; ++s) {
    __m256 b[P], t[P];
    for (int p = 0; p < P; ++p) {
      if constexpr (kPattern) {
        b[p] = _mm256_load_ps(S + int(pid[s * P + p]) * kLanes);
      } else {
        const float* u = U + (s * P + p) * C;
        __m256 bp = _mm256_mul_ps(_mm256_set1_ps(u[0]), zc[0]);
        for (int c = 1; c < C; ++c) bp = _mm256_fmadd_ps(_mm256_set1_ps(u[c]), zc[c], bp);
        b[p] = bp;
      }
    }
    const float* gi = Gi + s * P * P;
    for (int p = 0; p < P; ++p) {
      __m256 tp = _mm256_mul_ps(_mm256_set1_ps(gi[p * P]), b[0]);
      for (int r = 1; r < P; ++r) tp = _mm256_fmadd_ps(_mm256_set1_ps(gi[p * P + r]), b[r], tp);
      t[p] = tp;
    }
    __m256 tmax = t[0], tmin = t[0];
    for (int p = 1; p < P; ++p) {
      tmax = _mm256_max_ps(tmax, t[p]);
      tmin = _mm256_min_ps(tmin, t[p]);
    }
    const __m256 need = _mm256_max_ps(_mm256_max_ps(_mm256_mul_ps(tmax, vinv_qmax), _mm256_mul_ps(tmin, vinv_qmin)), tiny);
    // need = m·2^k, m ∈ [1, 2) → k, or k + 1 when m exceeds 2^(1e-5) (mantissa field > 58: the
    // reference's tolerance against float rounding of an exact power of two)
    const __m256i bits = _mm256_castps_si256(need);
    __m256i e_fit = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 23), ff), b127);
    e_fit = _mm256_sub_epi32(e_fit, _mm256_cmpgt_epi32(_mm256_and_si256(bits, mant), k58));  // true = −1: round up
    const float* g = G + s * P * P;
    // two steps per seed: the smallest that fits t, and half of it (clamping the largest
    // coefficient can cost less than doubling every other one's rounding error)
    __m256 err, q[P];
    __m256i e;
    for (int k = 0; k < 2; ++k) {
      const __m256i ek = _mm256_min_epi32(_mm256_max_epi32(_mm256_sub_epi32(e_fit, _mm256_set1_epi32(k)), vlo), vhi);
      const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ek, b127), 23));
      const __m256 inv = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(b127, ek), 23));
      __m256 qk[P], qs[P];
      for (int p = 0; p < P; ++p) {
        qk[p] = _mm256_min_ps(_mm256_max_ps(_mm256_round_ps(_mm256_mul_ps(t[p], inv), _MM_FROUND_TO_NEAREST_INT |
                                                                                      _MM_FROUND_NO_EXC),
                                            vqmin),
                              vqmax);
        qs[p] = _mm256_mul_ps(qk[p], scale);
      }
      __m256 errk = _mm256_setzero_ps();
      for (int p = 0; p < P; ++p) {
        __m256 gq = _mm256_mul_ps(_mm256_set1_ps(g[p * P]), qs[0]);
        for (int r = 1; r < P; ++r) gq = _mm256_fmadd_ps(_mm256_set1_ps(g[p * P + r]), qs[r], gq);
        errk = _mm256_fmadd_ps(qs[p], _mm256_fnmadd_ps(two, b[p], gq), errk);
      }
      if (k == 0) {
        err = errk;
        e = ek;
        for (int p = 0; p < P; ++p) q[p] = qk[p];
      } else {  // the half step only when strictly better
        const __m256 lt = _mm256_cmp_ps(errk, err, _CMP_LT_OQ);
        err = _mm256_blendv_ps(err, errk, lt);
        e = _mm256_blendv_epi8(e, ek, _mm256_castps_si256(lt));
        for (int p = 0; p < P; ++p) q[p] = _mm256_blendv_ps(q[p], qk[p], lt);
      }
    }
    const __m256 better = _mm256_cmp_ps(err, best_err, _CMP_LT_OQ);
    best_err = _mm256_blendv_ps(best_err, err, better);
    const __m256i bi = _mm256_castps_si256(better);
    best_s = _mm256_blendv_epi8(best_s, _mm256_set1_epi32(int32_t(s)), bi);
    best_e = _mm256_blendv_epi8(best_e, e, bi);
    for (int p = 0; p < P; ++p) best_q[p] = _mm256_blendv_ps(best_q[p], q[p], better);
  }
  alignas(32) float fe[kLanes], fq[P][kLanes];
  alignas(32) int32_t is[kLanes], ie[kLanes];
  _mm256_store_ps(fe, best_err);
  _mm256_store_si256(reinterpret_cast<__m256i*>(is), best_s);
  _mm256_store_si256(reinterpret_cast<__m256i*>(ie), best_e);
  for (int p = 0; p < P; ++p) _mm256_store_ps(fq[p], best_q[p]);
  for (int64_t r = 0; r < rows; ++r) {
    seed_out[r] = is[r];
    e_out[r] = float(ie[r]);
    err_out[r] = fe[r];
    for (int p = 0; p < P; ++p) q_out[r * P + p] = int64_t(fq[p][r]);
  }
}

template <int P>
void search_all(const torch::Tensor& z, const torch::Tensor& U, const uint8_t* pid, const torch::Tensor& G,
                const torch::Tensor& Gi, const float* lo, const float* hi, int32_t qmin, int32_t qmax,
                torch::Tensor& seed, torch::Tensor& e, torch::Tensor& q, torch::Tensor& err) {
  const int64_t n = z.size(0), ns = U.size(0), tiles = (n + kLanes - 1) / kLanes;
  const float *zp = z.data_ptr<float>(), *Up = U.data_ptr<float>(), *Gp = G.data_ptr<float>(), *Gip = Gi.data_ptr<float>();
  int64_t *sp = seed.data_ptr<int64_t>(), *qp = q.data_ptr<int64_t>();
  float *ep = e.data_ptr<float>(), *errp = err.data_ptr<float>();
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    alignas(32) float S[kPatterns * kLanes];  // 8 KB: stays in L1 for the whole seed loop
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t * kLanes, rows = std::min<int64_t>(kLanes, n - i);
      const float *l = lo ? lo + i : nullptr, *h = hi ? hi + i : nullptr;
      if (pid)
        search_tile<P, true>(zp + i * C, rows, ns, Up, pid, Gp, Gip, l, h, qmin, qmax, S, sp + i, ep + i, qp + i * P,
                             errp + i);
      else
        search_tile<P, false>(zp + i * C, rows, ns, Up, pid, Gp, Gip, l, h, qmin, qmax, S, sp + i, ep + i, qp + i * P,
                              errp + i);
    }
  });
}

}  // namespace

// z (n, 8) float32 (= w K); U (ns, P, 8) float32 bases; pattern (ns, P) uint8 sign-pattern ids of a
// ±1 U (bit c set where entry c is +1), or empty (b from U by FMAs); G, Gi (ns, P, P) float32
// (U K Uᵀ and its (pseudo-)inverse); e_lo, e_hi (n,) float32 or empty (unbounded). Returns seed
// (n,) int64, exponent (n,) float32, codes (n, P) int64 and err = ‖w − ŵ‖²_K − ‖w‖²_K (n,) float32.
std::vector<torch::Tensor> seedbasis_search(torch::Tensor z, torch::Tensor U, torch::Tensor pattern, torch::Tensor G,
                                            torch::Tensor Gi, torch::Tensor e_lo, torch::Tensor e_hi,
                                            int64_t coeff_bits) {
  TORCH_CHECK(z.dim() == 2 && z.scalar_type() == torch::kFloat32 && z.is_contiguous(), "z must be contiguous float32 (n, C)");
  TORCH_CHECK(U.dim() == 3 && U.scalar_type() == torch::kFloat32 && U.is_contiguous(),
              "U must be contiguous float32 (ns, P, C)");
  const int64_t ns = U.size(0), P = U.size(1), n = z.size(0);
  TORCH_CHECK(U.size(2) == C && z.size(1) == C, "blocks of ", C, " inputs only, got U with ", U.size(2), " and z with ",
              z.size(1));
  TORCH_CHECK(P >= 1 && P <= 8 && ns >= 1 && ns <= (int64_t(1) << 24), "need 1 <= P <= 8 coefficients and 1 <= seeds <= 2^24");
  for (const auto* T : {&G, &Gi})
    TORCH_CHECK(T->dim() == 3 && T->size(0) == ns && T->size(1) == P && T->size(2) == P &&
                    T->scalar_type() == torch::kFloat32 && T->is_contiguous(),
                "G and Gi must be contiguous float32 (ns, P, P)");
  const bool patterned = pattern.numel() > 0;
  if (patterned)
    TORCH_CHECK(pattern.dim() == 2 && pattern.size(0) == ns && pattern.size(1) == P &&
                    pattern.scalar_type() == torch::kUInt8 && pattern.is_contiguous(),
                "pattern must be contiguous uint8 (ns, P)");
  if (patterned) {  // the pattern sums stand in for U: they must be U's signs, and U must be ±1
    const float* u = U.data_ptr<float>();
    const uint8_t* id = pattern.data_ptr<uint8_t>();
    for (int64_t k = 0; k < ns * P; ++k)
      for (int c = 0; c < C; ++c)
        TORCH_CHECK(u[k * C + c] == ((id[k] >> c) & 1 ? 1.f : -1.f), "pattern does not match U (U must be ±1)");
  }
  TORCH_CHECK(coeff_bits >= 2 && coeff_bits <= 8, "coeff_bits must be in [2, 8]");
  const bool bounded = e_lo.numel() > 0;
  if (bounded)
    TORCH_CHECK(e_lo.numel() == n && e_hi.numel() == n && e_lo.scalar_type() == torch::kFloat32 &&
                    e_hi.scalar_type() == torch::kFloat32 && e_lo.is_contiguous() && e_hi.is_contiguous(),
                "e_lo and e_hi must be contiguous float32 (n,)");
  TORCH_CHECK(torch::isfinite(z).all().item<bool>(), "z contains NaN or Inf");
  TORCH_CHECK(torch::isfinite(G).all().item<bool>() && torch::isfinite(Gi).all().item<bool>(),
              "G or Gi contains NaN or Inf");
  const int32_t qmax = (1 << (coeff_bits - 1)) - 1, qmin = -qmax - 1;
  auto seed = torch::empty({n}, torch::kInt64), q = torch::empty({n, P}, torch::kInt64);
  auto e = torch::empty({n}, torch::kFloat32), err = torch::empty({n}, torch::kFloat32);
  const float* lo = bounded ? e_lo.data_ptr<float>() : nullptr;
  const float* hi = bounded ? e_hi.data_ptr<float>() : nullptr;
  const uint8_t* pid = patterned ? pattern.data_ptr<uint8_t>() : nullptr;
  switch (P) {
#define CASE(k) \
  case k: search_all<k>(z, U, pid, G, Gi, lo, hi, qmin, qmax, seed, e, q, err); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
  }
  return {seed, e, q, err};
}

static reality_stone::RegisterBindings bind_seedbasis_search([](pybind11::module_& m) {
  m.def("seedbasis_search", &seedbasis_search, "seed-basis encoder: best quantised seed per block (all seeds)");
});
