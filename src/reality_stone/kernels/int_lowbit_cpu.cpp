// Fused group-quantised (2-, 3- or 4-bit codes, per-group fp16 scale and offset or zero point) matmul for CPU.
//
//   y[b, r] = Σ_g ( scale[r,g] · Σ_{i∈g} q[r,i] x[b,i]  +  offset[r,g] · Σ_{i∈g} x[b,i] )
//
// Compute layout (int_lowbit.py: pack_lowbit_layout): each row is a run of 64-input chunks of
// 8·BITS bytes; inside a chunk
//   4 bits: byte k (0..31) = code k | code k+32 << 4
//   2 bits: byte k (0..15) = code k | code k+16 << 2 | code k+32 << 4 | code k+48 << 6
//   3 bits: the 2-bit layout of (code & 3), then a little-endian uint64 whose bit i = code i >> 2
// so every unpack step yields codes of *consecutive* inputs and needs only shifts and masks.
// Groups are whole chunks (group % 64 == 0). W is never materialised: codes are unpacked
// into registers and consumed.
//
// Two entry points:
//  * lowbit_gemv     — fp32 activations, exact to fp32 rounding (AVX-512 when the CPU has it,
//                      else AVX2); codes → fp32 → FMA.
//  * lowbit_gemv_a8  — activations quantised on the fly to int8 per group (symmetric,
//                      round-half-even, scale max|x|/127; the offset term keeps the exact fp32
//                      Σx): u8 codes × s8 activations with AVX-512 VNNI (vpdpbusd, 64 MACs per
//                      instruction), one fp32 FMA per group. Needs AVX-512 VNNI.
#include "kernels.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

// REALITY_STONE_NO_AVX512=1 forces the AVX2 path (so tests cover both on AVX-512 machines).
const bool kHasAvx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && std::getenv("REALITY_STONE_NO_AVX512") == nullptr;
const bool kHasAvx512Vnni = kHasAvx512 && __builtin_cpu_supports("avx512vnni");

using reality_stone::hsum256;
using reality_stone::kMaxBatch;

namespace {

constexpr int64_t kChunk = 64;  // inputs per chunk

// fp32 paths: AVX-512 F/BW/VL (+F16C); the int8 path additionally VNNI, so a CPU with AVX-512
// but without VNNI never executes a VNNI instruction.
#define RS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))
#define RS_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

// ---------------------------------------------------------------- AVX-512, fp32 activations

// 16 groups' affine parameters (fp16 in the layout, lanes ≥ popcount(m) zero) as fp32: scale s
// and offset o (zero_point: the layout holds zero points z and o = −z·s).
RS_AVX512 inline void affine16_avx512(const uint16_t* s16, const uint16_t* o16, __mmask16 m, bool zero_point, __m512& s,
                                      __m512& o) {
  s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s16));
  o = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, o16));
  if (zero_point) o = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(o, s));
}

// Codes 16i .. 16i+15 of a chunk as int32 lanes (i in 0..3).
template <int BITS>
RS_AVX512 inline __m512i codes16_avx512(const uint8_t* c, int i) {
  if constexpr (BITS == 4) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + (i & 1) * 16)));
    return i < 2 ? _mm512_and_si512(v, _mm512_set1_epi32(0x0F)) : _mm512_srli_epi32(v, 4);
  } else {
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
    v = _mm512_and_si512(_mm512_srli_epi32(v, 2 * i), _mm512_set1_epi32(3));
    if constexpr (BITS == 3) {
      uint16_t hi;
      std::memcpy(&hi, c + 16 + 2 * i, 2);  // bits 16i..16i+15 of the little-endian uint64
      v = _mm512_mask_add_epi32(v, static_cast<__mmask16>(hi), v, _mm512_set1_epi32(4));
    }
    return v;
  }
}

template <int BITS, int B>
RS_AVX512 void rows_f32_avx512(const float* xp, const uint8_t* cp, const uint16_t* sp, const uint16_t* op,
                               bool zero_point, const float* xs, float* yp, int64_t K, int64_t N, int64_t group,
                               int64_t r0, int64_t r1) {
  const int64_t NG = K / group, chunks = group / kChunk, cb = 8 * BITS, row_bytes = K / kChunk * cb;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = cp + r * row_bytes;
    __m512 acc[B];
    for (int b = 0; b < B; ++b) acc[b] = _mm512_setzero_ps();
    for (int64_t g = 0; g < NG; ++g) {
      // Batch 1: four independent FMA chains (one per quarter) hide the FMA latency.
      __m512 dot[B][B == 1 ? 4 : 1];
      for (int b = 0; b < B; ++b)
        for (auto& d : dot[b]) d = _mm512_setzero_ps();
      for (int64_t u = 0; u < chunks; ++u) {
        const uint8_t* c = row + (g * chunks + u) * cb;
        const int64_t base = g * group + u * kChunk;
        for (int i = 0; i < 4; ++i) {
          const __m512 q = _mm512_cvtepi32_ps(codes16_avx512<BITS>(c, i));
          for (int b = 0; b < B; ++b) {
            __m512& d = dot[b][B == 1 ? i : 0];
            d = _mm512_fmadd_ps(q, _mm512_loadu_ps(xp + b * K + base + 16 * i), d);
          }
        }
      }
      const __m512 s = _mm512_set1_ps(_cvtsh_ss(sp[r * NG + g]));
      for (int b = 0; b < B; ++b) {
        __m512 d = dot[b][0];
        if constexpr (B == 1) d = _mm512_add_ps(_mm512_add_ps(dot[0][0], dot[0][1]), _mm512_add_ps(dot[0][2], dot[0][3]));
        acc[b] = _mm512_fmadd_ps(s, d, acc[b]);
      }
    }
    // offset terms: Σ_g offset[r,g]·Σx[b,g], 16 groups per FMA
    for (int64_t g0 = 0; g0 < NG; g0 += 16) {
      const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(16, NG - g0)) - 1);
      __m512 sv, ov;
      affine16_avx512(sp + r * NG + g0, op + r * NG + g0, m, zero_point, sv, ov);
      for (int b = 0; b < B; ++b) acc[b] = _mm512_fmadd_ps(ov, _mm512_maskz_loadu_ps(m, xs + b * NG + g0), acc[b]);
    }
    for (int b = 0; b < B; ++b) yp[b * N + r] = _mm512_reduce_add_ps(acc[b]);
  }
}

// ---------------------------------------------------------------- AVX-512 VNNI, int8 activations

// The 64 codes of a chunk as unsigned bytes, in input order.
template <int BITS>
RS_AVX512_VNNI inline __m512i codes64_avx512(const uint8_t* c) {
  if constexpr (BITS == 4) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
    const __m256i m = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(v, m), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  } else {
    // the 16 bytes in all four 128-bit lanes; lane j shifts by 2j (16-bit shifts: the masks
    // below drop the bits that crossed from the neighbouring byte)
    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
    v = _mm512_srlv_epi16(v, _mm512_set_epi32(0x00060006, 0x00060006, 0x00060006, 0x00060006, 0x00040004,
                                              0x00040004, 0x00040004, 0x00040004, 0x00020002, 0x00020002,
                                              0x00020002, 0x00020002, 0, 0, 0, 0));
    v = _mm512_and_si512(v, _mm512_set1_epi8(3));
    if constexpr (BITS == 3) {
      uint64_t hi;
      std::memcpy(&hi, c + 16, 8);
      v = _mm512_mask_add_epi8(v, _cvtu64_mask64(hi), v, _mm512_set1_epi8(4));
    }
    return v;
  }
}

// One group of the int8 path: Σ_i q·xq per batch row (int32 lanes), then one FMA with
// scale·dx into accumulator chain C.
template <int BITS, int B, int C, int NC>
RS_AVX512_VNNI inline void a8_group(const uint8_t* row, const int8_t* xq, int64_t K, int64_t g, int64_t group,
                               const __m512 (&sdx)[B], int j, __m512 (&acc)[B][NC]) {
  const int64_t chunks = group / kChunk, cb = 8 * BITS;
  __m512i dot[B];
  for (int b = 0; b < B; ++b) dot[b] = _mm512_setzero_si512();
  for (int64_t u = 0; u < chunks; ++u) {
    const __m512i q = codes64_avx512<BITS>(row + (g * chunks + u) * cb);
    const int64_t base = g * group + u * kChunk;
    for (int b = 0; b < B; ++b) dot[b] = _mm512_dpbusd_epi32(dot[b], q, _mm512_loadu_si512(xq + b * K + base));
  }
  const __m512i lane = _mm512_set1_epi32(j);  // scale·dx of group j, broadcast from a register
  for (int b = 0; b < B; ++b)
    acc[b][C] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[b]), _mm512_permutexvar_ps(lane, sdx[b]), acc[b][C]);
}

template <int BITS, int B>
RS_AVX512_VNNI void rows_a8_avx512(const int8_t* xq, const float* dx, const float* xs, const uint8_t* cp,
                              const uint16_t* sp, const uint16_t* op, bool zero_point, float* yp, int64_t K, int64_t N,
                              int64_t group, int64_t r0, int64_t r1) {
  const int64_t NG = K / group, chunks = group / kChunk, cb = 8 * BITS, row_bytes = K / kChunk * cb;
  constexpr int kChains = B <= 2 ? 2 : 1;  // per-group FMAs are latency-bound at batch 1-2
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = cp + r * row_bytes;
    __m512 acc[B][kChains], offv[B];
    for (int b = 0; b < B; ++b) {
      for (auto& a : acc[b]) a = _mm512_setzero_ps();
      offv[b] = _mm512_setzero_ps();
    }
    // Groups in blocks of 16: the scale·dx products and the offset terms of 16 groups take
    // one vector op each instead of 16 scalar ones.
    for (int64_t g0 = 0; g0 < NG; g0 += 16) {
      const int n = static_cast<int>(std::min<int64_t>(16, NG - g0));
      const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
      __m512 sv, ov;
      affine16_avx512(sp + r * NG + g0, op + r * NG + g0, m, zero_point, sv, ov);
      __m512 sdx[B];
      for (int b = 0; b < B; ++b) {
        sdx[b] = _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(m, dx + b * NG + g0));
        offv[b] = _mm512_fmadd_ps(ov, _mm512_maskz_loadu_ps(m, xs + b * NG + g0), offv[b]);
      }
      int j = 0;
      if constexpr (kChains == 2) {
        for (; j + 1 < n; j += 2) {
          a8_group<BITS, B, 0>(row, xq, K, g0 + j, group, sdx, j, acc);
          a8_group<BITS, B, 1>(row, xq, K, g0 + j + 1, group, sdx, j + 1, acc);
        }
      }
      for (; j < n; ++j) a8_group<BITS, B, 0>(row, xq, K, g0 + j, group, sdx, j, acc);
    }
    for (int b = 0; b < B; ++b) {
      __m512 a = acc[b][0];
      if constexpr (kChains == 2) a = _mm512_add_ps(a, acc[b][1]);
      yp[b * N + r] = _mm512_reduce_add_ps(_mm512_add_ps(a, offv[b]));
    }
  }
}

// Per group of `group` inputs: xq = round_half_even(x · (127 / max|x|)), dx = max|x| / 127,
// xs = Σx (fp32, for the offset term). max|x| = 0 → xq = 0, dx = 0.
RS_AVX512 void quantize_activations_avx512(const float* x, int8_t* xq, float* dx, float* xs, int64_t n_groups,
                                           int64_t group) {
  for (int64_t g = 0; g < n_groups; ++g) {
    const float* xg = x + g * group;
    __m512 amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
    for (int64_t k = 0; k < group; k += 16) {
      const __m512 v = _mm512_loadu_ps(xg + k);
      amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
      sum = _mm512_add_ps(sum, v);
    }
    const float m = _mm512_reduce_max_ps(amax);
    const __m512 inv = _mm512_set1_ps(m > 0.f ? 127.f / m : 0.f);
    for (int64_t k = 0; k < group; k += 16) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + k), inv));  // MXCSR: nearest-even
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + g * group + k), _mm512_cvtsepi32_epi8(q));
    }
    dx[g] = m / 127.f;
    xs[g] = _mm512_reduce_add_ps(sum);
  }
}

// ---------------------------------------------------------------- AVX2, fp32 activations

// Codes 8i .. 8i+7 of a chunk as int32 lanes (i in 0..7).
template <int BITS>
inline __m256i codes8_avx2(const uint8_t* c, int i) {
  if constexpr (BITS == 4) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + (i & 3) * 8)));
    return i < 4 ? _mm256_and_si256(v, _mm256_set1_epi32(0x0F)) : _mm256_srli_epi32(v, 4);
  } else {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + (i & 1) * 8)));
    v = _mm256_and_si256(_mm256_srli_epi32(v, 2 * (i >> 1)), _mm256_set1_epi32(3));
    if constexpr (BITS == 3) {
      const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
      const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(c[16 + i]), bit), bit);
      v = _mm256_add_epi32(v, _mm256_and_si256(set, _mm256_set1_epi32(4)));
    }
    return v;
  }
}

template <int BITS, int B>
void rows_f32_avx2(const float* xp, const uint8_t* cp, const uint16_t* sp, const uint16_t* op, bool zero_point,
                   const float* xs, float* yp, int64_t K, int64_t N, int64_t group, int64_t r0, int64_t r1) {
  const int64_t NG = K / group, chunks = group / kChunk, cb = 8 * BITS, row_bytes = K / kChunk * cb;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = cp + r * row_bytes;
    __m256 acc[B];
    float off[B];
    for (int b = 0; b < B; ++b) { acc[b] = _mm256_setzero_ps(); off[b] = 0.f; }
    for (int64_t g = 0; g < NG; ++g) {
      constexpr int kChains = B == 1 ? 4 : (B <= 2 ? 2 : 1);  // enough independent FMA chains
      __m256 dot[B][kChains];
      for (int b = 0; b < B; ++b)
        for (auto& d : dot[b]) d = _mm256_setzero_ps();
      for (int64_t u = 0; u < chunks; ++u) {
        const uint8_t* c = row + (g * chunks + u) * cb;
        const int64_t base = g * group + u * kChunk;
        for (int i = 0; i < 8; ++i) {
          const __m256 q = _mm256_cvtepi32_ps(codes8_avx2<BITS>(c, i));
          for (int b = 0; b < B; ++b) {
            __m256& d = dot[b][i % kChains];
            d = _mm256_fmadd_ps(q, _mm256_loadu_ps(xp + b * K + base + 8 * i), d);
          }
        }
      }
      const float sg = _cvtsh_ss(sp[r * NG + g]), og = _cvtsh_ss(op[r * NG + g]);
      const __m256 s = _mm256_set1_ps(sg);
      const float o = zero_point ? -(og * sg) : og;  // as affine16_avx512
      for (int b = 0; b < B; ++b) {
        __m256 d = dot[b][0];
        for (int j = 1; j < kChains; ++j) d = _mm256_add_ps(d, dot[b][j]);
        acc[b] = _mm256_fmadd_ps(s, d, acc[b]);
        off[b] += o * xs[b * NG + g];
      }
    }
    for (int b = 0; b < B; ++b) yp[b * N + r] = hsum256(acc[b]) + off[b];
  }
}

// ---------------------------------------------------------------- dispatch helpers

// Kernel<BITS, B>::run(args...) for runtime bits in {2,3,4} and batch in [1, 8].
template <template <int, int> class Kernel, int BITS, typename... A>
void by_batch(int64_t B, A... a) {
  switch (B) {
    case 1: Kernel<BITS, 1>::run(a...); break;
    case 2: Kernel<BITS, 2>::run(a...); break;
    case 3: Kernel<BITS, 3>::run(a...); break;
    case 4: Kernel<BITS, 4>::run(a...); break;
    case 5: Kernel<BITS, 5>::run(a...); break;
    case 6: Kernel<BITS, 6>::run(a...); break;
    case 7: Kernel<BITS, 7>::run(a...); break;
    default: Kernel<BITS, 8>::run(a...); break;
  }
}

template <template <int, int> class Kernel, typename... A>
void dispatch(int64_t bits, int64_t B, A... a) {
  if (bits == 2) by_batch<Kernel, 2>(B, a...);
  else if (bits == 3) by_batch<Kernel, 3>(B, a...);
  else by_batch<Kernel, 4>(B, a...);
}

template <int BITS, int B>
struct F32Rows {
  template <typename... A>
  static void run(A... a) {
    if (kHasAvx512) rows_f32_avx512<BITS, B>(a...);
    else rows_f32_avx2<BITS, B>(a...);
  }
};

template <int BITS, int B>
struct A8Rows {
  template <typename... A>
  static void run(A... a) { rows_a8_avx512<BITS, B>(a...); }
};

// Batches of more than kMaxBatch rows: blocks of 64 weight rows (≤ 64·8·bits·K/64 bytes, L2-sized
// for K ≤ 16k), each run for every slice of ≤ 8 batch rows before moving on, so the codes come
// from DRAM once per call, not once per slice. f(row_begin, row_end, batch_begin, batch_rows).
template <typename F>
void for_blocks(int64_t r0, int64_t r1, int64_t B, F&& f) {
  if (B <= kMaxBatch) {
    f(r0, r1, 0, B);
    return;
  }
  for (int64_t rb = r0; rb < r1; rb += 64)
    for (int64_t b0 = 0; b0 < B; b0 += kMaxBatch) f(rb, std::min(rb + 64, r1), b0, std::min<int64_t>(kMaxBatch, B - b0));
}

void check_layout(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& scale,
                  const torch::Tensor& offset, int64_t group, int64_t bits) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(), "x must be contiguous fp32 [B, K]");
  TORCH_CHECK(codes.scalar_type() == torch::kUInt8 && codes.is_contiguous() && codes.dim() == 2,
              "codes must be contiguous uint8 [N, K*bits/8]");
  TORCH_CHECK(bits >= 2 && bits <= 4, "bits must be 2, 3 or 4");
  const int64_t B = x.size(0), K = x.size(1), N = codes.size(0);
  TORCH_CHECK(B >= 1, "empty batch");
  TORCH_CHECK(group % kChunk == 0 && K % group == 0 && codes.size(1) == K / kChunk * 8 * bits,
              "bad shapes for the low-bit kernel (group must be a multiple of 64 dividing K)");
  TORCH_CHECK(scale.scalar_type() == torch::kHalf && offset.scalar_type() == torch::kHalf && scale.is_contiguous() &&
                  offset.is_contiguous() && scale.size(0) == N && scale.size(1) == K / group &&
                  offset.sizes() == scale.sizes(),
              "scale/offset must be contiguous fp16 [N, K/group]");
}

}  // namespace


// x: [B, K] fp32, codes: [N, K/64 · 8·bits] uint8, scale/offset: [N, K/group] fp16 (offset holds
// zero points z when zero_point: w = (q − z)·s, else w = q·s + offset). -> y [B, N].
torch::Tensor lowbit_gemv(torch::Tensor x, torch::Tensor codes, torch::Tensor scale, torch::Tensor offset,
                          bool zero_point, int64_t group, int64_t bits) {
  check_layout(x, codes, scale, offset, group, bits);
  const int64_t B = x.size(0), K = x.size(1), N = codes.size(0), NG = K / group;
  auto xs_t = x.reshape({B, NG, group}).sum(-1).contiguous();
  auto y = torch::empty({B, N}, x.options());
  const float *xp = x.data_ptr<float>(), *xs = xs_t.data_ptr<float>();
  const uint16_t *sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>()),
                 *op = reinterpret_cast<const uint16_t*>(offset.data_ptr<at::Half>());
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
    for_blocks(r0, r1, B, [&](int64_t rb, int64_t re, int64_t b0, int64_t nb) {
      dispatch<F32Rows>(bits, nb, xp + b0 * K, cp, sp, op, zero_point, xs + b0 * NG, yp + b0 * N, K, N, group, rb, re);
    });
  });
  return y;
}

// Per-group int8 quantisation of x: {xq int8 [B, K], dx fp32 [B, K/group], Σx fp32 [B, K/group]}
// (the kernel's first step; tests compare it bit for bit with the torch reference).
std::vector<torch::Tensor> quantize_activations_int8(torch::Tensor x, int64_t group) {
  TORCH_CHECK(kHasAvx512Vnni, "the int8-activation kernel needs AVX-512 VNNI");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous() && group % 16 == 0 &&
                  x.size(1) % group == 0,
              "x must be contiguous fp32 [B, K] with K a multiple of group (a multiple of 16)");
  const int64_t B = x.size(0), NG = x.size(1) / group;
  auto xq = torch::empty_like(x, x.options().dtype(torch::kChar));
  auto dx = torch::empty({B, NG}, x.options()), xs = torch::empty({B, NG}, x.options());
  quantize_activations_avx512(x.data_ptr<float>(), xq.data_ptr<int8_t>(), dx.data_ptr<float>(), xs.data_ptr<float>(),
                              B * NG, group);
  return {xq, dx, xs};
}

// Same layout; activations quantised to int8 per group inside (see the file comment).
torch::Tensor lowbit_gemv_a8(torch::Tensor x, torch::Tensor codes, torch::Tensor scale, torch::Tensor offset,
                             bool zero_point, int64_t group, int64_t bits) {
  TORCH_CHECK(kHasAvx512Vnni, "the int8-activation kernel needs AVX-512 VNNI");
  check_layout(x, codes, scale, offset, group, bits);
  const int64_t B = x.size(0), K = x.size(1), N = codes.size(0), NG = K / group;
  const auto q = quantize_activations_int8(x, group);  // xq, dx, Σx
  const int8_t* xq = q[0].data_ptr<int8_t>();
  const float *dx = q[1].data_ptr<float>(), *xs = q[2].data_ptr<float>();
  auto y = torch::empty({B, N}, x.options());
  const uint16_t *sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>()),
                 *op = reinterpret_cast<const uint16_t*>(offset.data_ptr<at::Half>());
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
    for_blocks(r0, r1, B, [&](int64_t rb, int64_t re, int64_t b0, int64_t nb) {
      dispatch<A8Rows>(bits, nb, xq + b0 * K, dx + b0 * NG, xs + b0 * NG, cp, sp, op, zero_point, yp + b0 * N, K, N,
                       group, rb, re);
    });
  });
  return y;
}
