// Fused seed-basis matmul for CPU: y = x Wᵀ with W stored as seed-basis blocks (C = 8 inputs).
//
// Block (row r, column block j) decodes to 2^(t_r + e[r,j]) · Σ_p q[r,j,p] · U_{s[r,j], p}: t_r is
// the row's exponent, e the block's offset (E bits), and each basis row U_{s,p} ∈ {±1}^8 one of 256
// sign patterns. With the per-call table of every pattern's signed sum of each 8-input block of x
//     v[b, j, k] = Σ_c sign_k(c) · x[b, 8j + c]
// the block contributes 2^t_r · Σ_p (q_p << e) · v[b, j, pattern[s, p]] — P table lookups, never W,
// and the row's scale 2^t_r once per row at the end (the integer code q << e is exact in fp32).
//
// Compute layout (seedbasis.py: `seedbasis_layout`) — the stored bits and nothing else: one record
// of S + E + P·Q bytes per 8 output rows × one column block, records row-group-major
// (group g, block j at (g·nb + j)·R), 16 zero bytes after the last. In a record, all little-endian
// bit streams: the 8 rows' seeds (S bits each), their exponent offsets (E bits), then their codes
// row-major (row r, coefficient p at bits (r·P + p)·Q, stored as q + 2^(Q-1)).
//
// Two loops:
//  * batch 1 — lanes are coefficients: one vector holds the P codes of 8/PL rows (PL = 4 or 8), and
//    z[s] = (v[pattern[s, p]])_p is either expanded for every seed per column block (an L1/L2
//    table, when there are more rows than seeds to repay it) or gathered per row. Threads split the
//    column blocks (private accumulators, summed at the end).
//  * batch ≥ 2 — lanes are 8 batch rows (16 — two groups — with AVX-512 from batch 9): v is laid
//    out [j][pattern][batch group][8], and a block's P codes multiply whole rows of it. Threads
//    split the output rows; columns go in tiles whose v stays in L2.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <cstring>
#include <memory>
#include <vector>

namespace {
constexpr int kPatterns = 256;
constexpr int kLanes = 8;
constexpr int64_t kTile = 16;  // column blocks per tile of the record order

// Record (row group g, column block j): tile-major — tile t = j / 16, then row group, then block
// (a tile of Jt ≤ 16 blocks holds G·Jt records), so each loop below streams its records in order.
inline const uint8_t* record_at(const uint8_t* rec, int64_t g, int64_t j, int64_t G, int64_t nb, int R) {
  const int64_t t0 = j / kTile * kTile, jt = std::min<int64_t>(kTile, nb - t0);
  return rec + (t0 * G + g * jt + (j - t0)) * R;
}

// 8 `w`-bit fields (w ≤ 16) of a little-endian bit stream, one per 32-bit lane. Lanes 0-3 read
// the 16 bytes from byte `lo` of the stream, lanes 4-7 those from byte `hi` (pshufb indexes within
// a 128-bit half); each lane picks the 3 bytes holding its field (`bit`: its offset from its
// half's window), shifts and masks. Lanes with bit < 0 are 0.
struct Field {
  __m256i ctl, shift, mask;
  int lo = 0, hi = 0;
  Field() = default;
  Field(const int (&bit)[8], int w, int lo_byte, int hi_byte) : lo(lo_byte), hi(hi_byte) {
    alignas(32) int8_t c[32];
    alignas(32) int32_t s[8];
    for (int l = 0; l < 8; ++l) {
      s[l] = bit[l] < 0 ? 0 : bit[l] & 7;
      for (int k = 0; k < 4; ++k) {
        const int b = bit[l] < 0 ? 16 : (bit[l] >> 3) + k;
        c[4 * l + k] = static_cast<int8_t>(b < 16 ? b : -128);  // -128: pshufb writes 0
      }
    }
    ctl = _mm256_load_si256(reinterpret_cast<const __m256i*>(c));
    shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(s));
    mask = _mm256_set1_epi32((1 << w) - 1);
  }
  // the 8 fields of stream bits [first + l·step·w, +w), l = 0..7 (each half's window at its first field)
  // (one window for all 8 when their bytes fit in 16 from the first: one broadcast load)
  static Field strided(int first, int step, int w) {
    int bit[8];
    const int lo = first >> 3, last_byte = (first + 7 * step * w + w - 1) >> 3;
    const int hi = last_byte - lo < 16 ? lo : (first + 4 * step * w) >> 3;
    for (int l = 0; l < 8; ++l) bit[l] = first + l * step * w - 8 * (l < 4 ? lo : hi);
    return Field(bit, w, lo, hi);
  }
  __m256i operator()(const uint8_t* f) const {
    const __m256i b = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(f + lo))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(f + hi)), 1);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(b, ctl), shift), mask);
  }
  // the same when lo == hi (one window: a broadcast load)
  __m256i one(const uint8_t* f) const {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(f + lo)));
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(b, ctl), shift), mask);
  }
};

struct Format {
  int S, E, P, Q, R;  // bits of seed / exponent offset / code, coefficients, record bytes
};

// ------------------------------------------------------------------ batch ≥ 2: lanes = batch rows

// One record, ready for the batch loop: for code (row r, coefficient p) at index p·8 + r, its
// integer code q << e as a float with the sign of its pattern folded in, and the offset (floats) of
// its pattern's half-table row in the tile's v.
struct Record {
  alignas(32) float q[8 * 8];
  alignas(32) int32_t off[8 * 8];
};

struct RecordReader {
  Field seed, exp, code[8];
  int P, pat_words;
  __m256i half;
  explicit RecordReader(const Format& f) : P(f.P) {
    seed = Field::strided(0, 1, f.S);
    exp = Field::strided(8 * f.S, 1, f.E ? f.E : 1);
    // coefficient p of the 8 rows: stream bits 8(S + E) + (r·P + p)·Q
    for (int p = 0; p < P; ++p) code[p] = Field::strided(8 * (f.S + f.E) + p * f.Q, P, f.Q);
    half = _mm256_set1_epi32(1 << (f.Q - 1));
    pat_words = (P + 3) / 4;
  }
  // pat32: the pattern table as int32 words, [2^S][pat_words] (4 ids per word, padded with 0)
  // pat32: [2^S][pat_words] int32, 4 folded pattern ids per word; offsets in floats: (tile_row +
  // half id) << log2_stride
  void read(const uint8_t* rec, const Format& f, const int32_t* pat32, int32_t tile_row, int log2_stride,
            Record& o) const {
    const __m256i s = seed.one(rec);  // 8 fields of ≤ 16 bits: one window
    const __m256i e = f.E ? exp.one(rec) : _mm256_setzero_si256();
    const __m256i idx = _mm256_mullo_epi32(s, _mm256_set1_epi32(pat_words));
    const __m256i half_id = _mm256_set1_epi32(0x7F), top = _mm256_set1_epi32(0x80);
    const __m128i shift = _mm_cvtsi32_si128(log2_stride);
    __m256i ids = _mm256_setzero_si256();
    for (int p = 0; p < P; ++p) {
      if (p % 4 == 0) ids = _mm256_i32gather_epi32(pat32 + p / 4, idx, 4);
      // folded ids (run_batch): bit 7 = negate, bits 0-6 = the half-table pattern
      const __m256i id = _mm256_srli_epi32(ids, 8 * (p % 4));
      const __m256i neg = _mm256_and_si256(id, top);
      _mm256_store_si256(reinterpret_cast<__m256i*>(o.off + 8 * p),
                         _mm256_sll_epi32(_mm256_add_epi32(_mm256_and_si256(id, half_id), _mm256_set1_epi32(tile_row)),
                                          shift));
      const __m256i q = _mm256_sllv_epi32(_mm256_sub_epi32(code[p](rec), half), e);
      const __m256 qf = _mm256_cvtepi32_ps(q);
      _mm256_store_ps(o.q + 8 * p, _mm256_xor_ps(qf, _mm256_castsi256_ps(_mm256_slli_epi32(neg, 24))));
    }
  }
};

// Patterns k and 255 − k have opposite signs everywhere, so v[255 − k] = −v[k]: the batch path
// keeps the 128 patterns with bit 7 clear (half the table, so a column block's v for 64 batch
// rows, 32 KB, stays in L1) and folds the sign into the code.
constexpr int kHalf = 128;

// Row group g's records of column blocks [j0, j1) into buf[0 .. j1 − j0), offsets into the tile's v.
inline void read_records(const RecordReader& rd, const uint8_t* rec, const Format& f, const int32_t* pat32, int64_t nb,
                         int64_t G, int64_t g, int64_t j0, int64_t j1, int log2_stride, Record* buf) {
  for (int64_t j = j0; j < j1; ++j)
    rd.read(record_at(rec, g, j, G, nb, f.R), f, pat32, static_cast<int32_t>((j - j0) * kHalf), log2_stride,
            buf[j - j0]);
}

// The batch loops' record reader for formats the int8 kernel reads, when the pattern table is
// GF(2)-linear: ids by gf2p8affineqb, codes by byte permutes, a record pair per step (defined with
// the int8 kernel, whose decoding it shares). nullptr: RecordReader's gather.
struct GfReader;
void read_records_gf(const GfReader& gr, const uint8_t* rec, const Format& f, int64_t nb, int64_t G, int64_t g,
                     int64_t j0, int64_t j1, int log2_stride, Record* buf);

// Row group g's records of column blocks [j0, j1) into buf by whichever reader applies.
inline void read_group(const GfReader* gr, const RecordReader& rd, const uint8_t* rec, const Format& f,
                       const int32_t* pat32, int64_t nb, int64_t G, int64_t g, int64_t j0, int64_t j1, int log2_stride,
                       Record* buf) {
  if (gr) read_records_gf(*gr, rec, f, nb, G, g, j0, j1, log2_stride, buf);
  else read_records(rd, rec, f, pat32, nb, G, g, j0, j1, log2_stride, buf);
}

// v_tile: [J][128][n_bg][8] fp32 for column blocks [j0, j0 + J); acc: [Np][n_bg][8]. Row groups
// [g0, g1). Register block: RB rows × BB batch groups (RB·BB = 8 independent accumulators, so the
// P dependent FMAs a block adds to each overlap); a group's records are read once into `buf`.
template <int P, int RB, int BB>
void batch_rows(const float* vt, const int32_t* pat32, const uint8_t* rec, const Format& f, const RecordReader& rd,
                const GfReader* gr, int64_t nb, int64_t G, int64_t n_bg, int64_t g0, int64_t g1, int64_t j0,
                int64_t j1, float* acc, Record* buf) {
  const int log2_stride = __builtin_ctzll(n_bg * kLanes);  // floats per pattern (n_bg a power of two)
  for (int64_t g = g0; g < g1; ++g) {
    read_group(gr, rd, rec, f, pat32, nb, G, g, j0, j1, log2_stride, buf);
    for (int r0 = 0; r0 < 8; r0 += RB) {
      for (int64_t bg0 = 0; bg0 < n_bg; bg0 += BB) {
        __m256 a[RB][BB];
        float* ar = acc + ((g * 8 + r0) * n_bg + bg0) * kLanes;
#pragma GCC unroll 8
        for (int rr = 0; rr < RB; ++rr)
#pragma GCC unroll 8
          for (int bb = 0; bb < BB; ++bb) a[rr][bb] = _mm256_setzero_ps();  // a tile's partial sum (see below)
        const float* vg = vt + bg0 * kLanes;
        for (int64_t j = j0; j < j1; ++j) {
          const Record& r8 = buf[j - j0];
#pragma GCC unroll 8
          for (int rr = 0; rr < RB; ++rr) {
#pragma GCC unroll 8
            for (int p = 0; p < P; ++p) {
              const __m256 q = _mm256_broadcast_ss(r8.q + 8 * p + r0 + rr);
              const float* vp = vg + r8.off[8 * p + r0 + rr];
#pragma GCC unroll 8
              for (int bb = 0; bb < BB; ++bb) a[rr][bb] = _mm256_fmadd_ps(q, _mm256_load_ps(vp + bb * kLanes), a[rr][bb]);
            }
          }
        }
#pragma GCC unroll 8
        for (int rr = 0; rr < RB; ++rr)
#pragma GCC unroll 8
          for (int bb = 0; bb < BB; ++bb) {
            // summed per tile, then across tiles: a row's error grows with √(tile) + √(tiles), not
            // √(all of its P·nb products) as one running sum would (that was 3× the reference's)
            float* o = ar + (rr * n_bg + bb) * kLanes;
            _mm256_store_ps(o, _mm256_add_ps(_mm256_load_ps(o), a[rr][bb]));
          }
      }
    }
  }
}

// out[k][lane] (k < 128, stride floats apart) = Σ_c sign_k(c) x[8·bg + lane, 8j + c], as
// lo[k & 15] + hi[k >> 4]: sums of 4 signed inputs each, so every entry carries the rounding of
// 8 adds at most, as a dot product does
void sign_sums_lanes(const float* x, int64_t B, int64_t K, int64_t bg, int64_t j, int64_t stride, float* out) {
  alignas(32) float xc[8][8] = {};  // [c][lane]
  for (int l = 0; l < kLanes; ++l) {
    const int64_t b = bg * kLanes + l;
    if (b >= B) continue;
    for (int c = 0; c < 8; ++c) {
      const int64_t i = 8 * j + c;
      xc[c][l] = i < K ? x[b * K + i] : 0.f;
    }
  }
  __m256 lo[16], hi[8];
  for (int k = 0; k < 16; ++k) {
    __m256 sl = _mm256_setzero_ps(), sh = _mm256_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      const __m256 a = _mm256_load_ps(xc[c]), b = _mm256_load_ps(xc[c + 4]);
      sl = (k >> c) & 1 ? _mm256_add_ps(sl, a) : _mm256_sub_ps(sl, a);
      sh = (k >> c) & 1 ? _mm256_add_ps(sh, b) : _mm256_sub_ps(sh, b);
    }
    lo[k] = sl;
    if (k < 8) hi[k] = sh;
  }
  for (int k = 0; k < kHalf; ++k) _mm256_store_ps(out + k * stride, _mm256_add_ps(lo[k & 15], hi[k >> 4]));
}

// n zeroed floats, 32-byte aligned, owned by `store`
float* scratch_zeroed(std::vector<float>& store, int64_t n) {
  store.assign(n + 8, 0.f);
  const auto addr = reinterpret_cast<uintptr_t>(store.data());
  return store.data() + ((32 - addr % 32) % 32) / 4;
}

// A grow-only 64-byte-aligned scratch buffer per thread: per-call allocations of the v tiles
// were fresh pages each time (page faults and zeroing cost up to a third of a call).
float* scratch(int64_t n) {
  thread_local std::unique_ptr<float, void (*)(void*)> buf(nullptr, std::free);
  thread_local int64_t size = 0;
  if (n > size) {
    buf.reset(static_cast<float*>(std::aligned_alloc(64, ((n * 4 + 63) / 64) * 64)));
    TORCH_CHECK(buf, "out of memory for the seed-basis kernel's scratch");
    size = n;
  }
  return buf.get();
}

// ------------------------------------------------------------------ batch 1: lanes = coefficients

// One column block's row of the batch-1 tile buffer: v (257 entries: entry 256 is 0, the padding
// coefficients' pattern, so an Inf in x never meets a zero code), then its two halves lo[16] and
// hi[16] (v[k] = lo[k & 15] + hi[k >> 4]: the sums of inputs 0-3 and 4-7) — each 16 entries, one
// AVX-512 register, so a lookup of v is two in-register permutes and an add instead of a gather.
constexpr int64_t kRow = kPatterns + 1 + 32;
constexpr int64_t kLo = kPatterns + 1, kHi = kLo + 16;

// one batch row's sign sums for column block j into out[kRow] (v only when `full`)
void sign_sums_row(const float* x, int64_t K, int64_t j, float* out, bool full = true) {
  float xc[8];
  for (int c = 0; c < 8; ++c) xc[c] = 8 * j + c < K ? x[8 * j + c] : 0.f;
  float lo[16], hi[16];
  for (int k = 0; k < 16; ++k) {
    float sl = 0.f, sh = 0.f;
    for (int c = 0; c < 4; ++c) {
      sl += (k >> c) & 1 ? xc[c] : -xc[c];
      sh += (k >> c) & 1 ? xc[c + 4] : -xc[c + 4];
    }
    out[kLo + k] = lo[k] = sl;
    out[kHi + k] = hi[k] = sh;
  }
  if (!full) return;
  for (int k = 0; k < kPatterns; ++k) out[k] = lo[k & 15] + hi[k >> 4];
  out[kPatterns] = 0.f;
}

// The codes of 8 rows as PL vectors of 8 / PL rows × PL coefficients (lanes p ≥ P are 0).
template <int PL>
struct CoeffReader {
  Field seed, exp, code[PL];
  int code_byte[PL];
  __m256i half, valid[PL], lane_row[PL];
  explicit CoeffReader(const Format& f) {
    seed = Field::strided(0, 1, f.S);
    exp = Field::strided(8 * f.S, 1, f.E ? f.E : 1);
    constexpr int RV = 8 / PL;  // rows per vector
    for (int v = 0; v < PL; ++v) {
      const int base = 8 * (f.S + f.E);  // the codes' first bit
      code_byte[v] = (base + RV * v * f.P * f.Q) >> 3;
      int bit[8];
      alignas(32) int32_t ok[8], rows[8];
      for (int l = 0; l < 8; ++l) {
        const int r = RV * v + l / PL, p = l % PL;
        ok[l] = p < f.P ? -1 : 0;
        bit[l] = p < f.P ? base + (r * f.P + p) * f.Q - 8 * code_byte[v] : -1;
        rows[l] = r;
      }
      code[v] = Field(bit, f.Q, code_byte[v], code_byte[v]);
      valid[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(ok));
      lane_row[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(rows));
    }
    half = _mm256_set1_epi32(1 << (f.Q - 1));
  }
};

// z rows of the 8 / PL rows of vector v: from the expanded table z[s·PL + p], or gathered from v
// through the pattern table (int32 [2^S, PL], padding → 256)
template <int PL, bool expanded>
inline __m256 z_rows(const uint32_t* seed, int v, const float* z, const float* vj, const int32_t* pat) {
  if constexpr (PL == 8) {
    const int64_t s = seed[v];
    if constexpr (expanded) return _mm256_loadu_ps(z + 8 * s);
    return _mm256_i32gather_ps(vj, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pat + 8 * s)), 4);
  } else {
    const int64_t s0 = seed[2 * v], s1 = seed[2 * v + 1];
    if constexpr (expanded)
      return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(z + 4 * s0)), _mm_loadu_ps(z + 4 * s1), 1);
    const __m128 a = _mm_i32gather_ps(vj, _mm_loadu_si128(reinterpret_cast<const __m128i*>(pat + 4 * s0)), 4);
    const __m128 b = _mm_i32gather_ps(vj, _mm_loadu_si128(reinterpret_cast<const __m128i*>(pat + 4 * s1)), 4);
    return _mm256_insertf128_ps(_mm256_castps128_ps256(a), b, 1);
  }
}

// The batch-1 loops' per-thread tile buffers — sign-sum rows (tile × kRow floats), then z (tile ×
// z_stride) — from the thread's grow-only scratch: per-call vectors were up to 256 KB of fresh,
// zeroed pages each call (a tenth of a SmolLM2-sized call).
float* tile_scratch(int64_t tile, int64_t z_stride) { return scratch(tile * (kRow + z_stride)); }

// One tile's prologue, shared by both batch-1 loops: each column block's sign sums (vbuf, one
// row of kRow per block; v itself only when `full`) and, when z != nullptr, their products per
// seed and coefficient slot (z, `z_stride` per block) filled by `expand(vj, zj)` — a plain copy,
// or AVX-512 permutes of lo/hi.
template <typename Expand>
void tile_prologue(const float* x, int64_t K, int64_t t0, int64_t t1, int64_t z_stride, float* vbuf, float* z,
                   bool full, const Expand& expand) {
  for (int64_t j = t0; j < t1; ++j) {
    float* vj = vbuf + (j - t0) * kRow;
    sign_sums_row(x, K, j, vj, full);
    if (z != nullptr) expand(vj, z + (j - t0) * z_stride);
  }
}

struct ExpandByCopy {
  const int32_t* pat;
  int64_t n;  // n_seeds · PL
  void operator()(const float* vj, float* zj) const {
    for (int64_t k = 0; k < n; ++k) zj[k] = vj[pat[k]];
  }
};

// One weight of a batch-1 call: its records, row groups and accumulator [8G · PL]. Several
// weights that read the same x (a block's q/k/v, gate/up) share one call: the sign sums and z,
// the expensive part for wide layers, are built once per column tile for all of them.
struct Part {
  const uint8_t* rec;
  int64_t G;
  float* acc;
};

// column blocks [j0, j1) of all row groups of every part into its acc (one batch row)
template <int PL, bool expand>
void single_row(const float* x, int64_t K, const int32_t* pat, int64_t n_seeds, const Part* parts, int n_parts,
                const Format& f, const CoeffReader<PL>& rd, int64_t nb, int64_t j0, int64_t j1) {
  const int64_t tile = kTile;  // the record order's tiles (z: 256 KB at S = 10, P ≤ 4)
  float* vbuf = tile_scratch(tile, expand ? n_seeds * PL : 0);
  float* z = vbuf + tile * kRow;
  alignas(32) uint32_t seed[8];
  for (int64_t t0 = j0; t0 < j1; t0 += tile) {
    const int64_t t1 = std::min(j1, t0 + tile);
    tile_prologue(x, K, t0, t1, n_seeds * PL, vbuf, expand ? z : nullptr, true, ExpandByCopy{pat, n_seeds * PL});
    for (const Part* part = parts; part < parts + n_parts; ++part)
    for (int64_t g = 0, G = part->G; g < G; ++g) {
      const uint8_t* rec = part->rec;
      float* acc = part->acc;
      __m256 a[PL];
      for (int v = 0; v < PL; ++v) a[v] = _mm256_setzero_ps();
      for (int64_t j = t0; j < t1; ++j) {
        const uint8_t* r = record_at(rec, g, j, G, nb, f.R);
        _mm256_store_si256(reinterpret_cast<__m256i*>(seed), rd.seed.one(r));
        const __m256i e = f.E ? rd.exp.one(r) : _mm256_setzero_si256();
        const float* vj = vbuf + (j - t0) * kRow;
        const float* zj = expand ? z + (j - t0) * n_seeds * PL : nullptr;
        for (int v = 0; v < PL; ++v) {
          const __m256i q = _mm256_and_si256(_mm256_sub_epi32(rd.code[v].one(r), rd.half), rd.valid[v]);
          const __m256 qe = _mm256_cvtepi32_ps(_mm256_sllv_epi32(q, _mm256_permutevar8x32_epi32(e, rd.lane_row[v])));
          a[v] = _mm256_fmadd_ps(qe, z_rows<PL, expand>(seed, v, zj, vj, pat), a[v]);
        }
      }
      float* ag = acc + g * 8 * PL;
      for (int v = 0; v < PL; ++v) _mm256_storeu_ps(ag + 8 * v, _mm256_add_ps(_mm256_loadu_ps(ag + 8 * v), a[v]));
    }
  }
}

// ---------------------------------------------------------- batch 1, AVX-512: 4 rows × 4 codes
// The same loop for P ≤ 4 with 16-lane vectors: one code window, shuffle, shift, mask, sub, shift
// by e, convert and FMA serve 4 rows instead of 2 (the AVX2 loop spends most of its µops there).
#define RS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// REALITY_STONE_NO_AVX512=1 forces the AVX2 loop (so tests cover both on AVX-512 machines)
const bool kSeedbasisAvx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                              __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                              std::getenv("REALITY_STONE_NO_AVX512") == nullptr;

struct Codes512 {
  __m512i ctl[2], shift[2], rows[2], mask, half;
  int window[2];
  __mmask16 valid;
};

RS_AVX512 Codes512 codes512(const Format& f) {
  Codes512 c;
  const int base = 8 * (f.S + f.E);
  c.valid = 0;
  for (int h = 0; h < 2; ++h) {  // rows 4h … 4h + 3
    c.window[h] = (base + 4 * h * f.P * f.Q) >> 3;
    alignas(64) int8_t ctl[64];
    alignas(64) int32_t sh[16], rows[16];
    for (int l = 0; l < 16; ++l) {
      const int r = 4 * h + l / 4, p = l % 4;
      const int bit = p < f.P ? base + (r * f.P + p) * f.Q - 8 * c.window[h] : -1;
      sh[l] = bit < 0 ? 0 : bit & 7;
      rows[l] = r;
      for (int k = 0; k < 4; ++k) {
        const int b = bit < 0 ? 16 : (bit >> 3) + k;
        ctl[4 * l + k] = static_cast<int8_t>(b < 16 ? b : -128);
      }
      if (h == 0 && p < f.P) c.valid |= static_cast<__mmask16>(1u << l);
    }
    c.ctl[h] = _mm512_load_si512(ctl);
    c.shift[h] = _mm512_load_si512(sh);
    c.rows[h] = _mm512_load_si512(rows);
  }
  c.mask = _mm512_set1_epi32((1 << f.Q) - 1);
  c.half = _mm512_set1_epi32(1 << (f.Q - 1));
  return c;
}

// v at 16 pattern ids (padding: 256 → 0) from the block's lo/hi registers: the same float sum
// sign_sums_row forms for v, so the result is bit-identical to reading v
RS_AVX512 inline __m512 lookup512(__m512i ids, __m512 lo, __m512 hi, __mmask16 valid) {
  return _mm512_maskz_add_ps(valid, _mm512_permutexvar_ps(ids, lo),  // permutes read the low 4 bits
                             _mm512_permutexvar_ps(_mm512_srli_epi32(ids, 4), hi));
}

struct ExpandByPermute512 {
  const int32_t* pat;
  int64_t n;  // n_seeds · 4: a multiple of 16 from S = 2
  RS_AVX512 void operator()(const float* vj, float* zj) const {
    const __m512 lo = _mm512_loadu_ps(vj + kLo), hi = _mm512_loadu_ps(vj + kHi);
    const __m512i pad = _mm512_set1_epi32(kPatterns);
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
      const __m512i ids = _mm512_loadu_si512(pat + k);
      _mm512_storeu_ps(zj + k, lookup512(ids, lo, hi, _mm512_cmplt_epu32_mask(ids, pad)));
    }
    for (; k < n; ++k) zj[k] = pat[k] < kPatterns ? vj[kLo + (pat[k] & 15)] + vj[kHi + (pat[k] >> 4)] : 0.f;
  }
};

template <bool expand>
RS_AVX512 void single_row_avx512(const float* x, int64_t K, const int32_t* pat, int64_t n_seeds, const Part* parts,
                                 int n_parts, const Format& f, const CoeffReader<4>& rd, int64_t nb, int64_t j0,
                                 int64_t j1) {
  const Codes512 c = codes512(f);
  const int64_t tile = kTile;
  float* vbuf = tile_scratch(tile, expand ? n_seeds * 4 : 0);
  float* z = vbuf + tile * kRow;
  alignas(32) uint32_t seed[8];
  for (int64_t t0 = j0; t0 < j1; t0 += tile) {
    const int64_t t1 = std::min(j1, t0 + tile);
    tile_prologue(x, K, t0, t1, n_seeds * 4, vbuf, expand ? z : nullptr, false, ExpandByPermute512{pat, n_seeds * 4});
    for (const Part* part = parts; part < parts + n_parts; ++part)
    for (int64_t g = 0, G = part->G; g < G; ++g) {
      const uint8_t* rec = part->rec;
      float* acc = part->acc;
      __m512 a[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t j = t0; j < t1; ++j) {
        const uint8_t* r = record_at(rec, g, j, G, nb, f.R);
        _mm_prefetch(reinterpret_cast<const char*>(r) + 1024, _MM_HINT_T0);  // the stream, ~1 µs ahead
        _mm256_store_si256(reinterpret_cast<__m256i*>(seed), rd.seed.one(r));
        const __m512i e = _mm512_castsi256_si512(f.E ? rd.exp.one(r) : _mm256_setzero_si256());
        const float* vj = vbuf + (j - t0) * kRow;
        const float* zj = expand ? z + (j - t0) * n_seeds * 4 : nullptr;
        __m512 lo, hi;
        if constexpr (!expand) {
          lo = _mm512_loadu_ps(vj + kLo);
          hi = _mm512_loadu_ps(vj + kHi);
        }
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + c.window[h])));
          __m512i q = _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(b, c.ctl[h]), c.shift[h]), c.mask);
          q = _mm512_maskz_sub_epi32(c.valid, q, c.half);
          const __m512 qe = _mm512_cvtepi32_ps(_mm512_sllv_epi32(q, _mm512_permutexvar_epi32(c.rows[h], e)));
          const uint32_t* sh = seed + 4 * h;
          __m512 zv;
          if constexpr (expand) {
            zv = _mm512_castps128_ps512(_mm_loadu_ps(zj + 4 * sh[0]));
            zv = _mm512_insertf32x4(zv, _mm_loadu_ps(zj + 4 * sh[1]), 1);
            zv = _mm512_insertf32x4(zv, _mm_loadu_ps(zj + 4 * sh[2]), 2);
            zv = _mm512_insertf32x4(zv, _mm_loadu_ps(zj + 4 * sh[3]), 3);
          } else {
            __m512i idx = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pat + 4 * sh[0])));
            idx = _mm512_inserti32x4(idx, _mm_loadu_si128(reinterpret_cast<const __m128i*>(pat + 4 * sh[1])), 1);
            idx = _mm512_inserti32x4(idx, _mm_loadu_si128(reinterpret_cast<const __m128i*>(pat + 4 * sh[2])), 2);
            idx = _mm512_inserti32x4(idx, _mm_loadu_si128(reinterpret_cast<const __m128i*>(pat + 4 * sh[3])), 3);
            zv = lookup512(idx, lo, hi, c.valid);  // padding lanes (ids 256) are the invalid ones
          }
          a[h] = _mm512_fmadd_ps(qe, zv, a[h]);
        }
      }
      float* ag = acc + g * 8 * 4;
      _mm512_storeu_ps(ag, _mm512_add_ps(_mm512_loadu_ps(ag), a[0]));
      _mm512_storeu_ps(ag + 16, _mm512_add_ps(_mm512_loadu_ps(ag + 16), a[1]));
    }
  }
}

// batch_rows with 16-lane vectors (n_bg ≥ 2): a zmm holds batch groups 2z and 2z + 1, adjacent in
// v and acc, so one broadcast code multiplies 16 batch rows per FMA and v load — half the FMAs and
// v loads of the 8-lane loop. Register block: RB rows × BZ zmm (RB·BZ = 8 accumulators). A body of
// its own, as single_row_avx512 beside single_row: GCC gives a template one target for all its
// instantiations, and the 8-lane loop must stay free of AVX-512 encodings for AVX2-only CPUs.
template <int P, int RB, int BZ>
RS_AVX512 void batch_rows_avx512(const float* vt, const int32_t* pat32, const uint8_t* rec, const Format& f,
                                 const RecordReader& rd, const GfReader* gr, int64_t nb, int64_t G, int64_t n_bg,
                                 int64_t g0, int64_t g1, int64_t j0, int64_t j1, float* acc, Record* buf) {
  const int log2_stride = __builtin_ctzll(n_bg * kLanes);
  for (int64_t g = g0; g < g1; ++g) {
    read_group(gr, rd, rec, f, pat32, nb, G, g, j0, j1, log2_stride, buf);
    for (int r0 = 0; r0 < 8; r0 += RB) {
      for (int64_t bg0 = 0; bg0 < n_bg; bg0 += 2 * BZ) {
        __m512 a[RB][BZ];
        float* ar = acc + ((g * 8 + r0) * n_bg + bg0) * kLanes;
#pragma GCC unroll 8
        for (int rr = 0; rr < RB; ++rr)
#pragma GCC unroll 8
          for (int bz = 0; bz < BZ; ++bz) a[rr][bz] = _mm512_setzero_ps();
        const float* vg = vt + bg0 * kLanes;
        for (int64_t j = j0; j < j1; ++j) {
          const Record& r8 = buf[j - j0];
#pragma GCC unroll 8
          for (int rr = 0; rr < RB; ++rr) {
#pragma GCC unroll 8
            for (int p = 0; p < P; ++p) {
              const __m512 q = _mm512_set1_ps(r8.q[8 * p + r0 + rr]);
              const float* vp = vg + r8.off[8 * p + r0 + rr];
#pragma GCC unroll 8
              for (int bz = 0; bz < BZ; ++bz)
                a[rr][bz] = _mm512_fmadd_ps(q, _mm512_loadu_ps(vp + bz * 2 * kLanes), a[rr][bz]);
            }
          }
        }
#pragma GCC unroll 8
        for (int rr = 0; rr < RB; ++rr)
#pragma GCC unroll 8
          for (int bz = 0; bz < BZ; ++bz) {
            float* o = ar + (rr * n_bg + 2 * bz) * kLanes;  // per tile, as batch_rows
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[rr][bz]));
          }
      }
    }
  }
}

template <int P, int RB, int BB>
void run_batch(const float* x, int64_t B, int64_t K, const int32_t* pat32, const GfReader* gr, const uint8_t* rec,
               const Format& f, int64_t nb, int64_t n_bg, int64_t G, float* acc) {
  const RecordReader rd(f);
  // column tiles whose v (4 KB per column block and batch group) fits L1: 8 blocks at batch 8, 1 at 64
  const int64_t tile = std::clamp<int64_t>(8 / n_bg, 1, 64);
  const int64_t stride = n_bg * kLanes;
  // threads split the row groups; each builds the v tiles it needs (a few µs per tile, and no
  // [nb, 128, n_bg, 8] table of up to tens of MB per call)
  at::parallel_for(0, G, 1, [&](int64_t g0, int64_t g1) {
    std::vector<Record> buf(tile);
    float* vt = scratch(tile * kHalf * stride);
    for (int64_t j0 = 0; j0 < nb; j0 += tile) {
      const int64_t j1 = std::min(nb, j0 + tile);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t bg = 0; bg < n_bg; ++bg)
          sign_sums_lanes(x, B, K, bg, j, stride, vt + (j - j0) * kHalf * stride + bg * kLanes);
      if (BB >= 2 && kSeedbasisAvx512)  // RB·BB/2 zmm accumulators: twice the rows per register block
        batch_rows_avx512<P, std::min(8, 2 * RB), std::max(1, BB / 2)>(vt, pat32, rec, f, rd, gr, nb, G, n_bg, g0, g1,
                                                                       j0, j1, acc, buf.data());
      else
        batch_rows<P, RB, BB>(vt, pat32, rec, f, rd, gr, nb, G, n_bg, g0, g1, j0, j1, acc, buf.data());
    }
  });
}

template <int P>
void run_batch(const float* x, int64_t B, int64_t K, const int32_t* pat32, const GfReader* gr, const uint8_t* rec,
               const Format& f, int64_t nb, int64_t n_bg, int64_t G, float* acc) {
  // n_bg is a power of two (padded by the caller)
  if (n_bg == 1) run_batch<P, 8, 1>(x, B, K, pat32, gr, rec, f, nb, n_bg, G, acc);
  else if (n_bg == 2) run_batch<P, 4, 2>(x, B, K, pat32, gr, rec, f, nb, n_bg, G, acc);
  else if (n_bg == 4) run_batch<P, 2, 4>(x, B, K, pat32, gr, rec, f, nb, n_bg, G, acc);
  else run_batch<P, 1, 8>(x, B, K, pat32, gr, rec, f, nb, n_bg, G, acc);
}

// ------------------------------------------------- int8 activations (AVX-512 VNNI + VBMI)
// Lanes are the 16 (row, block) pairs of two adjacent records — 8 rows × column blocks j, j + 1 —
// and each lane's P ≤ 4 codes are the 4 bytes of one int32: a lane's whole block sum
// Σ_p (q_p << e) · z[s, p] is one VNNI dot product (vpdpbusd) once z is int8. Per 8 column blocks
// (64 inputs, one activation scale) and batch row, v is rounded to int8 (scale max|v| / 127) and
// expanded into z tables [block][seed] of 4 bytes (z + 128, the unsigned operand); one vpgatherdd
// fetches the 16 lanes' z. The signed codes come from the record in 3 byte permutes and a table:
// vpermb brings each lane pair's bytes into its qword, vpmultishiftqb picks every code (and its
// row's exponent offset) at its bit offset, and a 64-entry table maps (code, e) to (q − half) << e.
// Σ (z + 128)·qe − 128·Σ qe = Σ z·qe: the second sum is one more vpdpbusd per record pair. Exact
// integer arithmetic per 8-block group; the float rounding is that of the scale products.
#define RS_A8 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")))
const bool kSeedbasisA8 = kSeedbasisAvx512 && __builtin_cpu_supports("avx512vnni") &&
                          __builtin_cpu_supports("avx512vbmi");
constexpr int64_t kA8Group = 8;  // column blocks per activation scale (64 inputs: the int kernels' group 64)
// row groups ahead whose records a8_rows prefetches (measured at 4096², batch 1, one thread:
// none 1.06 ms, 1 ahead 1.01, 2 0.98, 4 0.85, 8 0.84)
constexpr int64_t kPrefetchGroups = 8;

// formats the int8 path reads: ≤ 4 codes (one int32 lane), code and offset bits one table index
// (≤ 6 bits), |(q − half) << e| ≤ 127 (int8), two records in one 64-byte load
bool a8_format_ok(const Format& f) {
  return f.P <= 4 && f.Q + f.E <= 6 && ((1 << (f.Q - 1)) << ((1 << f.E) - 1)) <= 127 && 2 * f.R <= 64;
}

struct A8Ctl {
  __m512i seed_ctl, seed_shift, seed_mask, seed_block, code_ctl, code_at, exp_at, table, low;
  __mmask64 valid, valid_lo;  // code bytes of real coefficients (both records / the first only)
  __mmask64 load2, load1;     // the bytes of two records / one
};

// `groups`: the second record of a pair is the next row group's at byte 32 of the loaded vector
// (a8_rows_gf) — else the next column block's, right after the first (a8_rows, a8_batch_rows)
RS_A8 A8Ctl a8_ctl(const Format& f, bool groups = false) {
  A8Ctl c;
  alignas(64) uint8_t sc[64], cc[64], cm[64], em[64], tb[64];
  alignas(64) int32_t ssh[16], blk[16];
  uint64_t valid = 0;
  const int second = groups ? 32 : f.R;  // the second record's byte in the loaded vector
  for (int l = 0; l < 16; ++l) {  // lane l: row l % 8 of the pair's record l / 8
    const int bit = l / 8 * 8 * second + l % 8 * f.S;
    for (int k = 0; k < 4; ++k) sc[4 * l + k] = static_cast<uint8_t>(std::min(63, (bit >> 3) + k));
    ssh[l] = bit & 7;
    blk[l] = groups ? 0 : l / 8 << f.S;  // block j + 1's z table follows block j's
  }
  for (int q = 0; q < 8; ++q) {  // qword q: lanes 2q, 2q + 1 — rows r, r + 1 of one record
    const int b = q / 4, r = 2 * q % 8;
    const int cbit = b * 8 * second + 8 * (f.S + f.E) + r * f.P * f.Q, ebit = b * 8 * second + 8 * f.S + r * f.E;
    // one byte permute serves both fields: the qword holds the two rows' code bytes, then their
    // exponent bytes (≤ 6 + 2 for every format a8_format_ok takes)
    const int nc = (cbit % 8 + 2 * f.P * f.Q + 7) / 8, ne = f.E ? (ebit % 8 + 2 * f.E + 7) / 8 : 0;
    TORCH_CHECK(nc + ne <= 8, "seed-basis int8 kernel: a record pair's codes and offsets exceed a qword");
    for (int k = 0; k < 8; ++k)
      cc[8 * q + k] = static_cast<uint8_t>(std::min(63, k < nc ? (cbit >> 3) + k : (ebit >> 3) + k - nc));
    for (int i = 0; i < 8; ++i) {  // byte i: coefficient i % 4 of row r + i / 4
      const int rr = i / 4, p = i % 4;
      cm[8 * q + i] = static_cast<uint8_t>((cbit % 8 + (rr * f.P + p) * f.Q) & 63);
      em[8 * q + i] = static_cast<uint8_t>((8 * nc + ebit % 8 + rr * f.E - f.Q) & 63);  // e lands at bits Q…
      if (p < f.P) valid |= uint64_t{1} << (8 * q + i);
    }
  }
  // index bits: code (Q), then e (E); higher bits are other fields' — the table repeats
  for (int i = 0; i < 64; ++i) {
    const int u = i & ((1 << f.Q) - 1), e = f.E ? (i >> f.Q) & ((1 << f.E) - 1) : 0;
    tb[i] = static_cast<uint8_t>(static_cast<int8_t>((u - (1 << (f.Q - 1))) * (1 << e)));
  }
  c.seed_ctl = _mm512_load_si512(sc);
  c.seed_shift = _mm512_load_si512(ssh);
  c.seed_mask = _mm512_set1_epi32((1 << f.S) - 1);
  c.seed_block = _mm512_load_si512(blk);
  c.code_ctl = _mm512_load_si512(cc);
  c.code_at = _mm512_load_si512(cm);
  c.exp_at = _mm512_load_si512(em);
  c.table = _mm512_load_si512(tb);
  c.low = _mm512_set1_epi8(static_cast<char>((1 << f.Q) - 1));
  c.valid = valid;
  c.valid_lo = valid & 0xFFFFFFFFull;
  c.load2 = 2 * f.R == 64 ? ~uint64_t{0} : (uint64_t{1} << (2 * f.R)) - 1;
  c.load1 = (uint64_t{1} << f.R) - 1;
  return c;
}

// A pair of records loaded into w (a8_ctl's layout) as 16 lanes (row l % 8 of record l / 8):
// `seeds` the lane's seed (| its block << S when the pair is blocks j, j + 1), `qe` its 4 signed
// codes (q − half) << e as int8 (lanes of a missing second record: 0).
RS_A8 inline void a8_fields(const A8Ctl& c, __m512i w, bool pair, __m512i& seeds, __m512i& qe) {
  seeds = _mm512_srlv_epi32(_mm512_permutexvar_epi8(c.seed_ctl, w), c.seed_shift);
  seeds = _mm512_ternarylogic_epi32(seeds, c.seed_mask, c.seed_block, 0xEA);  // (seeds & mask) | block
  const __m512i fields = _mm512_permutexvar_epi8(c.code_ctl, w);
  const __m512i codes = _mm512_multishift_epi64_epi8(c.code_at, fields);
  const __m512i exps = _mm512_multishift_epi64_epi8(c.exp_at, fields);
  const __m512i idx = _mm512_ternarylogic_epi32(codes, exps, c.low, 0xE4);  // code bits from codes, e above
  qe = _mm512_maskz_permutexvar_epi8(pair ? c.valid : c.valid_lo, idx, c.table);
}
// the record at r and, when `pair`, the next one (column blocks j, j + 1 of one row group)
RS_A8 inline void a8_decode(const A8Ctl& c, const uint8_t* r, bool pair, __m512i& seeds, __m512i& qe) {
  a8_fields(c, _mm512_maskz_loadu_epi8(pair ? c.load2 : c.load1, r), pair, seeds, qe);
}

// 16 products v·(127/m), rounded to nearest even (MXCSR default, as torch.round), clamped to
// ±127, + 128 (vpdpbusd's unsigned operand), as bytes
RS_A8 inline __m128i a8_round_biased(__m512 v) {
  const __m512i lim = _mm512_set1_epi32(127);
  const __m512i q = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(v), lim), _mm512_sub_epi32(_mm512_setzero_si512(), lim));
  return _mm512_cvtepi32_epi8(_mm512_add_epi32(q, _mm512_set1_epi32(128)));
}

// Batch row x's sign sums of column blocks [t0, t1) (≤ kA8Group) rounded to int8 + 128:
// vq[(j − t0)·stride + k] = round(v[k] · 127 / m) clamped to ±127, + 128, for the first n
// patterns (kPatterns, or kHalf: the GF(2) loop's half table); m the largest |v| bound max|lo| +
// max|hi| over the blocks (|lo + hi| rounds to at most it). Returns m / 127 (0: all zero; NaN: a
// non-finite input). v[255 − k] = −v[k] exactly (sign_sums_row's sums are sign-symmetric, the
// rounding too), so vq[255 − k] = 256 − vq[k].
RS_A8 float a8_rounded_sums(const float* x, int64_t K, int64_t t0, int64_t t1, uint8_t* vq, int64_t stride, int n) {
  // sign_sums_row's sums, 16 patterns per vector: lane k of the half-sum adds ±x_c in the same
  // order (fma with ±1 rounds as the add or subtract does), so v is bit-identical to it — and to
  // the reference — without its 128 scalar adds per block
  alignas(64) float lo[kA8Group][16], hi[kA8Group][16];
  __m512 sgn[4];
  for (int c = 0; c < 4; ++c) {
    alignas(64) float s[16];
    for (int k = 0; k < 16; ++k) s[k] = (k >> c) & 1 ? 1.f : -1.f;
    sgn[c] = _mm512_load_ps(s);
  }
  const __m512 sign = _mm512_set1_ps(-0.f);
  float m = 0.f;
  bool finite = true;
  for (int64_t j = t0; j < t1; ++j) {
    alignas(32) float xc[8];
    const __mmask8 in = static_cast<__mmask8>((1u << std::min<int64_t>(8, K - 8 * j)) - 1);
    const __m256 xv = _mm256_maskz_loadu_ps(in, x + 8 * j);  // inputs past K are 0, as sign_sums_row's
    finite = finite && _mm256_cmp_ps_mask(_mm256_sub_ps(xv, xv), _mm256_setzero_ps(), _CMP_EQ_OQ) == 0xFF;
    _mm256_store_ps(xc, xv);
    __m512 l = _mm512_setzero_ps(), h = _mm512_setzero_ps();
    for (int c = 0; c < 4; ++c) {
      l = _mm512_fmadd_ps(sgn[c], _mm512_set1_ps(xc[c]), l);
      h = _mm512_fmadd_ps(sgn[c], _mm512_set1_ps(xc[c + 4]), h);
    }
    _mm512_store_ps(lo[j - t0], l);
    _mm512_store_ps(hi[j - t0], h);
    m = std::max(m, _mm512_reduce_max_ps(_mm512_andnot_ps(sign, l)) + _mm512_reduce_max_ps(_mm512_andnot_ps(sign, h)));
  }
  // a NaN or Inf input: the group's codes 0 and its scale NaN, so the row's outputs are NaN (as the
  // fp32 kernel's and the int kernels' are), never a finite number
  if (!finite) m = 0.f;
  const float inv = m > 0.f ? 127.f / m : 0.f;
  const __m512 vinv = _mm512_set1_ps(inv);
  for (int64_t j = t0; j < t1; ++j) {
    const __m512 l = _mm512_load_ps(lo[j - t0]);
    for (int h = 0; h < n / 16; ++h)  // v[16h + i] = lo[i] + hi[h], as sign_sums_row forms it
      _mm_storeu_si128(reinterpret_cast<__m128i*>(vq + (j - t0) * stride + 16 * h),
                       a8_round_biased(_mm512_mul_ps(_mm512_add_ps(l, _mm512_set1_ps(hi[j - t0][h])), vinv)));
  }
  return finite ? m / 127.f : std::numeric_limits<float>::quiet_NaN();
}

// Batch row x's z tables for column blocks [t0, t1) (≤ kA8Group): zt[j − t0][s] = 4 bytes
// vq[pattern[s, p]] (a8_rounded_sums). Returns its scale.
// pat8: [2^S][4] pattern ids (padding coefficients any id: their codes are 0).
RS_A8 float a8_tables(const float* x, int64_t K, int64_t t0, int64_t t1, const uint8_t* pat8, int64_t n_seeds,
                      uint8_t* zt) {
  alignas(64) uint8_t vq[kA8Group][kPatterns];
  const float scale = a8_rounded_sums(x, K, t0, t1, vq[0], kPatterns, kPatterns);
  for (int64_t j = t0; j < t1; ++j) {
    const uint8_t* vj = vq[j - t0];
    const __m512i T0 = _mm512_load_si512(vj), T1 = _mm512_load_si512(vj + 64), T2 = _mm512_load_si512(vj + 128),
                  T3 = _mm512_load_si512(vj + 192);
    uint8_t* z = zt + (j - t0) * n_seeds * 4;
    int64_t k = 0;
    for (; k + 64 <= n_seeds * 4; k += 64) {  // 16 seeds: ids < 128 from T0|T1, the others from T2|T3
      const __m512i id = _mm512_loadu_si512(pat8 + k);
      const __m512i a = _mm512_permutex2var_epi8(T0, id, T1), b = _mm512_permutex2var_epi8(T2, id, T3);
      _mm512_storeu_si512(z + k, _mm512_mask_blend_epi8(_mm512_movepi8_mask(id), a, b));
    }
    for (; k < n_seeds * 4; ++k) z[k] = vj[pat8[k]];
  }
  return scale;
}

// The records of one weight's row groups for column blocks [t0, t1) (t0 even, one record tile)
// against BC batch rows' z tables (zt + b·zb bytes; block j's at (j − t0)·2^S·4): acc[b·ldacc + row]
// += scale[b] · Σ_j (the group's integer sums).
template <int BC>
RS_A8 void a8_rows(const A8Ctl& c, const Format& f, const uint8_t* rec, int64_t G, int64_t nb, int64_t t0,
                   int64_t t1, const uint8_t* zt, int64_t zb, const float* scale, float* acc, int64_t ldacc) {
  const __m512i k128 = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t zblock = int64_t{4} << f.S;
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* r = record_at(rec, g, t0, G, nb, f.R);  // (g, t0 … t1 − 1): consecutive records
    {  // the records of a group kPrefetchGroups ahead: the hardware prefetcher does not follow runs of ~4 lines
      const char* ahead = reinterpret_cast<const char*>(record_at(rec, std::min(g + kPrefetchGroups, G - 1), t0, G, nb, f.R));
      for (int64_t o = 0; o < (t1 - t0) * f.R; o += 64) _mm_prefetch(ahead + o, _MM_HINT_T0);
    }
    __m512i a[BC], corr = _mm512_setzero_si512();
    for (int b = 0; b < BC; ++b) a[b] = _mm512_setzero_si512();
    for (int64_t j = t0; j < t1; j += 2, r += 2 * f.R) {
      const bool pair = j + 1 < t1;
      __m512i sd, qe;
      a8_decode(c, r, pair, sd, qe);
      corr = _mm512_dpbusd_epi32(corr, k128, qe);
      const uint8_t* zj = zt + (j - t0) * zblock;
      for (int b = 0; b < BC; ++b) {
        const __m512i z = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), pair ? 0xFFFF : 0x00FF, sd, zj + b * zb, 4);
        a[b] = _mm512_dpbusd_epi32(a[b], z, qe);
      }
    }
    for (int b = 0; b < BC; ++b) {
      const __m512i s = _mm512_sub_epi32(a[b], corr);
      const __m256i rows = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
      float* o = acc + b * ldacc + g * 8;
      _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows), _mm256_set1_ps(scale[b]), _mm256_loadu_ps(o)));
    }
  }
}

// -------------------------------------- int8 activations, batch ≥ 2: lanes are L batch rows
// Per 8-block group and L (8 or 16) batch rows, the z of every seed as one line of 4L bytes
// T[block][seed] (byte 4b + p: batch row b's int8 z of coefficient p, + 128), so a row's block
// sum over L batch rows is one load and one vpdpbusd with the row's 4 codes broadcast. The tables
// cost 2^S lines per block, repaid over the layer's rows (a 4096-row layer reads 4 lines per seed);
// they live in L2, and their reads set the pace, hence 32-byte lines (ymm) up to batch 8. The
// arithmetic — scales, rounding, integer sums — is a8_tables' and a8_rows', so every batch size
// gives the same numbers for a row of x.
constexpr int kA8Lanes = 16;  // the most batch rows per line
// batches up to this take the gather loop (a8_rows): 4096², 2 threads, gathers vs lines: batch 2
// 0.89 vs 2.09 ms, batch 4 2.06 vs 2.15, batch 8 4.3 vs 2.1
constexpr int64_t kA8GatherBatch = 4;

// accumulator lanes: 16 (zmm) or 8 (ymm) batch rows of int32 sums
template <int L>
struct A8Acc;
template <>
struct A8Acc<16> {
  using I = __m512i;
  RS_A8 static I zero() { return _mm512_setzero_si512(); }
  RS_A8 static I dot(I a, const uint8_t* line, const int32_t* q) {
    return _mm512_dpbusd_epi32(a, _mm512_load_si512(line), _mm512_set1_epi32(*q));
  }
  // o[b] += (a[b] − corr) · scale[b]
  RS_A8 static void flush(I a, int32_t corr, const float* scale, float* o) {
    const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(a, _mm512_set1_epi32(corr)));
    _mm512_storeu_ps(o, _mm512_fmadd_ps(v, _mm512_loadu_ps(scale), _mm512_loadu_ps(o)));
  }
};
template <>
struct A8Acc<8> {
  using I = __m256i;
  RS_A8 static I zero() { return _mm256_setzero_si256(); }
  RS_A8 static I dot(I a, const uint8_t* line, const int32_t* q) {
    return _mm256_dpbusd_epi32(a, _mm256_load_si256(reinterpret_cast<const __m256i*>(line)), _mm256_set1_epi32(*q));
  }
  RS_A8 static void flush(I a, int32_t corr, const float* scale, float* o) {
    const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(a, _mm256_set1_epi32(corr)));
    _mm256_storeu_ps(o, _mm256_fmadd_ps(v, _mm256_loadu_ps(scale), _mm256_loadu_ps(o)));
  }
};

// x rows [b0, b0 + L) (rows ≥ B: zero), blocks [t0, t1): T[(j − t0)·2^S + s] lines of 4L bytes;
// scale[L] as a8_tables returns per row.
template <int L>
RS_A8 void a8_batch_tables(const float* x, int64_t B, int64_t K, int64_t b0, int64_t t0, int64_t t1,
                           const uint8_t* pat8, int64_t n_seeds, uint8_t* T, float* scale) {
  // sums and scales in 16 lanes whatever L (the lanes ≥ L are zero rows): [block][sign pattern][row]
  alignas(64) float lo[kA8Group][16][16], hi[kA8Group][16][16];
  const __m512 zero = _mm512_setzero_ps(), sign = _mm512_set1_ps(-0.f);
  __m512 m = zero;
  __mmask16 finite = 0xFFFF;
  for (int64_t j = t0; j < t1; ++j) {
    alignas(64) float xc[8][16] = {};
    for (int b = 0; b < L && b0 + b < B; ++b)
      for (int c = 0; c < 8 && 8 * j + c < K; ++c) xc[c][b] = x[(b0 + b) * K + 8 * j + c];
    __m512 ml = zero, mh = zero;
    for (int c = 0; c < 8; ++c) {
      const __m512 v = _mm512_load_ps(xc[c]);
      finite &= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), zero, _CMP_EQ_OQ);  // x − x = 0: x finite
    }
    for (int k = 0; k < 16; ++k) {  // the sums sign_sums_row forms, in its order, per batch row
      __m512 sl = zero, sh = zero;
      for (int c = 0; c < 4; ++c) {
        const __m512 a = _mm512_load_ps(xc[c]), b = _mm512_load_ps(xc[c + 4]);
        sl = (k >> c) & 1 ? _mm512_add_ps(sl, a) : _mm512_sub_ps(sl, a);
        sh = (k >> c) & 1 ? _mm512_add_ps(sh, b) : _mm512_sub_ps(sh, b);
      }
      _mm512_store_ps(lo[j - t0][k], sl);
      _mm512_store_ps(hi[j - t0][k], sh);
      ml = _mm512_max_ps(ml, _mm512_andnot_ps(sign, sl));
      mh = _mm512_max_ps(mh, _mm512_andnot_ps(sign, sh));
    }
    m = _mm512_max_ps(m, _mm512_add_ps(ml, mh));
  }
  m = _mm512_mask_blend_ps(finite, zero, m);
  const __m512 k127 = _mm512_set1_ps(127.f);
  const __m512 inv = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(m, zero, _CMP_GT_OQ), k127, m);
  alignas(64) float sc16[16];
  _mm512_store_ps(sc16, _mm512_mask_blend_ps(finite, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()),
                                             _mm512_div_ps(m, k127)));
  std::copy(sc16, sc16 + L, scale);
  // byte 4b + p of a line ← byte L·p + b of the 4 V rows (p = 0 … 3) it is built from
  alignas(64) uint8_t il[64] = {};
  for (int b = 0; b < L; ++b)
    for (int p = 0; p < 4; ++p) il[4 * b + p] = static_cast<uint8_t>(L * p + b);
  const __m512i interleave = _mm512_load_si512(il);
  for (int64_t j = t0; j < t1; ++j) {
    alignas(64) uint8_t V[kPatterns][16];  // [pattern][batch row]: z + 128
    for (int k = 0; k < kPatterns; ++k)
      _mm_store_si128(reinterpret_cast<__m128i*>(V[k]),
                      a8_round_biased(_mm512_mul_ps(
                          _mm512_add_ps(_mm512_load_ps(lo[j - t0][k & 15]), _mm512_load_ps(hi[j - t0][k >> 4])), inv)));
    uint8_t* Tj = T + (j - t0) * n_seeds * 4 * L;
    for (int64_t s = 0; s < n_seeds; ++s) {
      const uint8_t* id = pat8 + 4 * s;
      if constexpr (L == 16) {
        __m512i line = _mm512_castsi128_si512(_mm_load_si128(reinterpret_cast<const __m128i*>(V[id[0]])));
        line = _mm512_inserti32x4(line, _mm_load_si128(reinterpret_cast<const __m128i*>(V[id[1]])), 1);
        line = _mm512_inserti32x4(line, _mm_load_si128(reinterpret_cast<const __m128i*>(V[id[2]])), 2);
        line = _mm512_inserti32x4(line, _mm_load_si128(reinterpret_cast<const __m128i*>(V[id[3]])), 3);
        _mm512_store_si512(Tj + 64 * s, _mm512_permutexvar_epi8(interleave, line));
      } else {
        int64_t w[4];
        for (int p = 0; p < 4; ++p) std::memcpy(&w[p], V[id[p]], 8);
        const __m256i line = _mm256_set_epi64x(w[3], w[2], w[1], w[0]);
        _mm256_store_si256(reinterpret_cast<__m256i*>(Tj + 32 * s),
                           _mm256_permutexvar_epi8(_mm512_castsi512_si256(interleave), line));
      }
    }
  }
}

// One weight's row groups for blocks [t0, t1) against the L-row tables: acc[(g·8 + r)·L + b]
// += scale[b] · the row's integer sum.
template <int L>
RS_A8 void a8_batch_rows(const A8Ctl& c, const Format& f, const uint8_t* rec, int64_t G, int64_t nb, int64_t t0,
                         int64_t t1, const uint8_t* T, const float* scale, float* acc) {
  using Acc = A8Acc<L>;
  const __m512i k128 = _mm512_set1_epi8(static_cast<char>(0x80));
  alignas(64) int32_t sd[16], qe[16], corr_l[16];
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* r = record_at(rec, g, t0, G, nb, f.R);
    {
      const char* ahead = reinterpret_cast<const char*>(record_at(rec, std::min(g + 2, G - 1), t0, G, nb, f.R));
      for (int64_t o = 0; o < (t1 - t0) * f.R; o += 64) _mm_prefetch(ahead + o, _MM_HINT_T0);
    }
    typename Acc::I a[8];
    __m512i corr = _mm512_setzero_si512();
    for (int k = 0; k < 8; ++k) a[k] = Acc::zero();
    for (int64_t j = t0; j < t1; j += 2, r += 2 * f.R) {
      const bool pair = j + 1 < t1;
      __m512i s, q;
      a8_decode(c, r, pair, s, q);
      s = _mm512_add_epi32(s, _mm512_set1_epi32(static_cast<int32_t>((j - t0) << f.S)));  // the line's block
      corr = _mm512_dpbusd_epi32(corr, k128, q);
      // the lines' byte offsets and the codes, read back as scalars and broadcasts (load ports):
      // left to itself GCC extracts every lane with shuffles, all on port 5 (4096², batch 16, 2
      // threads: 2.7 vs 2.4 ms)
      _mm512_store_si512(sd, _mm512_slli_epi32(s, L == 16 ? 6 : 5));  // × 4L bytes per line
      _mm512_store_si512(qe, q);
      asm volatile("" ::: "memory");
#pragma GCC unroll 8
      for (int l = 0; l < 8; ++l) a[l] = Acc::dot(a[l], T + sd[l], qe + l);
      if (pair) {
#pragma GCC unroll 8
        for (int l = 0; l < 8; ++l) a[l] = Acc::dot(a[l], T + sd[8 + l], qe + 8 + l);
      }
    }
    _mm512_store_si512(corr_l, corr);
    for (int k = 0; k < 8; ++k)  // Σ (z + 128)·qe − 128·Σ qe, per row (its two block lanes)
      Acc::flush(a[k], corr_l[k] + corr_l[8 + k], scale, acc + (g * 8 + k) * L);
  }
}

// One weight for the int8 path: records, row groups, its accumulator (per batch row, ldacc apart)
struct A8Part {
  const uint8_t* rec;
  int64_t G;
  float* acc;
};

// column blocks [j0, j1) (j0 a multiple of kTile) of x's BC rows into every part's acc
template <int BC>
RS_A8 void a8_range(const float* x, int64_t K, const uint8_t* pat8, const A8Part* parts, int n_parts,
                    int64_t ldacc, const Format& f, const A8Ctl& c, int64_t nb, int64_t j0, int64_t j1) {
  const int64_t n_seeds = int64_t{1} << f.S, zb = kA8Group * n_seeds * 4;
  uint8_t* zt = reinterpret_cast<uint8_t*>(scratch((BC * zb + 63) / 4));
  float scale[BC];
  for (int64_t t0 = j0; t0 < j1; t0 += kA8Group) {
    const int64_t t1 = std::min(j1, t0 + kA8Group);
    for (int b = 0; b < BC; ++b) scale[b] = a8_tables(x + b * K, K, t0, t1, pat8, n_seeds, zt + b * zb);
    for (const A8Part* p = parts; p < parts + n_parts; ++p)
      a8_rows<BC>(c, f, p->rec, p->G, nb, t0, t1, zt, zb, scale, p->acc, ldacc);
  }
}

// a8_range for bc (1 … kA8GatherBatch) rows
template <int BC = kA8GatherBatch>
void a8_range_dispatch(const float* x, int64_t K, int64_t bc, const uint8_t* pat8, const A8Part* parts, int n_parts,
                       int64_t ldacc, const Format& f, const A8Ctl& c, int64_t nb, int64_t j0, int64_t j1) {
  if constexpr (BC > 1)
    if (bc < BC) return a8_range_dispatch<BC - 1>(x, K, bc, pat8, parts, n_parts, ldacc, f, c, nb, j0, j1);
  a8_range<BC>(x, K, pat8, parts, n_parts, ldacc, f, c, nb, j0, j1);
}

// ------------------------------------------ int8 activations, any batch: pattern ids by GF(2)
// The LFSR basis is linear over GF(2) in the generator's initial state s + 1 (every output bit is
// an XOR of state bits), so each basis row's pattern id is an 8 × 16 bit matrix times s + 1: two
// gf2p8affineqb (the low and the high byte of s + 1) give the 4 ids of 16 (row, block) lanes
// without a memory access — no seed table, no gather, and no seed can index out of anything.
// The ids come folded onto the half table (bit 7: negate, bits 0-6: pattern k or 255 − k; the
// fold is linear too, so it is in the matrices); the sign goes into the codes, shared by every
// batch row, and each batch row's z is one vpermi2b from its block's 128-byte table (vq[0, 128)).
// Lanes are 8 rows of two row groups at one column block, so all 16 read the same table.
// Arithmetic identical to a8_rows': the same rounded v, the same integer sums.
#define RS_A8GF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,gfni")))
const bool kSeedbasisA8Gf = kSeedbasisA8 && __builtin_cpu_supports("gfni");
constexpr int kA8GfBatch = 16;  // the most batch rows per pass (accumulators in registers)

struct A8Gf {
  __m512i lo_ctl, hi_ctl, m_lo, m_hi, transpose;
};

// The matrices when pat8 ([2^S][4], P real ids per seed) is linear in s + 1 over GF(2), checked
// for every seed; false otherwise (e.g. the packed64 basis: the gather loop runs).
RS_A8GF bool a8_gf_build(const uint8_t* pat8, int S, int P, A8Gf& g) {
  if (S > 15) return false;  // s + 1 in 16 bits
  const uint32_t keep = P >= 4 ? 0xFFFFFFFFu : (uint32_t{1} << (8 * P)) - 1;
  auto ids = [&](int64_t s) {
    uint32_t w;
    std::memcpy(&w, pat8 + 4 * s, 4);
    return w & keep;
  };
  uint32_t col[16] = {};  // col[i]: the ids of s + 1 = 2^i
  for (int i = 0; i <= S; ++i) col[i] = ids((int64_t{1} << i) - 1);
  const int64_t n = int64_t{1} << S;
  std::vector<uint32_t> lin(n + 1, 0);
  for (int64_t t = 1; t <= n; ++t) {
    lin[t] = lin[t & (t - 1)] ^ col[__builtin_ctzll(t)];
    if (lin[t] != ids(t - 1)) return false;
  }
  // fold each id byte: bits 0-6 ^= bit 7 (k ≥ 128 → 0x80 | (255 − k))
  for (int i = 0; i <= S; ++i) {
    const uint32_t top = (col[i] >> 7) & 0x01010101u;
    col[i] ^= top * 0x7F;
  }
  // gf2p8affineqb: output bit b of a byte = parity(matrix byte 7 − b & input byte)
  alignas(64) uint64_t mlo[8], mhi[8];
  for (int p = 0; p < 4; ++p) {
    uint64_t lo = 0, hi = 0;
    for (int b = 0; b < 8; ++b) {
      uint64_t rl = 0, rh = 0;
      for (int i = 0; i <= S; ++i) {
        if (!((col[i] >> (8 * p + b)) & 1)) continue;
        if (i < 8) rl |= uint64_t{1} << i;
        else rh |= uint64_t{1} << (i - 8);
      }
      lo |= rl << (8 * (7 - b));
      hi |= rh << (8 * (7 - b));
    }
    mlo[p] = mlo[p + 4] = lo;  // qword k: coefficient k % 4 of lanes 8(k / 4) … + 7
    mhi[p] = mhi[p + 4] = hi;
  }
  alignas(64) uint8_t lc[64], hc[64], tr[64];
  for (int k = 0; k < 8; ++k)
    for (int i = 0; i < 8; ++i) {
      const int lane = 8 * (k / 4) + i;
      lc[8 * k + i] = static_cast<uint8_t>(4 * lane);  // s + 1's low byte
      hc[8 * k + i] = static_cast<uint8_t>(4 * lane + 1);
    }
  for (int l = 0; l < 16; ++l)
    for (int p = 0; p < 4; ++p) tr[4 * l + p] = static_cast<uint8_t>(8 * (4 * (l / 8) + p) + l % 8);
  g.lo_ctl = _mm512_load_si512(lc);
  g.hi_ctl = _mm512_load_si512(hc);
  g.m_lo = _mm512_load_si512(mlo);
  g.m_hi = _mm512_load_si512(mhi);
  g.transpose = _mm512_load_si512(tr);
  return true;
}

// a8_gf_build, remembered per thread for the last table (the check walks every seed; the decode
// step passes the same table for every layer)
bool a8_gf(const uint8_t* pat8, int S, int P, A8Gf& g) {
  struct Last {
    std::vector<uint8_t> pat;
    int S = -1, P = -1;
    bool ok = false;
    A8Gf gf;
  };
  thread_local Last last;
  const size_t n = size_t{4} << S;
  if (last.S != S || last.P != P || last.pat.size() != n || std::memcmp(last.pat.data(), pat8, n) != 0) {
    last.ok = a8_gf_build(pat8, S, P, last.gf);
    last.pat.assign(pat8, pat8 + n);
    last.S = S;
    last.P = P;
  }
  g = last.gf;
  return last.ok;
}

// The folded pattern ids of 16 lanes' seeds (t = seed + 1 per int32 lane), untransposed: qword k
// holds coefficient k % 4 of lanes 8(k / 4) … + 7, i.e. byte 32·(lane / 8) + 8p + lane % 8.
RS_A8GF inline __m512i a8_gf_ids(const A8Gf& gf, __m512i t) {
  return _mm512_xor_si512(_mm512_gf2p8affine_epi64_epi8(_mm512_permutexvar_epi8(gf.lo_ctl, t), gf.m_lo, 0),
                          _mm512_gf2p8affine_epi64_epi8(_mm512_permutexvar_epi8(gf.hi_ctl, t), gf.m_hi, 0));
}

struct GfReader {
  A8Ctl c;         // a8_ctl(f): a pair = column blocks j, j + 1 of one row group
  A8Gf gf;
  __m512i to_ids;  // qe's bytes 4·lane + p → the ids' order, 32·record + 8p + row (Record's p·8 + row)
};

RS_A8GF void gf_reader_fill(const Format& f, const A8Gf& gf, GfReader& out) {
  alignas(64) uint8_t t[64];
  for (int b = 0; b < 2; ++b)
    for (int p = 0; p < 4; ++p)
      for (int r = 0; r < 8; ++r) t[32 * b + 8 * p + r] = static_cast<uint8_t>(4 * (8 * b + r) + p);
  out.c = a8_ctl(f);
  out.gf = gf;
  out.to_ids = _mm512_load_si512(t);
}

// The int8 kernels' pattern table: uint8 [2^S][4] from pattern [2^S, P ≤ 4], padding
// coefficients id 0 (their codes are 0).
std::vector<uint8_t> pat8_table(const torch::Tensor& pattern) {
  const int64_t n_seeds = pattern.size(0), P = pattern.size(1);
  std::vector<uint8_t> pat8(n_seeds * 4, 0);
  const uint8_t* p8 = pattern.data_ptr<uint8_t>();
  for (int64_t s = 0; s < n_seeds; ++s)
    for (int64_t p = 0; p < P; ++p) pat8[s * 4 + p] = p8[s * P + p];
  return pat8;
}

// The fp32 batch loop's GF(2) reader for this weight, or nullptr (see GfReader). On the heap: its
// zmm members need 64-byte alignment, which aligned new guarantees and a caller's frame (not
// compiled for AVX-512) did not (a returned-by-value one crashed on an aligned store).
std::unique_ptr<GfReader> gf_reader_for(const torch::Tensor& pattern, const Format& f) {
  if (!kSeedbasisA8Gf || !a8_format_ok(f)) return nullptr;
  A8Gf gf;
  if (!a8_gf(pat8_table(pattern).data(), f.S, f.P, gf)) return nullptr;
  auto gr = std::make_unique<GfReader>();
  gf_reader_fill(f, gf, *gr);
  return gr;
}

// RecordReader::read for two records at a time, the same numbers: (q − half) << e as int8 (a8_fields:
// every a8 format fits) → float exactly, the folded id's sign applied to the integer, the offset of its
// half-table row.
RS_A8GF void read_records_gf(const GfReader& gr, const uint8_t* rec, const Format& f, int64_t nb, int64_t G, int64_t g,
                             int64_t j0, int64_t j1, int log2_stride, Record* buf) {
  const __m512i one = _mm512_set1_epi32(1), low7 = _mm512_set1_epi8(0x7F);
  const __m128i shift = _mm_cvtsi32_si128(log2_stride);
  alignas(64) int8_t q8[64];
  alignas(64) uint8_t h8[64];
  for (int64_t j = j0, step; j < j1; j += step) {
    // a pair only within one record tile (record_at: there a row group's blocks are back to back)
    const bool pair = j + 1 < j1 && (j + 1) % kTile != 0;
    step = pair ? 2 : 1;
    __m512i seeds, qe;
    a8_decode(gr.c, record_at(rec, g, j, G, nb, f.R), pair, seeds, qe);
    const __m512i t = _mm512_add_epi32(_mm512_and_si512(seeds, gr.c.seed_mask), one);  // drop the block bit
    const __m512i ids = a8_gf_ids(gr.gf, t);  // already the Record's order: no transpose
    const __m512i q = _mm512_permutexvar_epi8(gr.to_ids, qe);
    _mm512_store_si512(q8, _mm512_mask_sub_epi8(q, _mm512_movepi8_mask(ids), _mm512_setzero_si512(), q));
    _mm512_store_si512(h8, _mm512_and_si512(ids, low7));
    for (int b = 0; b < (pair ? 2 : 1); ++b) {
      Record& o = buf[j + b - j0];
      const __m512i row = _mm512_set1_epi32(static_cast<int32_t>((j + b - j0) * kHalf));
      for (int h = 0; h < 2; ++h) {  // entries 16h … 16h + 15: coefficients 2h, 2h + 1 of the 8 rows
        const int at = 32 * b + 16 * h;
        const __m512i qi = _mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(q8 + at)));
        _mm512_storeu_ps(o.q + 16 * h, _mm512_cvtepi32_ps(qi));
        const __m512i hi = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(h8 + at)));
        _mm512_storeu_si512(o.off + 16 * h, _mm512_sll_epi32(_mm512_add_epi32(hi, row), shift));
      }
    }
  }
}

// One weight's row groups, two at a time, for column blocks [t0, t1) (one record tile, ≤ 2
// activation groups) against BC batch rows' half tables (vt[b][j − t0][128]; scale[2b + i]: group
// i of the tile): acc[b·ldacc + row] += the scaled sums. A whole tile per pass over the row groups:
// half the per-group work (prefetch, addressing, loop exits) of a pass per activation group.
template <int BC>
RS_A8GF void a8_rows_gf(const A8Ctl& c, const A8Gf& gf, const Format& f, const uint8_t* rec, int64_t G, int64_t nb,
                        int64_t t0, int64_t t1, const uint8_t (*vt)[kTile][kHalf], const float* scale, float* acc,
                        int64_t ldacc) {
  const __m512i k128 = _mm512_set1_epi8(static_cast<char>(0x80)), one = _mm512_set1_epi32(1);
  const int64_t step = (t1 - t0) * f.R;  // group g → g + 1 (a tile holds its groups' records one after another)
  const __mmask64 second = c.load1 << 32;
  for (int64_t g = 0; g < G; g += 2) {
    const bool pair = g + 1 < G;
    const uint8_t* r = record_at(rec, g, t0, G, nb, f.R);
    {  // two groups' records kPrefetchGroups ahead (a8_rows)
      const int64_t ga = std::min(g + kPrefetchGroups, G - 1);
      const char* ahead = reinterpret_cast<const char*>(record_at(rec, ga, t0, G, nb, f.R));
      for (int64_t o = 0; o < step; o += 64) _mm_prefetch(ahead + o, _MM_HINT_T0);
      if (ga + 1 < G)
        for (int64_t o = 0; o < step; o += 64) _mm_prefetch(ahead + step + o, _MM_HINT_T0);
    }
    const __mmask16 rows = pair ? 0xFFFF : 0x00FF;
    for (int64_t g0 = t0; g0 < t1; g0 += kA8Group) {
      __m512i a[BC], corr = _mm512_setzero_si512();
      for (int b = 0; b < BC; ++b) a[b] = _mm512_setzero_si512();
      for (int64_t j = g0; j < std::min(t1, g0 + kA8Group); ++j, r += f.R) {
        __m512i w = _mm512_maskz_loadu_epi8(c.load1, r);
        // the next group's record to bytes 32…: a masked load from 32 bytes before it (masked-out
        // bytes are never read)
        if (pair)
          w = _mm512_mask_loadu_epi8(w, second, reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(r + step) - 32));
        __m512i sd, qe;
        a8_fields(c, w, pair, sd, qe);
        const __m512i t = _mm512_add_epi32(sd, one);
        const __m512i id = _mm512_permutexvar_epi8(gf.transpose, a8_gf_ids(gf, t));
        qe = _mm512_mask_sub_epi8(qe, _mm512_movepi8_mask(id), _mm512_setzero_si512(), qe);  // v[k] = −v[255 − k]
        corr = _mm512_dpbusd_epi32(corr, k128, qe);
        for (int b = 0; b < BC; ++b) {
          const uint8_t* T = vt[b][j - t0];
          const __m512i z = _mm512_permutex2var_epi8(_mm512_load_si512(T), id, _mm512_load_si512(T + 64));
          a[b] = _mm512_dpbusd_epi32(a[b], z, qe);
        }
      }
      const int64_t i = (g0 - t0) / kA8Group;
      for (int b = 0; b < BC; ++b) {
        const __m512 sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[b], corr));
        float* o = acc + b * ldacc + g * 8;
        _mm512_mask_storeu_ps(o, rows, _mm512_fmadd_ps(sum, _mm512_set1_ps(scale[2 * b + i]), _mm512_maskz_loadu_ps(rows, o)));
      }
    }
  }
}

// Batch rows [b0, b0 + BC) of x against column blocks [t0, t1) (one record tile) of every part
template <int BC>
RS_A8GF void a8_gf_pass(const float* x, int64_t K, const A8Part* parts, int n_parts, int64_t ldacc, const Format& f,
                        const A8Ctl& c, const A8Gf& gf, int64_t nb, int64_t t0, int64_t t1, int64_t b0) {
  static_assert(kTile == 2 * kA8Group, "a tile is two activation groups");
  alignas(64) uint8_t vt[BC][kTile][kHalf];
  float scale[2 * BC];
  for (int b = 0; b < BC; ++b)
    for (int64_t g0 = t0; g0 < t1; g0 += kA8Group)
      scale[2 * b + (g0 - t0) / kA8Group] = a8_rounded_sums(x + (b0 + b) * K, K, g0, std::min(t1, g0 + kA8Group),
                                                            vt[b][g0 - t0], kHalf, kHalf);
  for (const A8Part* p = parts; p < parts + n_parts; ++p)
    a8_rows_gf<BC>(c, gf, f, p->rec, p->G, nb, t0, t1, vt, scale, p->acc + b0 * ldacc, ldacc);
}

template <int BC = kA8GfBatch>
void a8_gf_pass_dispatch(int64_t bc, const float* x, int64_t K, const A8Part* parts, int n_parts, int64_t ldacc,
                         const Format& f, const A8Ctl& c, const A8Gf& gf, int64_t nb, int64_t t0, int64_t t1, int64_t b0) {
  if constexpr (BC > 1)
    if (bc < BC) return a8_gf_pass_dispatch<BC - 1>(bc, x, K, parts, n_parts, ldacc, f, c, gf, nb, t0, t1, b0);
  a8_gf_pass<BC>(x, K, parts, n_parts, ldacc, f, c, gf, nb, t0, t1, b0);
}

// column blocks [j0, j1) (j0 a multiple of kTile) of all B rows of x into every part's acc
// ([B][ldacc]): per record tile, the batch in passes of up to kA8GfBatch rows (a tile's records —
// 16 blocks of every row, ≤ 32 bytes each per 8 rows, 616 KB at 11008 rows — are in L2 for the
// next pass)
void a8_gf_range(const float* x, int64_t B, int64_t K, const A8Part* parts, int n_parts, int64_t ldacc,
                 const Format& f, const A8Ctl& c, const A8Gf& gf, int64_t nb, int64_t j0, int64_t j1) {
  for (int64_t t0 = j0; t0 < j1; t0 += kTile)
    for (int64_t b0 = 0; b0 < B; b0 += kA8GfBatch)
      a8_gf_pass_dispatch(std::min<int64_t>(kA8GfBatch, B - b0), x, K, parts, n_parts, ldacc, f, c, gf, nb, t0,
                          std::min(j1, t0 + kTile), b0);
}

// column blocks [j0, j1) of all x's rows, L at a time, into every part's acc ([chunk][Np][L],
// chunks `chunk_stride` floats apart)
template <int L>
RS_A8 void a8_batch_range(const float* x, int64_t B, int64_t K, const uint8_t* pat8, const A8Part* parts,
                          int n_parts, int64_t chunk_stride, const Format& f, const A8Ctl& c, int64_t nb, int64_t j0,
                          int64_t j1) {
  const int64_t n_seeds = int64_t{1} << f.S;
  uint8_t* T = reinterpret_cast<uint8_t*>(scratch(kA8Group * n_seeds * L));  // lines of 4L bytes
  alignas(64) float scale[L];
  for (int64_t t0 = j0; t0 < j1; t0 += kA8Group) {
    const int64_t t1 = std::min(j1, t0 + kA8Group);
    for (int64_t b0 = 0; b0 < B; b0 += L) {
      a8_batch_tables<L>(x, B, K, b0, t0, t1, pat8, n_seeds, T, scale);
      for (const A8Part* p = parts; p < parts + n_parts; ++p)
        a8_batch_rows<L>(c, f, p->rec, p->G, nb, t0, t1, T, scale, p->acc + b0 / L * chunk_stride);
    }
  }
}
// The public ops' input checks (shapes, dtypes, widths, the records' size)
void check_gemm_inputs(const torch::Tensor& x, const torch::Tensor& pattern, const torch::Tensor& records,
                       const torch::Tensor& row_exp, int64_t seed_bits, int64_t exp_bits, int64_t coeff_bits,
                       int64_t rows) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == torch::kFloat && x.is_contiguous(), "x must be contiguous fp32 [..., K]");
  TORCH_CHECK(seed_bits >= 1 && seed_bits <= 16 && exp_bits >= 0 && exp_bits <= 4 && coeff_bits >= 1 && coeff_bits <= 4,
              "field widths out of range");
  TORCH_CHECK(pattern.scalar_type() == torch::kByte && pattern.is_contiguous() && pattern.dim() == 2 &&
                  pattern.size(0) == (int64_t{1} << seed_bits) && pattern.size(1) >= 1 && pattern.size(1) <= 8,
              "pattern must be contiguous uint8 [2^S, P ≤ 8]");
  TORCH_CHECK(row_exp.scalar_type() == torch::kChar && row_exp.is_contiguous() && row_exp.dim() == 1 &&
                  row_exp.size(0) % 8 == 0,
              "row_exp must be contiguous int8 [Np], Np a multiple of 8");
  TORCH_CHECK(x.size(-1) >= 1, "x must have at least one feature");
  TORCH_CHECK(rows >= 0 && rows <= row_exp.size(0) && row_exp.size(0) - rows < 8,
              "rows must be the layout's real rows (row_exp holds them padded to 8)");
  const int64_t R = seed_bits + exp_bits + pattern.size(1) * coeff_bits, nb = (x.size(-1) + 7) / 8,
                G = row_exp.size(0) / 8;
  TORCH_CHECK(records.scalar_type() == torch::kByte && records.is_contiguous() && records.dim() == 1 &&
                  records.numel() == G * nb * R + 16,
              "records must be contiguous uint8 of G·nb·R + 16 = ", G * nb * R + 16, " bytes");
}

// y [..., rows] for x [..., K] (the ops take leading dims and return the real rows themselves: on
// SmolLM2-sized layers each torch op around the call costs ~1 µs of a ~15 µs call).
torch::Tensor output_for(const torch::Tensor& x, int64_t rows) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = rows;
  return torch::empty(shape, x.options());
}

// Each row's scale 2^t as a float. 2^t a normal float, and a block (≤ 8 codes of magnitude ≤
// 8·2^15) times it finite. Plain loops here and in the epilogues: small layers (SmolLM2's) take
// ~0.1 ms, and each torch op on the side costs µs.
std::vector<float> row_scales(const torch::Tensor& row_exp) {
  const int8_t* ep = row_exp.data_ptr<int8_t>();
  std::vector<float> scale(row_exp.numel());
  for (int64_t r = 0; r < row_exp.numel(); ++r) {
    TORCH_CHECK(ep[r] >= -126 && ep[r] <= 100, "row exponents must be in [-126, 100]");
    const uint32_t bits = static_cast<uint32_t>(ep[r] + 127) << 23;  // 2^e, exactly
    std::memcpy(&scale[r], &bits, 4);
  }
  return scale;
}
}  // namespace

torch::Tensor reality_stone::seedbasis_gemv_table(const torch::Tensor& pattern) {
  const int64_t n_seeds = pattern.size(0), P = pattern.size(1), PL = P <= 4 ? 4 : 8;
  torch::Tensor out = torch::full({n_seeds, PL}, kPatterns, torch::kInt);  // padding coefficients → the zero entry
  int32_t* o = out.data_ptr<int32_t>();
  const uint8_t* p8 = pattern.data_ptr<uint8_t>();
  for (int64_t s = 0; s < n_seeds; ++s)
    for (int64_t p = 0; p < P; ++p) o[s * PL + p] = p8[s * P + p];
  return out;
}

void reality_stone::seedbasis_gemv_rows(const float* x, int64_t K, const SeedbasisWeight* weights, int n_weights,
                                        const int32_t* pat, int64_t PL, int S, int E, int P, int Q) {
  const Format f{S, E, P, Q, S + E + P * Q};
  const int64_t nb = (K + 7) / 8, n_seeds = int64_t{1} << S;
  const int64_t n_tiles = (nb + kTile - 1) / kTile, n_parts = std::min<int64_t>(at::get_num_threads(), n_tiles);
  int64_t G = 0, rows_padded = 0;
  for (int w = 0; w < n_weights; ++w) {
    G += weights[w].Np / 8;
    rows_padded += weights[w].Np;
  }
  // per thread, each weight's accumulator [Np · PL] one after another
  std::vector<float> acc(n_parts * rows_padded * PL, 0.f);
  // expanding z costs n_seeds·PL copies per column block and saves a PL-lane gather per row
  const bool expand = 8 * G > n_seeds;
  at::parallel_for(0, n_parts, 1, [&](int64_t t0, int64_t t1) {
    std::vector<Part> parts(n_weights);
    for (int64_t t = t0; t < t1; ++t) {
      float* a = acc.data() + t * rows_padded * PL;
      for (int w = 0; w < n_weights; ++w) {
        parts[w] = Part{weights[w].rec, weights[w].Np / 8, a};
        a += weights[w].Np * PL;
      }
      // whole tiles per thread: each reads one contiguous run of records
      const int64_t j0 = n_tiles * t / n_parts * kTile, j1 = std::min(nb, n_tiles * (t + 1) / n_parts * kTile);
      const Part* pp = parts.data();
      if (PL == 4 && kSeedbasisAvx512) {
        if (expand) single_row_avx512<true>(x, K, pat, n_seeds, pp, n_weights, f, CoeffReader<4>(f), nb, j0, j1);
        else single_row_avx512<false>(x, K, pat, n_seeds, pp, n_weights, f, CoeffReader<4>(f), nb, j0, j1);
      } else if (PL == 4 && expand) single_row<4, true>(x, K, pat, n_seeds, pp, n_weights, f, CoeffReader<4>(f), nb, j0, j1);
      else if (PL == 4) single_row<4, false>(x, K, pat, n_seeds, pp, n_weights, f, CoeffReader<4>(f), nb, j0, j1);
      else if (expand) single_row<8, true>(x, K, pat, n_seeds, pp, n_weights, f, CoeffReader<8>(f), nb, j0, j1);
      else single_row<8, false>(x, K, pat, n_seeds, pp, n_weights, f, CoeffReader<8>(f), nb, j0, j1);
    }
  });
  int64_t off = 0;
  for (int w = 0; w < n_weights; ++w) {
    const SeedbasisWeight& wt = weights[w];
    for (int64_t r = 0; r < wt.rows; ++r) {
      float sum = 0.f;
      for (int64_t t = 0; t < n_parts; ++t)
        for (int l = 0; l < PL; ++l) sum += acc[(t * rows_padded + off + r) * PL + l];
      wt.y[r] = sum * wt.scale[r];
    }
    off += wt.Np;
  }
}

// x [..., K] fp32; pattern uint8 [2^S, P] (pattern ids of each seed's basis rows); records uint8
// [G·nb·R + 16]; row_exp int8 [Np = 8G] (row scale 2^row_exp); rows: the real rows (Np − 7 … Np).
// Returns y [..., rows].
torch::Tensor seedbasis_gemm(torch::Tensor x, torch::Tensor pattern, torch::Tensor records, torch::Tensor row_exp,
                             int64_t seed_bits, int64_t exp_bits, int64_t coeff_bits, int64_t rows) {
  check_gemm_inputs(x, pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows);
  const std::vector<float> scale = row_scales(row_exp);
  const Format f{static_cast<int>(seed_bits), static_cast<int>(exp_bits), static_cast<int>(pattern.size(1)),
                 static_cast<int>(coeff_bits),
                 static_cast<int>(seed_bits + exp_bits + pattern.size(1) * coeff_bits)};
  const int64_t K = x.size(-1), B = x.numel() / K, nb = (K + 7) / 8, Np = row_exp.size(0), G = Np / 8;
  const float* xp = x.data_ptr<float>();
  const uint8_t* rec = records.data_ptr<uint8_t>();
  const int64_t n_seeds = pattern.size(0), P = f.P;
  torch::Tensor y = output_for(x, rows);
  if (B == 0) return y;
  if (B == 1) {
    const auto pat = reality_stone::seedbasis_gemv_table(pattern);
    const reality_stone::SeedbasisWeight w{rec, scale.data(), Np, rows, y.data_ptr<float>()};
    reality_stone::seedbasis_gemv_rows(xp, K, &w, 1, pat.data_ptr<int32_t>(), pat.size(1), f.S, f.E, f.P, f.Q);
    return y;
  }
  // batch groups of 8 rows, padded (zero rows) to a power of two: the register blocks (8 · 1, 4 · 2,
  // 2 · 4, 1 · 8 groups) tile it, and a pattern's offset is a shift
  int64_t n_bg = 1;
  while (n_bg * kLanes < B) n_bg *= 2;
  std::vector<float> acc_v;  // [Np][n_bg][8], 32-byte aligned for the register blocks' loads
  float* ap = scratch_zeroed(acc_v, Np * n_bg * kLanes);
  // the pattern table as int32 words (4 ids each) for the readers' gathers, each id folded onto the
  // half table: k ≥ 128 → 0x80 | (255 − k)
  const int64_t words = (P + 3) / 4;
  std::vector<int32_t> pat32(n_seeds * words, 0);
  const uint8_t* p8 = pattern.data_ptr<uint8_t>();
  for (int64_t s = 0; s < n_seeds; ++s)
    for (int64_t p = 0; p < P; ++p) {
      const int32_t k = p8[s * P + p], folded = k < kHalf ? k : 0x80 | (255 - k);
      pat32[s * words + p / 4] |= folded << (8 * (p % 4));
    }
  // the int8 kernel's formats with a GF(2)-linear table: records read two at a time, ids by GF(2)
  // (per record ~25 vector ops instead of ~90 with the id gather: the reader was half of batch 8's
  // time). Only where a tile holds ≥ 2 column blocks (n_bg ≤ 4, batch ≤ 32): with one block per
  // tile the reads are a small part of the work and single records were a few % slower.
  const std::unique_ptr<GfReader> gf_rd = n_bg <= 4 ? gf_reader_for(pattern, f) : nullptr;
  const GfReader* gr = gf_rd.get();
  const int32_t* pt = pat32.data();
  switch (P) {
    case 1: run_batch<1>(xp, B, K, pt, gr, rec, f, nb, n_bg, G, ap); break;
    case 2: run_batch<2>(xp, B, K, pt, gr, rec, f, nb, n_bg, G, ap); break;
    case 3: run_batch<3>(xp, B, K, pt, gr, rec, f, nb, n_bg, G, ap); break;
    case 4: run_batch<4>(xp, B, K, pt, gr, rec, f, nb, n_bg, G, ap); break;
    case 5: run_batch<5>(xp, B, K, pt, gr, rec, f, nb, n_bg, G, ap); break;
    case 6: run_batch<6>(xp, B, K, pt, gr, rec, f, nb, n_bg, G, ap); break;
    case 7: run_batch<7>(xp, B, K, pt, gr, rec, f, nb, n_bg, G, ap); break;
    default: run_batch<8>(xp, B, K, pt, gr, rec, f, nb, n_bg, G, ap); break;
  }
  // acc [Np][n_bg · 8] → y [B, rows], each row times its scale
  float* yp = y.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < rows; ++r) yp[b * rows + r] = ap[r * n_bg * kLanes + b] * scale[r];
  return y;
}

void reality_stone::seedbasis_gemm_a8_rows(const float* x, int64_t B, int64_t K, const SeedbasisWeight* weights,
                                           int n_weights, int64_t ldy, const uint8_t* pat8, int S, int E, int P, int Q) {
  const Format f{S, E, P, Q, S + E + P * Q};
  TORCH_CHECK(kSeedbasisA8 && a8_format_ok(f), "the seed-basis int8-activation kernel needs AVX-512 VNNI + VBMI and "
              "P ≤ 4, Q + E ≤ 6, |code << e| ≤ 127, records ≤ 32 bytes");
  const int64_t nb = (K + 7) / 8;
  const int64_t n_tiles = (nb + kTile - 1) / kTile, n_parts = std::min<int64_t>(at::get_num_threads(), n_tiles);
  int64_t rows_padded = 0;
  for (int w = 0; w < n_weights; ++w) rows_padded += weights[w].Np;
  // a GF(2)-linear basis (the LFSR's): ids by gf2p8affineqb (a8_rows_gf), any batch. Else batch
  // 1 … kA8GatherBatch: per-row gathers (a8_rows); above: 8 (to batch 8) or 16 batch rows per table
  // line (a8_batch_rows), in chunks of that many rows, the last padded with zero rows
  A8Gf gf;
  const bool by_gf = kSeedbasisA8Gf && a8_gf(pat8, S, P, gf);
  const bool lines = !by_gf && B > kA8GatherBatch;
  const int L = B <= 8 ? 8 : kA8Lanes;
  const int64_t chunks = (B + L - 1) / L;
  // per thread: [B][ld] (gathers, GF) or [chunk][rows_padded][L] (lines), the weights side by side.
  // ld: one cache line more than the rows, so the batch rows' accumulators never sit a multiple of
  // 4 KB apart — 16 of them in one L1 set made 1024-row layers at batch 64 slower than the line loop
  const int64_t ld = rows_padded + 16;
  const int64_t per_part = lines ? chunks * rows_padded * L : B * ld;
  std::vector<float> acc(n_parts * per_part, 0.f);
  const A8Ctl c = a8_ctl(f, by_gf);
  at::parallel_for(0, n_parts, 1, [&](int64_t p0, int64_t p1) {
    std::vector<A8Part> parts(n_weights);
    for (int64_t t = p0; t < p1; ++t) {
      float* a = acc.data() + t * per_part;
      for (int w = 0; w < n_weights; ++w) {
        parts[w] = A8Part{weights[w].rec, weights[w].Np / 8, a};
        a += weights[w].Np * (lines ? L : 1);
      }
      const int64_t j0 = n_tiles * t / n_parts * kTile, j1 = std::min(nb, n_tiles * (t + 1) / n_parts * kTile);
      if (by_gf)
        a8_gf_range(x, B, K, parts.data(), n_weights, ld, f, c, gf, nb, j0, j1);
      else if (lines && L == 8)
        a8_batch_range<8>(x, B, K, pat8, parts.data(), n_weights, rows_padded * L, f, c, nb, j0, j1);
      else if (lines)
        a8_batch_range<16>(x, B, K, pat8, parts.data(), n_weights, rows_padded * L, f, c, nb, j0, j1);
      else
        a8_range_dispatch(x, K, B, pat8, parts.data(), n_weights, ld, f, c, nb, j0, j1);
    }
  });
  int64_t off = 0;
  for (int w = 0; w < n_weights; ++w) {
    const SeedbasisWeight& wt = weights[w];
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < wt.rows; ++r) {
        float sum = 0.f;
        for (int64_t t = 0; t < n_parts; ++t)
          sum += lines ? acc[t * per_part + ((b / L * rows_padded) + off + r) * L + b % L]
                       : acc[t * per_part + b * ld + off + r];
        wt.y[b * ldy + r] = sum * wt.scale[r];
      }
    off += wt.Np;
  }
}

bool reality_stone::seedbasis_a8_supported(int S, int E, int P, int Q) {
  return kSeedbasisA8 && a8_format_ok(Format{S, E, P, Q, S + E + P * Q});
}

// The int8-activation kernel (see "int8 activations" above): x [..., K] fp32, the layout and rows
// as for seedbasis_gemm. Returns y [..., rows].
torch::Tensor seedbasis_gemm_a8(torch::Tensor x, torch::Tensor pattern, torch::Tensor records, torch::Tensor row_exp,
                                int64_t seed_bits, int64_t exp_bits, int64_t coeff_bits, int64_t rows) {
  check_gemm_inputs(x, pattern, records, row_exp, seed_bits, exp_bits, coeff_bits, rows);
  const int S = static_cast<int>(seed_bits), E = static_cast<int>(exp_bits), Q = static_cast<int>(coeff_bits),
            P = static_cast<int>(pattern.size(1));
  TORCH_CHECK(reality_stone::seedbasis_a8_supported(S, E, P, Q),
              "the seed-basis int8-activation kernel does not take this format or CPU");
  const std::vector<float> scale = row_scales(row_exp);
  const int64_t Np = row_exp.size(0);
  const std::vector<uint8_t> pat8 = pat8_table(pattern);
  torch::Tensor y = output_for(x, rows);
  const int64_t K = x.size(-1), B = x.numel() / K;
  if (B == 0) return y;
  const reality_stone::SeedbasisWeight w{records.data_ptr<uint8_t>(), scale.data(), Np, rows, y.data_ptr<float>()};
  reality_stone::seedbasis_gemm_a8_rows(x.data_ptr<float>(), B, K, &w, 1, rows, pat8.data(), S, E, P, Q);
  return y;
}

static reality_stone::RegisterBindings bind_seedbasis([](pybind11::module_& m) {
  m.def(
      "seedbasis_gemv_table",
      [](torch::Tensor pattern) {
        TORCH_CHECK(pattern.scalar_type() == torch::kByte && pattern.is_contiguous() && pattern.dim() == 2 &&
                        pattern.size(0) >= 2 && pattern.size(0) <= (int64_t{1} << 16) &&
                        (pattern.size(0) & (pattern.size(0) - 1)) == 0 && pattern.size(1) >= 1 && pattern.size(1) <= 8,
                    "pattern must be contiguous uint8 [2^S, P ≤ 8]");
        return reality_stone::seedbasis_gemv_table(pattern);
      },
      "the batch-1 kernel's pattern table (int32 [2^S, 4 or 8], padding coefficients → 256) for the decode step");
  m.def("seedbasis_gemm_a8", &seedbasis_gemm_a8, "the seed-basis matmul with x quantised to int8 per 64 inputs "
                                                 "(AVX-512 VNNI + VBMI; `seedbasis_a8_supported`)");
  m.def("seedbasis_a8_supported", &reality_stone::seedbasis_a8_supported,
        "whether the int8-activation kernel runs this format (S, E, P, Q) on this CPU");
  m.def("seedbasis_gemm", &seedbasis_gemm, "fused seed-basis matmul from the packed records (batch 1: expanded z; "
                                           "batch ≥ 2: 8 batch rows per vector)");
});
