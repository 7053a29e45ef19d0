// Fused seed-basis matmul for CPU: y = x Wᵀ with W stored as seed-basis blocks (C = 8).
//
// Block (row r, column block j) decodes to 2^e[r,j] · Σ_p q[r,j,p] · U_{s[r,j], p}, each basis
// row U_{s,p} ∈ {±1}^8 being one of 256 sign patterns. So with
//     v[b, j, k] = Σ_c sign_k(c) · x[b, 8j + c]          (all 256 patterns, computed per call)
// the block's contribution is 2^e · Σ_p q_p · v[b, j, pattern[s, p]] — table lookups per
// block, never W. Column block outer, rows inner: per block a thread first expands
// z[s, p] = v[j, pattern[s, p]] for every seed (2^S × PL floats, L1/L2-resident), then a row's
// P products are one contiguous z[s] row (PL = 4 or 8 floats, zero codes in the padding)
// times the row's codes — plain loads, no gathers (the previous kernel gathered every
// coefficient and ran at 0.75–1.05× dense on 4096² here, this one 1.6–2×). The PL lanes accumulate
// per row across blocks in `acc` and are summed once at the end. Threads where a block has
// too few rows to repay the expansion gather z[s] straight from v through the pattern row.
//
// Compute layout (seedbasis.py, built once): pattern int32 [2^S, PL]; seeds uint16 [nb, Np];
// exps int8 [nb, Np] (absolute block exponents, in [-126, 120]); codes uint8 [nb, Np, PL/2]
// (code + 8, 4 bits, row-major: coefficient p of a row in byte p/2, low nibble first).
// Np = rows padded to a multiple of 8.
#include "kernels.h"

#include <atomic>
#include <cstring>
#include <vector>

using reality_stone::kMaxBatch;

namespace {
constexpr int kPatterns = 256;
constexpr int kExpMin = -126, kExpMax = 120;  // 2^e normal; 8 codes of |q| <= 8 times it finite

// acc[r·PL + l] += lanes of 2^e · q ⊙ z[s] for the 8 rows of group o of block j (one batch row:
// z_b / v_b; the codes and scales are shared by the batch and computed once).
template <int PL>
struct Group {
  __m256 qs[PL];  // 2^e · q, one vector per 8 / PL rows
  uint16_t seed[8];
};

// Returns nonzero when a seed of the group is >= n_seeds or an exponent is outside
// [kExpMin, kExpMax]: the op is public, so the fields are checked here, where they are already
// in registers (a separate pass over them cost 10-15 % of the gemv in memory traffic). Bad
// values are clamped before use — nothing is read out of bounds — and the call then fails.
template <int PL>
inline int prepare_group(const uint16_t* sj, const int8_t* ej, const uint8_t* cj, int64_t o, __m128i seed_max,
                         Group<PL>& g) {
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i nib = _mm256_set1_epi32(0x0F), eight = _mm256_set1_epi32(8), bias = _mm256_set1_epi32(127);
  const __m128i s = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sj + 8 * o));
  const __m128i s_ok = _mm_min_epu16(s, seed_max);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(g.seed), s_ok);
  const __m256i e_raw = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(ej + 8 * o)));
  const __m256i e = _mm256_max_epi32(_mm256_min_epi32(e_raw, _mm256_set1_epi32(kExpMax)), _mm256_set1_epi32(kExpMin));
  const int bad = (_mm_movemask_epi8(_mm_cmpeq_epi16(s, s_ok)) != 0xFFFF) |
                  (_mm256_movemask_epi8(_mm256_cmpeq_epi32(e, e_raw)) != -1);
  // 2^e built from its IEEE-754 bits (valid for normal exponents: hence the clamp above)
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, bias), 23));
  const uint8_t* c = cj + 8 * o * (PL / 2);
  for (int v = 0; v < PL; ++v) {  // 8 rows = PL vectors of 8 / PL rows
    uint32_t word;  // 8 / PL rows × PL nibbles
    std::memcpy(&word, c + 4 * v, 4);
    const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts), nib);
    const __m256i lane_row = PL == 4 ? _mm256_setr_epi32(2 * v, 2 * v, 2 * v, 2 * v, 2 * v + 1, 2 * v + 1, 2 * v + 1,
                                                         2 * v + 1)
                                     : _mm256_set1_epi32(v);
    g.qs[v] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, eight)),
                            _mm256_permutevar8x32_ps(scale, lane_row));
  }
  return bad;
}

// the z rows of the vector's RV rows: from the expanded table, or gathered from v
template <int PL>
inline __m256 z_rows(const Group<PL>& g, int v, const float* zb, const float* vb, const int32_t* pat, bool expanded) {
  if constexpr (PL == 8) {
    const int64_t s = g.seed[v];
    if (expanded) return _mm256_loadu_ps(zb + 8 * s);
    return _mm256_i32gather_ps(vb, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pat + 8 * s)), 4);
  } else {
    const int64_t s0 = g.seed[2 * v], s1 = g.seed[2 * v + 1];
    if (expanded) return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(zb + 4 * s0)), _mm_loadu_ps(zb + 4 * s1), 1);
    const __m128 z0 = _mm_i32gather_ps(vb, _mm_loadu_si128(reinterpret_cast<const __m128i*>(pat + 4 * s0)), 4);
    const __m128 z1 = _mm_i32gather_ps(vb, _mm_loadu_si128(reinterpret_cast<const __m128i*>(pat + 4 * s1)), 4);
    return _mm256_insertf128_ps(_mm256_castps128_ps256(z0), z1, 1);
  }
}

// columns [j0, j1) × 8-row groups [o0, o1) of all batch rows into acc [B, Np · PL]
template <int PL>
void seedbasis_blocks(const float* vp, const int32_t* pat, int64_t n_seeds, const uint16_t* sp, const int8_t* ep,
                      const uint8_t* cp, int64_t B, int64_t nb, int64_t Np, int64_t j0, int64_t j1, int64_t o0,
                      int64_t o1, float* acc, std::atomic<int>& bad_input) {
  // expanding z costs 2^S·PL scalar copies per block and batch row; it saves one PL-lane gather
  // (~PL cycles) per row
  const bool expand = (o1 - o0) * 8 > n_seeds;
  const __m128i seed_max = _mm_set1_epi16(static_cast<int16_t>(static_cast<uint16_t>(n_seeds - 1)));
  int bad = 0;
  std::vector<float> z(expand ? B * n_seeds * PL : 0);
  Group<PL> g;
  for (int64_t j = j0; j < j1; ++j) {
    if (expand) {
      for (int64_t b = 0; b < B; ++b) {
        const float* vb = vp + (b * nb + j) * kPatterns;
        float* zb = z.data() + b * n_seeds * PL;
        for (int64_t k = 0; k < n_seeds * PL; ++k) zb[k] = vb[pat[k]];
      }
    }
    const uint16_t* sj = sp + j * Np;
    const int8_t* ej = ep + j * Np;
    const uint8_t* cj = cp + j * Np * (PL / 2);
    for (int64_t o = o0; o < o1; ++o) {
      bad |= prepare_group<PL>(sj, ej, cj, o, seed_max, g);
      for (int64_t b = 0; b < B; ++b) {
        const float* zb = expand ? z.data() + b * n_seeds * PL : nullptr;
        const float* vb = vp + (b * nb + j) * kPatterns;
        float* ab = acc + b * Np * PL + 8 * o * PL;
        for (int v = 0; v < PL; ++v) {
          float* a = ab + 8 * v;
          _mm256_storeu_ps(a, _mm256_fmadd_ps(g.qs[v], z_rows<PL>(g, v, zb, vb, pat, expand), _mm256_loadu_ps(a)));
        }
      }
    }
  }
  if (bad) bad_input.store(1, std::memory_order_relaxed);
}
}  // namespace

// v: [B, nb, 256] fp32, pattern: [2^S, PL] int32 (PL = 4 or 8). Returns y: [B, Np].
torch::Tensor seedbasis_gemv(torch::Tensor v, torch::Tensor pattern, torch::Tensor seeds, torch::Tensor exps,
                             torch::Tensor codes) {
  TORCH_CHECK(v.dim() == 3 && v.scalar_type() == torch::kFloat && v.is_contiguous() && v.size(2) == kPatterns,
              "v must be contiguous fp32 [B, nb, 256]");
  TORCH_CHECK(pattern.scalar_type() == torch::kInt && pattern.is_contiguous() && pattern.dim() == 2 &&
                  (pattern.size(1) == 4 || pattern.size(1) == 8),
              "pattern must be contiguous int32 [2^S, 4 or 8]");
  TORCH_CHECK(seeds.scalar_type() == torch::kShort && seeds.is_contiguous() && seeds.dim() == 2, "seeds: int16 [nb, Np]");
  TORCH_CHECK(exps.scalar_type() == torch::kChar && exps.is_contiguous() && exps.sizes() == seeds.sizes(), "exps: int8 [nb, Np]");
  const int64_t B = v.size(0), nb = v.size(1), Np = seeds.size(1), PL = pattern.size(1), n_seeds = pattern.size(0);
  TORCH_CHECK(B >= 1 && B <= kMaxBatch, "batch must be in [1, 8] for the fused path");
  TORCH_CHECK(seeds.size(0) == nb && Np % 8 == 0, "seeds must be [nb, Np] with Np a multiple of 8");
  TORCH_CHECK(codes.scalar_type() == torch::kByte && codes.is_contiguous() && codes.dim() == 3 && codes.size(0) == nb &&
                  codes.size(1) == Np && codes.size(2) == PL / 2,
              "codes: uint8 [nb, Np, PL/2]");
  const int32_t* pat = pattern.data_ptr<int32_t>();
  for (int64_t k = 0; k < pattern.numel(); ++k) TORCH_CHECK(pat[k] >= 0 && pat[k] < kPatterns, "pattern id out of range");
  TORCH_CHECK(n_seeds >= 1 && n_seeds <= 65536, "pattern must have 1 to 65536 rows (one per seed)");
  // seeds (< n_seeds) and exponents are range-checked inside the loop (prepare_group)
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(seeds.data_ptr<int16_t>());
  std::atomic<int> bad_input{0};
  // Batch 1: threads split the column blocks, so each expands z only for its own blocks, and
  // accumulate into private copies (added at the end). Larger batches: threads split the rows
  // (every thread expands every block, but its share of acc stays in L1/L2).
  const bool split_columns = B == 1;
  const int64_t n_parts = split_columns ? at::get_num_threads() : 1;
  auto acc = torch::zeros({n_parts, B, Np, PL}, v.options());
  const float* vp = v.data_ptr<float>();
  const int8_t* ep = exps.data_ptr<int8_t>();
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  float* ap = acc.data_ptr<float>();
  auto run = [&](int64_t j0, int64_t j1, int64_t o0, int64_t o1, float* a) {
    if (PL == 4) seedbasis_blocks<4>(vp, pat, n_seeds, sp, ep, cp, B, nb, Np, j0, j1, o0, o1, a, bad_input);
    else seedbasis_blocks<8>(vp, pat, n_seeds, sp, ep, cp, B, nb, Np, j0, j1, o0, o1, a, bad_input);
  };
  if (split_columns) {
    at::parallel_for(0, nb, 1, [&](int64_t j0, int64_t j1) {
      run(j0, j1, 0, Np / 8, ap + at::get_thread_num() * B * Np * PL);
    });
  } else {
    at::parallel_for(0, Np / 8, 16, [&](int64_t o0, int64_t o1) { run(0, nb, o0, o1, ap); });
  }
  TORCH_CHECK(!bad_input.load(), "a seed is >= ", n_seeds, " (the pattern table's rows) or a block exponent is outside [",
              kExpMin, ", ", kExpMax, "]");
  return acc.sum({0, 3});
}

static reality_stone::RegisterBindings bind_seedbasis([](pybind11::module_& m) {
  m.def("seedbasis_gemv", &seedbasis_gemv, "fused seed-basis GEMV/small-batch GEMM (expanded z rows + FMA)");
});
