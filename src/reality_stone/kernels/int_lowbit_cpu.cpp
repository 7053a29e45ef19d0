// Fused group-quantised (4-bit codes, per-group fp32 scale and offset) matmul for CPU.
//
// y[b, r] = Σ_g ( scale[r,g] · Σ_{i∈g} q[r,i] x[b,i]  +  offset[r,g] · Σ_{i∈g} x[b,i] )
//
// Compute layout (built once from the stored bit stream, see int_lowbit.py): codes are
// uint8 [rows, in/2]; within each group of G inputs, byte k holds code k in its low nibble
// and code k + G/2 in its high nibble, so both halves map to contiguous runs of x.
// Never materialises W: each 8-code chunk is unpacked into a register and consumed.
#include "kernels.h"

#include <cstdlib>


// x: [B, K] fp32 contiguous (B <= kMaxBatch), codes: [N, K/2] uint8, scale/offset: [N, K/G] fp32,
// xsum: [B, K/G] fp32 (group sums of x). Returns y: [B, N].
using reality_stone::hsum256;
using reality_stone::kMaxBatch;

namespace {

// Batch-1 rows [r0, r1) with 16-lane AVX-512 (compiled for that target only; called when the
// CPU reports it). Same arithmetic as the AVX2 path: per group, Σ q·x in 4 FMA chains, then
// scale·dot + offset·Σx.
__attribute__((target("avx512f,avx512bw"))) void int4_rows_b1_avx512(const float* xp, const uint8_t* cp,
                                                                     const float* sp, const float* op,
                                                                     const float* xs, float* yp, int64_t K,
                                                                     int64_t NG, int64_t half, int64_t r0,
                                                                     int64_t r1) {
  const __m512i mask = _mm512_set1_epi32(0x0F);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = cp + r * (K / 2);
    __m512 acc = _mm512_setzero_ps();
    float off = 0.f;
    for (int64_t g = 0; g < NG; ++g) {
      const uint8_t* gc = row + g * half;
      const float* xb = xp + g * (2 * half);
      __m512 d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps(), d2 = _mm512_setzero_ps(), d3 = _mm512_setzero_ps();
      int64_t k = 0;
      for (; k + 32 <= half; k += 32) {
        const __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(gc + k)));
        const __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(gc + k + 16)));
        d0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v0, mask)), _mm512_loadu_ps(xb + k), d0);
        d1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v0, 4)), _mm512_loadu_ps(xb + half + k), d1);
        d2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v1, mask)), _mm512_loadu_ps(xb + k + 16), d2);
        d3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v1, 4)), _mm512_loadu_ps(xb + half + k + 16), d3);
      }
      for (; k < half; k += 16) {
        const __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(gc + k)));
        d0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v0, mask)), _mm512_loadu_ps(xb + k), d0);
        d1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v0, 4)), _mm512_loadu_ps(xb + half + k), d1);
      }
      const __m512 d = _mm512_add_ps(_mm512_add_ps(d0, d1), _mm512_add_ps(d2, d3));
      acc = _mm512_fmadd_ps(_mm512_set1_ps(sp[r * NG + g]), d, acc);
      off += op[r * NG + g] * xs[g];
    }
    yp[r] = _mm512_reduce_add_ps(acc) + off;
  }
}

}  // namespace

// REALITY_STONE_NO_AVX512=1 forces the AVX2 path (so tests cover both on AVX-512 machines).
const bool kHasAvx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        std::getenv("REALITY_STONE_NO_AVX512") == nullptr;

torch::Tensor int4_gemv(torch::Tensor x, torch::Tensor codes, torch::Tensor scale, torch::Tensor offset,
                        torch::Tensor xsum, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(), "x must be contiguous fp32 [B, K]");
  TORCH_CHECK(codes.scalar_type() == torch::kUInt8 && codes.is_contiguous(), "codes must be contiguous uint8");
  const int64_t B = x.size(0), K = x.size(1), N = codes.size(0), NG = K / group;
  TORCH_CHECK(B >= 1 && B <= kMaxBatch, "batch must be in [1, 8] for the fused path");
  TORCH_CHECK(group % 16 == 0 && K % group == 0 && codes.size(1) == K / 2, "bad shapes for the int4 kernel");
  TORCH_CHECK(scale.size(0) == N && scale.size(1) == NG && offset.sizes() == scale.sizes(), "bad scale/offset");
  auto y = torch::empty({B, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* op = offset.data_ptr<float>();
  const float* xs = xsum.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t half = group / 2;
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
    const __m256i mask = _mm256_set1_epi32(0x0F);
    if (B == 1 && half % 16 == 0 && kHasAvx512) {
      int4_rows_b1_avx512(xp, cp, sp, op, xs, yp, K, NG, half, r0, r1);
      return;
    }
    if (B == 1 && half % 16 == 0) {
      // Batch 1 (decoding): 4 independent FMA chains per group hide the FMA latency that a
      // single accumulator would serialise on.
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = cp + r * (K / 2);
        __m256 acc = _mm256_setzero_ps();
        float off = 0.f;
        for (int64_t g = 0; g < NG; ++g) {
          const uint8_t* gc = row + g * half;
          const float* xb = xp + g * group;
          __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps(), d2 = _mm256_setzero_ps(), d3 = _mm256_setzero_ps();
          for (int64_t k = 0; k < half; k += 16) {
            __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(gc + k));
            __m256i v0 = _mm256_cvtepu8_epi32(bytes);
            __m256i v1 = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
            d0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v0, mask)), _mm256_loadu_ps(xb + k), d0);
            d1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)), _mm256_loadu_ps(xb + half + k), d1);
            d2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v1, mask)), _mm256_loadu_ps(xb + k + 8), d2);
            d3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4)), _mm256_loadu_ps(xb + half + k + 8), d3);
          }
          __m256 d = _mm256_add_ps(_mm256_add_ps(d0, d1), _mm256_add_ps(d2, d3));
          acc = _mm256_fmadd_ps(_mm256_set1_ps(sp[r * NG + g]), d, acc);
          off += op[r * NG + g] * xs[g];
        }
        yp[r] = hsum256(acc) + off;
      }
      return;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = cp + r * (K / 2);
      // Per batch row: a vector accumulator of scale-weighted group dots (one horizontal sum
      // per output, not per group) and a scalar for the offset terms.
      __m256 acc[kMaxBatch];
      float off[kMaxBatch];
      for (int64_t b = 0; b < B; ++b) { acc[b] = _mm256_setzero_ps(); off[b] = 0.f; }
      for (int64_t g = 0; g < NG; ++g) {
        __m256 dot[kMaxBatch];
        for (int64_t b = 0; b < B; ++b) dot[b] = _mm256_setzero_ps();
        const uint8_t* gc = row + g * half;
        const int64_t base = g * group;
        for (int64_t k = 0; k < half; k += 8) {
          __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(gc + k));
          __m256i v = _mm256_cvtepu8_epi32(bytes);
          __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
          __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
          for (int64_t b = 0; b < B; ++b) {
            const float* xb = xp + b * K + base;
            dot[b] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xb + k), dot[b]);
            dot[b] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xb + half + k), dot[b]);
          }
        }
        const __m256 s = _mm256_set1_ps(sp[r * NG + g]);
        const float o = op[r * NG + g];
        for (int64_t b = 0; b < B; ++b) {
          acc[b] = _mm256_fmadd_ps(s, dot[b], acc[b]);
          off[b] += o * xs[b * NG + g];
        }
      }
      for (int64_t b = 0; b < B; ++b) yp[b * N + r] = hsum256(acc[b]) + off[b];
    }
  });
  return y;
}
