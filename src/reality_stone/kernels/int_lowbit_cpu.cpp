// Fused group-quantised (2-, 3-, 4- or 8-bit codes, per-group fp16 scale and offset or zero point) matmul for CPU.
//
//   y[b, r] = Σ_g ( scale[r,g] · Σ_{i∈g} q[r,i] x[b,i]  +  offset[r,g] · Σ_{i∈g} x[b,i] )
//
// Compute layout (int_lowbit.py: pack_lowbit_layout): each row is a run of 64-input chunks of
// 8·BITS bytes; inside a chunk
//   4 bits: byte k (0..31) = code k | code k+32 << 4
//   2 bits: byte k (0..15) = code k | code k+16 << 2 | code k+32 << 4 | code k+48 << 6
//   3 bits: the 2-bit layout of (code & 3); the high bits after each block of ≤ 4 chunks
//           (4 masks of 16 bits per chunk: mask p, bit 16c + k = input 64c + 16p + k)
//   8 bits: byte k (0..63) = code k (5- to 8-bit codes; an int8 LM head, say)
// so every unpack step needs only shifts and masks. Groups are whole chunks (group % 64 == 0).
// W is never materialised: codes are unpacked into registers and consumed.
//
// Two entry points:
//  * lowbit_gemv     — fp32 activations, exact to fp32 rounding (AVX-512 when the CPU has it,
//                      else AVX2); codes → fp32 → FMA.
//  * lowbit_gemv_a8  — activations quantised on the fly to int8 per group (symmetric,
//                      round-half-even, scale max|x|/127; the offset term keeps the exact fp32
//                      Σx): u8 codes × s8 activations with AVX-512 VNNI (vpdpbusd, 64 MACs per
//                      instruction), one fp32 FMA per block of chunks. Needs AVX-512 VNNI.
#include "kernels.h"

#include <algorithm>
#include <cstdlib>

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

// ---------------------------------------------------------------- AVX-512: blocks of chunks

// 16 groups' affine parameters (fp16 in the layout, lanes ≥ popcount(m) zero) as fp32: scale s
// and offset o (zero_point: the layout holds zero points z and o = −z·s).
RS_AVX512 inline void affine16_avx512(const uint16_t* s16, const uint16_t* o16, __mmask16 m, bool zero_point, __m512& s,
                                      __m512& o) {
  s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s16));
  o = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, o16));
  if (zero_point) o = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(o, s));
}

// Both AVX-512 paths read a row in *blocks*: one 64-byte load holds P consecutive chunks (P = 2
// for 4 bits, 4 for 2/3 bits: a chunk is 32 or 16 bytes of packed codes), i.e. 64·P inputs.
// Part p of the block (nibble p or crumb p: one shift, one mask, for all P chunks at once) holds
// in the 64/P bytes of chunk c the codes of inputs 64c + (64/P)·p + k; in 128-bit lane l, the
// codes of 16 consecutive inputs (chunk l/(4/P), 64c + (64/P)·p + 16·(l % (4/P)) + k).
template <int BITS>
constexpr int kParts = BITS == 8 ? 1 : BITS == 4 ? 2 : 4;

// The P parts of the block at chunk `c` of a row (nc ≤ P chunks; zero codes beyond), as bytes.
// FULL (nc == P, all but a row's last block) is its own instantiation: constant offsets, the
// 3-bit masks loaded straight into mask registers.
template <int BITS, bool FULL>
RS_AVX512 inline void block_codes(const uint8_t* row, int64_t c, int64_t nc, __m512i (&q)[kParts<BITS>]) {
  constexpr int P = kParts<BITS>, kWidth = 8 / P;  // bits per part within a byte
  const uint8_t* blk = row + c * 8 * BITS;  // blocks start at multiples of P chunks
  if constexpr (FULL) nc = P;
  const __m512i v = FULL ? _mm512_loadu_si512(blk)
                         : _mm512_maskz_loadu_epi8(_cvtu64_mask64(~0ULL >> (64 - 64 / P * nc)), blk);
  const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << kWidth) - 1));
  for (int p = 0; p < P; ++p) {
    // 16-bit shifts (there are no 8-bit ones): the mask drops the bits from the neighbouring byte
    q[p] = _mm512_and_si512(p == 0 ? v : _mm512_srli_epi16(v, kWidth * p), mask);
    if constexpr (BITS == 3) {
      // high bits after the block's low bits: mask p (16·nc bits), bit 16c + k = input 64c + 16p + k
      const uint8_t* hi = blk + 16 * nc;
      __mmask64 h;
      if constexpr (FULL) {
        h = _load_mask64(reinterpret_cast<__mmask64*>(const_cast<uint8_t*>(hi + 8 * p)));  // kmovq k, m64
      } else {
        // 2·nc bytes by a masked load (a variable-size memcpy is a library call)
        const __m128i b = _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << (2 * nc)) - 1), hi + p * 2 * nc);
        h = _cvtu64_mask64(static_cast<uint64_t>(_mm_cvtsi128_si64(b)));
      }
      q[p] = _mm512_mask_add_epi8(q[p], h, q[p], _mm512_set1_epi8(4));
    }
  }
}

// Software prefetch of [p, p + bytes) into L1. Every path prefetches the codes it reads next,
// spread over the codes it reads now: a row is only K·bits/8 bytes (2 KB for 4096 4-bit
// inputs), too short a stream for the hardware prefetcher to ramp up on. Measured on 4096² int4,
// one thread, weights from DRAM: 1.45 → 0.96 ms per call (the same layer from L3: 0.70 ms).
inline void prefetch_lines(const uint8_t* p, int64_t bytes) {
  for (int64_t l = 0; l < bytes; l += 64) _mm_prefetch(reinterpret_cast<const char*>(p + l), _MM_HINT_T0);
}

// ---------------------------------------------------------------- AVX-512, fp32 activations

// Weights by table: a group's 2^bits dequantised values q·s + o (fp32) sit in one zmm, and one
// vpermps with the codes as indices turns 16 codes into 16 weights (it reads only bits 3..0 of
// each lane, so a nibble needs no mask, and the 2-bit table repeats its 4 values so that the next
// part's bits above bit 1 select the same value; 3 bits: the 2-bit crumb indexes the table of
// codes 0..3, and a masked vpermps where the high bit is set overwrites from the table of 4..7,
// no masking of the index either). The offset lives in the table, so there is no
// separate Σx pass and no per-chunk scale chain: each weight is one FMA into its (row, batch)
// accumulator. 8-bit codes: cvt + one FMA with the row's s and o instead.
//
// R rows at a time: x's 16-input slice of each batch row is loaded once from L2 (by the first row)
// and re-read from L1 by the others, and R independent FMA chains hide the FMA latency at batch 1
// (one chain per row was latency-bound: 4 dependent FMAs per chunk).
constexpr int64_t kF32MaxBatch = 4;  // batch rows per pass (larger batches: slices, see gemv_f32_into)
template <int B>
constexpr int kF32Rows = B <= 4 ? 4 : 2;  // R·B accumulators + 2R tables + R weights ≤ 28 of 32 zmm

// Lane j holds the weight of code j (4 bits) or of code (j & 3) + base (2 bits; 3 bits: base 0 for
// codes 0..3, base 4 for 4..7 — the high bit picks the table by mask, see f32_chunk).
template <int BITS>
RS_AVX512 inline __m512 dequant_table(float s, float o, float base = 0.f) {
  const __m512 code = BITS == 4 ? _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                                : _mm512_add_ps(_mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3),
                                                _mm512_set1_ps(base));
  return _mm512_fmadd_ps(code, _mm512_set1_ps(s), _mm512_set1_ps(o));
}

// acc[r][b] += w_r ⊙ x[b, i .. i+16) for the 16 weights w_r of each row r (R rows, B batch rows).
template <int B, int R>
RS_AVX512 inline void fma_rows(const __m512 (&w)[R], const float* xi, int64_t K, __m512 (&acc)[R][B]) {
  for (int b = 0; b < B; ++b) {
    const __m512 xv = _mm512_loadu_ps(xi + b * K);
    for (int r = 0; r < R; ++r) acc[r][b] = _mm512_fmadd_ps(w[r], xv, acc[r][b]);
  }
}

// One 64-input chunk c of R rows (row[r]: the row's codes; t/s/o: its current group's table, or
// scale and offset for 8-bit codes). Inputs are visited in 16-input segments in layout order.
template <int BITS, int B, int R>
RS_AVX512 inline void f32_chunk(const uint8_t* const (&row)[R], int64_t c, int64_t n_chunks, const float* xp,
                                int64_t K, const __m512 (&t)[R], const __m512 (&th)[R], const __m512 (&s)[R],
                                const __m512 (&o)[R], __m512 (&acc)[R][B]) {
  const float* xc = xp + c * kChunk;
  __m512 w[R];
  if constexpr (BITS == 4) {  // byte k = code k | code k+32 << 4; 16 bytes → inputs 16h.. and 32+16h..
    for (int h = 0; h < 2; ++h) {
      __m512i q[R];
      for (int r = 0; r < R; ++r) q[r] = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + c * 32 + 16 * h)));
      for (int r = 0; r < R; ++r) w[r] = _mm512_permutexvar_ps(q[r], t[r]);
      fma_rows<B, R>(w, xc + 16 * h, K, acc);
      for (int r = 0; r < R; ++r) w[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(q[r], 4), t[r]);
      fma_rows<B, R>(w, xc + 32 + 16 * h, K, acc);
    }
  } else if constexpr (BITS == 8) {  // byte k = code k
    for (int h = 0; h < 4; ++h) {
      for (int r = 0; r < R; ++r) {
        const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + c * 64 + 16 * h)));
        w[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), s[r], o[r]);
      }
      fma_rows<B, R>(w, xc + 16 * h, K, acc);
    }
  } else {  // 2/3 bits: byte k (0..15) = code k | k+16 << 2 | k+32 << 4 | k+48 << 6; 3 bits add the masks
    const int64_t start = c & ~int64_t{3}, nc = std::min<int64_t>(4, n_chunks - start);  // the 3-bit block
    const int64_t lo = BITS == 2 ? c * 16 : start * 24 + 16 * (c - start), hi = start * 24 + 16 * nc + 2 * (c - start);
    __m512i q[R];
    for (int r = 0; r < R; ++r) q[r] = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row[r] + lo)));
    for (int p = 0; p < 4; ++p) {
      for (int r = 0; r < R; ++r) {
        const __m512i idx = p == 0 ? q[r] : _mm512_srli_epi32(q[r], 2 * p);  // bits 1..0: the crumb
        w[r] = _mm512_permutexvar_ps(idx, t[r]);
        if constexpr (BITS == 3) {  // mask p of the block (bit 16·(c − start) + k = input 16p + k): codes 4..7
          const __mmask16 h = _load_mask16(reinterpret_cast<__mmask16*>(const_cast<uint8_t*>(row[r] + hi + p * 2 * nc)));
          w[r] = _mm512_mask_permutexvar_ps(w[r], h, idx, th[r]);
        }
      }
      fma_rows<B, R>(w, xc + 16 * p, K, acc);
    }
  }
}

template <int BITS, int B>
RS_AVX512 void rows_f32_avx512(const float* xp, const uint8_t* cp, const uint16_t* sp, const uint16_t* op,
                               bool zero_point, const float* /*xs: the offsets are in the tables*/, float* yp,
                               int64_t K, int64_t N, int64_t group, int64_t r0, int64_t r1) {
  constexpr int R = kF32Rows<B>;
  const int64_t NG = K / group, n_chunks = K / kChunk, row_bytes = n_chunks * 8 * BITS, cpg = group / kChunk;
  thread_local std::vector<float> affine;  // per row of the block: NG scales, then NG offsets (fp32)
  affine.resize(2 * R * NG);
  for (int64_t rb = r0; rb < r1; rb += R) {
    // a last block of fewer than R rows repeats its last row and stores only the real ones
    const int valid = static_cast<int>(std::min<int64_t>(R, r1 - rb));
    const uint8_t* row[R];
    for (int r = 0; r < R; ++r) {
      const int64_t rr = rb + std::min(r, valid - 1);
      row[r] = cp + rr * row_bytes;
      float* a = affine.data() + 2 * r * NG;
      for (int64_t g0 = 0; g0 < NG; g0 += 16) {
        const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(16, NG - g0)) - 1);
        __m512 sv, ov;
        affine16_avx512(sp + rr * NG + g0, op + rr * NG + g0, m, zero_point, sv, ov);
        _mm512_mask_storeu_ps(a + g0, m, sv);
        _mm512_mask_storeu_ps(a + NG + g0, m, ov);
      }
    }
    __m512 acc[R][B], t[R], th[R], s[R], o[R];
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < B; ++b) acc[r][b] = _mm512_setzero_ps();
    // The next block's codes, prefetched over this block's chunks (prefetch_lines).
    const uint8_t* next = cp + (rb + R) * row_bytes;
    const bool prefetch = rb + 2 * R <= N;
    int64_t g = 0, left = 0;  // the group of the current chunk, chunks left in it
    for (int64_t c = 0; c < n_chunks; ++c) {
      if (prefetch) prefetch_lines(next + c * R * 8 * BITS, R * 8 * BITS);
      if (left == 0) {
        for (int r = 0; r < R; ++r) {
          const float sg = affine[2 * r * NG + g], og = affine[(2 * r + 1) * NG + g];
          if constexpr (BITS == 8) s[r] = _mm512_set1_ps(sg), o[r] = _mm512_set1_ps(og);
          else t[r] = dequant_table<BITS>(sg, og);
          if constexpr (BITS == 3) th[r] = dequant_table<BITS>(sg, og, 4.f);
        }
        ++g, left = cpg;
      }
      --left;
      f32_chunk<BITS, B, R>(row, c, n_chunks, xp, K, t, th, s, o, acc);
    }
    for (int r = 0; r < valid; ++r)
      for (int b = 0; b < B; ++b) yp[b * N + rb + r] = _mm512_reduce_add_ps(acc[r][b]);
  }
}

// ---------------------------------------------------------------- AVX-512 VNNI, int8 activations

// The activations of a block are stored permuted (`permuted_position`) so that part p of the
// block meets one contiguous 64-byte load of x: one vpdpbusd covers all P chunks, its 16 int32
// lanes hold the P chunks' partial dots side by side, and one cvt + one FMA with the lanes'
// scale·dx finishes the block — per-group work does not grow with the number of groups (at
// group 64 a one-chunk-per-vpdpbusd loop spent most of its time there).

// Position of input i of a row in the permuted activation layout of P-part blocks.
inline int64_t permuted_position(int64_t i, int P) {
  const int64_t block = i / (64 * P), rem = i % (64 * P), c = rem / 64, w = rem % 64, width = 64 / P;
  return block * 64 * P + 64 * (w / width) + width * c + w % width;
}

// One block of the int8 path: P vpdpbusd per batch row, then cvt + FMA with the lanes' scale·dx.
template <int BITS, int B, bool FULL>
RS_AVX512_VNNI inline void a8_block(const uint8_t* row, const int8_t* xp, int64_t Kp, int64_t c, int64_t nc,
                                    const int32_t* lanes, const __m512 (&sdx)[B], __m512 (&acc)[B]) {
  constexpr int P = kParts<BITS>;
  __m512i q[P], dot[B];
  block_codes<BITS, FULL>(row, c, nc, q);
  for (int b = 0; b < B; ++b) dot[b] = _mm512_setzero_si512();
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < B; ++b)
      dot[b] = _mm512_dpbusd_epi32(dot[b], q[p], _mm512_loadu_si512(xp + b * Kp + c * kChunk + 64 * p));
  const __m512i l = _mm512_loadu_si512(lanes);
  for (int b = 0; b < B; ++b)
    acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[b]), _mm512_permutexvar_ps(l, sdx[b]), acc[b]);
}

constexpr int64_t kPrefetchRows = 2;  // one-row paths (int8 activations, AVX2): rows ahead whose codes are prefetched

// xp: activations in the permuted layout, [B, Kp] int8 (Kp: K padded to whole blocks, zeros).
// lane_group: for the j-th block of a 16-group window, lane l → the window's group of that lane.
template <int BITS, int B>
RS_AVX512_VNNI void rows_a8_avx512(const int8_t* xp, int64_t Kp, const float* dx, const float* xs, const uint8_t* cp,
                                   const uint16_t* sp, const uint16_t* op, bool zero_point, const int32_t* lane_group,
                                   float* yp, int64_t K, int64_t N, int64_t group, int64_t r0, int64_t r1) {
  constexpr int P = kParts<BITS>;
  const int64_t NG = K / group, n_chunks = K / kChunk, row_bytes = n_chunks * 8 * BITS, cpg = group / kChunk;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = cp + r * row_bytes;
    const int64_t ahead = r + kPrefetchRows < N ? kPrefetchRows * row_bytes : 0;  // 0: no prefetch
    __m512 acc[B];
    for (int b = 0; b < B; ++b) acc[b] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < NG; g0 += 16) {
      const int n = static_cast<int>(std::min<int64_t>(16, NG - g0));
      const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
      __m512 sv, ov;
      affine16_avx512(sp + r * NG + g0, op + r * NG + g0, m, zero_point, sv, ov);
      __m512 sdx[B];
      for (int b = 0; b < B; ++b) {
        sdx[b] = _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(m, dx + b * NG + g0));
        acc[b] = _mm512_fmadd_ps(ov, _mm512_maskz_loadu_ps(m, xs + b * NG + g0), acc[b]);  // offset terms
      }
      const int64_t c_end = (g0 + n) * cpg;
      int64_t c = g0 * cpg, j = 0;
      for (; c + P <= c_end; c += P, ++j) {
        if (ahead) prefetch_lines(row + ahead + c * 8 * BITS, P * 8 * BITS);
        a8_block<BITS, B, true>(row, xp, Kp, c, P, lane_group + 16 * j, sdx, acc);
      }
      if (c < c_end) a8_block<BITS, B, false>(row, xp, Kp, c, n_chunks - c, lane_group + 16 * j, sdx, acc);
    }
    for (int b = 0; b < B; ++b) yp[b * N + r] = _mm512_reduce_add_ps(acc[b]);
  }
}

// Per group of `group` inputs: xq = round_half_even(x · (127 / max|x|)), dx = max|x| / 127,
// xs = Σx (fp32, for the offset term). max|x| = 0 → xq = 0, dx = 0. x is [B, K]; xq row b
// starts at b·Kp, input i at `permuted_position(i, P)` (P = 1: the natural order).
RS_AVX512 void quantize_activations_avx512(const float* x, int64_t B, int64_t K, int64_t group, int P, int8_t* xq,
                                           int64_t Kp, float* dx, float* xs) {
  const int64_t NG = K / group;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < NG; ++g) {
      const float* xg = x + b * K + g * group;
      __m512 amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
      for (int64_t k = 0; k < group; k += 16) {
        const __m512 v = _mm512_loadu_ps(xg + k);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        sum = _mm512_add_ps(sum, v);
      }
      const float m = _mm512_reduce_max_ps(amax);
      const __m512 inv = _mm512_set1_ps(m > 0.f ? 127.f / m : 0.f);
      for (int64_t k = 0; k < group; k += 16) {  // 16 inputs stay contiguous under the permutation
        const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + k), inv));  // MXCSR: nearest-even
        _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + b * Kp + permuted_position(g * group + k, P)),
                         _mm512_cvtsepi32_epi8(q));
      }
      dx[b * NG + g] = m / 127.f;
      xs[b * NG + g] = _mm512_reduce_add_ps(sum);
    }
  }
}

// ---------------------------------------------------------------- AVX2, fp32 activations

// Where chunk `cg` of a row lies (chunk by chunk, as the AVX2 path reads): its packed (low) bits and, for 3 bits, its high-bit words —
// 16 bits per 16 inputs, `hstride` bytes apart (see pack_lowbit_layout: a block of ≤ 4 chunks
// stores their low bits, then 4 masks of 16 bits per chunk).
struct ChunkRef {
  const uint8_t* lo;
  const uint8_t* hi;
  int64_t hstride;
};

template <int BITS>
inline ChunkRef chunk_ref(const uint8_t* row, int64_t cg, int64_t n_chunks) {
  if constexpr (BITS != 3) {
    return {row + cg * 8 * BITS, nullptr, 0};
  } else {
    const int64_t c = cg % 4, start = cg - c, nc = std::min<int64_t>(4, n_chunks - start);
    const uint8_t* blk = row + start * 24;
    return {blk + 16 * c, blk + 16 * nc + 2 * c, 2 * nc};
  }
}


// Codes 8i .. 8i+7 of a chunk as int32 lanes (i in 0..7).
template <int BITS>
inline __m256i codes8_avx2(const ChunkRef& ref, int i) {
  const uint8_t* c = ref.lo;
  if constexpr (BITS == 8) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + 8 * i)));
  } else if constexpr (BITS == 4) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + (i & 3) * 8)));
    return i < 4 ? _mm256_and_si256(v, _mm256_set1_epi32(0x0F)) : _mm256_srli_epi32(v, 4);
  } else {
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + (i & 1) * 8)));
    v = _mm256_and_si256(_mm256_srli_epi32(v, 2 * (i >> 1)), _mm256_set1_epi32(3));
    if constexpr (BITS == 3) {
      const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
      const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(ref.hi[(i >> 1) * ref.hstride + (i & 1)]), bit), bit);
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
    const int64_t ahead = r + kPrefetchRows < N ? kPrefetchRows * row_bytes : 0;
    __m256 acc[B];
    float off[B];
    for (int b = 0; b < B; ++b) { acc[b] = _mm256_setzero_ps(); off[b] = 0.f; }
    for (int64_t g = 0; g < NG; ++g) {
      constexpr int kChains = B == 1 ? 4 : (B <= 2 ? 2 : 1);  // enough independent FMA chains
      __m256 dot[B][kChains];
      for (int b = 0; b < B; ++b)
        for (auto& d : dot[b]) d = _mm256_setzero_ps();
      for (int64_t u = 0; u < chunks; ++u) {
        if (ahead) prefetch_lines(row + ahead + (g * chunks + u) * cb, cb);
        const ChunkRef c = chunk_ref<BITS>(row, g * chunks + u, K / kChunk);
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

// Kernel<BITS, B>::run(args...) for runtime bits in {2,3,4,8} and batch in [1, 8].
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
  else if (bits == 4) by_batch<Kernel, 4>(B, a...);
  else by_batch<Kernel, 8>(B, a...);
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

// Batches of more than `slice` rows: blocks of 64 weight rows (≤ 64·8·bits·K/64 bytes, L2-sized
// for K ≤ 16k), each run for every slice of ≤ `slice` batch rows before moving on, so the codes
// come from DRAM once per call, not once per slice. f(row_begin, row_end, batch_begin, batch_rows).
template <typename F>
void for_blocks(int64_t r0, int64_t r1, int64_t B, int64_t slice, F&& f) {
  if (B <= slice) {
    f(r0, r1, 0, B);
    return;
  }
  for (int64_t rb = r0; rb < r1; rb += 64)
    for (int64_t b0 = 0; b0 < B; b0 += slice) f(rb, std::min(rb + 64, r1), b0, std::min<int64_t>(slice, B - b0));
}

// The layout of W for K inputs: codes uint8 [N, K/64 · 8·bits], scale/offset fp16 [N, K/group].
void check_codes(const torch::Tensor& codes, const torch::Tensor& scale, const torch::Tensor& offset, int64_t group,
                 int64_t bits, int64_t K) {
  TORCH_CHECK(codes.scalar_type() == torch::kUInt8 && codes.is_contiguous() && codes.dim() == 2,
              "codes must be contiguous uint8 [N, K*bits/8]");
  TORCH_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, "bits must be 2, 3, 4 or 8");
  const int64_t N = codes.size(0);
  TORCH_CHECK(group >= kChunk && group % kChunk == 0 && K % group == 0 && codes.size(1) == K / kChunk * 8 * bits,
              "bad shapes for the low-bit kernel (group must be a multiple of 64 dividing K)");
  TORCH_CHECK(scale.scalar_type() == torch::kHalf && offset.scalar_type() == torch::kHalf && scale.is_contiguous() &&
                  offset.is_contiguous() && scale.size(0) == N && scale.size(1) == K / group &&
                  offset.sizes() == scale.sizes(),
              "scale/offset must be contiguous fp16 [N, K/group]");
}

// x [..., Kx] fp32 contiguous with 1 ≤ Kx ≤ K (the layout's width; inputs Kx.. are zero: a
// weight whose last group is padded takes its real inputs, no padded copy of x on the Python
// side). Returns K.
int64_t check_layout(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& scale,
                     const torch::Tensor& offset, int64_t group, int64_t bits) {
  TORCH_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, "bits must be 2, 3, 4 or 8");
  TORCH_CHECK(codes.dim() == 2, "codes must be contiguous uint8 [N, K*bits/8]");
  const int64_t K = codes.size(1) / (8 * bits) * kChunk;
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == torch::kFloat && x.is_contiguous(), "x must be contiguous fp32 [..., K]");
  TORCH_CHECK(x.size(-1) >= 1 && x.size(-1) <= K, "x has ", x.size(-1), " features, the layout holds ", K);
  check_codes(codes, scale, offset, group, bits, K);
  return K;
}

// x [..., Kx] as rows of K floats: x itself when Kx == K, else a zero-extended copy in `buf`.
const float* rows_of_width(const torch::Tensor& x, int64_t K, std::vector<float>& buf) {
  const int64_t Kx = x.size(-1), B = x.numel() / Kx;
  if (Kx == K) return x.data_ptr<float>();
  buf.assign(B * K, 0.f);
  const float* xp = x.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) std::copy(xp + b * Kx, xp + (b + 1) * Kx, buf.data() + b * K);
  return buf.data();
}

// y [..., N] for x [..., Kx]: `into` (gemv_f32_into or gemv_a8_into) over the batch rows.
template <typename Into>
torch::Tensor lowbit_call(Into into, const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& scale,
                          const torch::Tensor& offset, bool zero_point, int64_t group, int64_t bits) {
  const int64_t K = check_layout(x, codes, scale, offset, group, bits), B = x.numel() / x.size(-1);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = codes.size(0);
  auto y = torch::empty(shape, x.options());
  if (B == 0) return y;
  std::vector<float> buf;
  into(rows_of_width(x, K, buf), B, K, codes, scale, offset, zero_point, group, bits, y.data_ptr<float>());
  return y;
}

// y [B, N] = x [B, K] Wᵀ into caller memory, fp32 activations (layout checked by the caller).
void gemv_f32_into(const float* xp, int64_t B, int64_t K, const torch::Tensor& codes, const torch::Tensor& scale,
                   const torch::Tensor& offset, bool zero_point, int64_t group, int64_t bits, float* yp) {
  const int64_t N = codes.size(0), NG = K / group;
  std::vector<float> xs;  // Σx per group: the AVX2 path's offset term (AVX-512 has it in its tables)
  if (!kHasAvx512) {
    xs.assign(B * NG, 0.f);
    for (int64_t g = 0; g < B * NG; ++g)
      for (int64_t i = 0; i < group; ++i) xs[g] += xp[g * group + i];
  }
  const uint16_t *sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>()),
                 *op = reinterpret_cast<const uint16_t*>(offset.data_ptr<at::Half>());
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const float* xsp = xs.data();
  // AVX-512: slices of ≤ 4 batch rows (kF32Rows): measured on 4096², two passes of 4 batch rows × 4
  // weight rows beat one pass of 8 × 2 (1.32 vs 1.47 ms at batch 8): x's 16-input slices are then
  // read from L2 once per 4 weight rows, not per 2.
  const int64_t slice = kHasAvx512 ? kF32MaxBatch : kMaxBatch;
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
    for_blocks(r0, r1, B, slice, [&](int64_t rb, int64_t re, int64_t b0, int64_t nb) {
      dispatch<F32Rows>(bits, nb, xp + b0 * K, cp, sp, op, zero_point, xsp + b0 * NG, yp + b0 * N, K, N, group, rb, re);
    });
  });
}

// The same with x quantised to int8 per group inside (see the file comment; AVX-512 VNNI).
void gemv_a8_into(const float* x, int64_t B, int64_t K, const torch::Tensor& codes, const torch::Tensor& scale,
                  const torch::Tensor& offset, bool zero_point, int64_t group, int64_t bits, float* yp) {
  TORCH_CHECK(kHasAvx512Vnni, "the int8-activation kernel needs AVX-512 VNNI");
  const int64_t N = codes.size(0), NG = K / group;
  const int P = bits == 8 ? kParts<8> : bits == 4 ? kParts<4> : kParts<2>;
  const int64_t Kp = (K + 64 * P - 1) / (64 * P) * (64 * P);  // whole blocks; the padding stays zero
  std::vector<int8_t> xq(B * Kp, 0);
  std::vector<float> dx(B * NG), xs(B * NG);
  quantize_activations_avx512(x, B, K, group, P, xq.data(), Kp, dx.data(), xs.data());
  // lane → group (within a 16-group window) for each block of a window
  const int64_t chunks_per_group = group / kChunk, blocks = 16 * chunks_per_group / P;
  std::vector<int32_t> lane_group(16 * blocks);
  for (int64_t j = 0; j < blocks; ++j)
    for (int l = 0; l < 16; ++l) lane_group[16 * j + l] = static_cast<int32_t>((j * P + l * P / 16) / chunks_per_group);
  const int8_t* xqp = xq.data();
  const float *dxp = dx.data(), *xsp = xs.data();
  const uint16_t *sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>()),
                 *op = reinterpret_cast<const uint16_t*>(offset.data_ptr<at::Half>());
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const int32_t* lg = lane_group.data();
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
    for_blocks(r0, r1, B, kMaxBatch, [&](int64_t rb, int64_t re, int64_t b0, int64_t nb) {
      dispatch<A8Rows>(bits, nb, xqp + b0 * Kp, Kp, dxp + b0 * NG, xsp + b0 * NG, cp, sp, op, zero_point, lg,
                       yp + b0 * N, K, N, group, rb, re);
    });
  });
}

}  // namespace


// x: [..., Kx ≤ K] fp32 (see check_layout), codes: [N, K/64 · 8·bits] uint8, scale/offset:
// [N, K/group] fp16 (offset holds zero points z when zero_point: w = (q − z)·s, else
// w = q·s + offset). -> y [..., N]. Leading dims and the narrow x are handled here because on
// SmolLM2-sized layers each torch op around the call (reshape, pad) costs about as much as a
// tenth of the kernel.
torch::Tensor lowbit_gemv(torch::Tensor x, torch::Tensor codes, torch::Tensor scale, torch::Tensor offset,
                          bool zero_point, int64_t group, int64_t bits) {
  return lowbit_call(gemv_f32_into, x, codes, scale, offset, zero_point, group, bits);
}

// Per-group int8 quantisation of x: {xq int8 [B, K], dx fp32 [B, K/group], Σx fp32 [B, K/group]}
// (the kernel's first step, in the natural input order; tests compare it bit for bit with the
// torch reference).
std::vector<torch::Tensor> quantize_activations_int8(torch::Tensor x, int64_t group) {
  TORCH_CHECK(kHasAvx512Vnni, "the int8-activation kernel needs AVX-512 VNNI");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous() && group % 16 == 0 &&
                  x.size(1) % group == 0,
              "x must be contiguous fp32 [B, K] with K a multiple of group (a multiple of 16)");
  const int64_t B = x.size(0), K = x.size(1), NG = K / group;
  auto xq = torch::empty_like(x, x.options().dtype(torch::kChar));
  auto dx = torch::empty({B, NG}, x.options()), xs = torch::empty({B, NG}, x.options());
  quantize_activations_avx512(x.data_ptr<float>(), B, K, group, 1, xq.data_ptr<int8_t>(), K, dx.data_ptr<float>(),
                              xs.data_ptr<float>());
  return {xq, dx, xs};
}

// Same layout and x; activations quantised to int8 per group inside (see the file comment).
torch::Tensor lowbit_gemv_a8(torch::Tensor x, torch::Tensor codes, torch::Tensor scale, torch::Tensor offset,
                             bool zero_point, int64_t group, int64_t bits) {
  TORCH_CHECK(kHasAvx512Vnni, "the int8-activation kernel needs AVX-512 VNNI");
  return lowbit_call(gemv_a8_into, x, codes, scale, offset, zero_point, group, bits);
}

// One row x[K] (K the layout's padded width) into y[N], no tensor allocated: what the decode step
// (decode_step_cpu.cpp) calls for each projection.
void reality_stone::lowbit_gemv_row(const float* x, const torch::Tensor& codes, const torch::Tensor& scale,
                                    const torch::Tensor& offset, bool zero_point, int64_t group, int64_t bits,
                                    bool int8, float* y) {
  TORCH_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, "bits must be 2, 3, 4 or 8");
  const int64_t K = codes.size(1) / (8 * bits) * kChunk;
  check_codes(codes, scale, offset, group, bits, K);
  (int8 ? gemv_a8_into : gemv_f32_into)(x, 1, K, codes, scale, offset, zero_point, group, bits, y);
}

static reality_stone::RegisterBindings bind_lowbit([](pybind11::module_& m) {
  m.def("lowbit_gemv", &lowbit_gemv, "fused 2/3/4/8-bit group-quantised GEMV/small-batch GEMM, fp32 activations");
  m.def("lowbit_gemv_a8", &lowbit_gemv_a8, "the same with int8 activations (AVX-512 VNNI)");
  m.def("quantize_activations_int8", &quantize_activations_int8, "per-group int8 activation quantiser");
  m.def("has_avx512", []() { return kHasAvx512; }, "whether the low-bit fp32 path runs on AVX-512");
  m.def("has_avx512_vnni", []() { return kHasAvx512Vnni; }, "whether the int8-activation path is available");
});
