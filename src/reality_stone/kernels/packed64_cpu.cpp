// Fused Packed64 matmul for CPU: y = x Wᵀ with W a quadtree of Packed64 leaves, every leaf
// generated row by row into an L1-sized buffer and used at once — W is never stored.
//
// A leaf of side s at (row0, col0) is (kernels/packed64.py derives the per-leaf numbers once)
//     w_ij = Ψ_kind(u · ρ_ij) · (a · sin(kθ_ij) + b · cos(kθ_ij))      polar formula (seed 003)
//     w_ij = a · m_ij                                                   hash formula (seed 002), kind 8
// ρ_ij, θ_ij (the cell's polar coordinates) and m_ij depend only on s: one float32 table per leaf
// size, [ρ | sin θ | sin 2θ | sin 3θ | cos θ | cos 2θ | cos 3θ] (7 s² floats, row-major) followed
// by the same seven over the top-left quadrant, column-major (7 (s/2)² floats); or [m] (s² floats).
// k = 0 leaves are radial only (w = b·Ψ).
//
// Cost: the product (`leaf_gemv_folded`) uses the leaf's mirror symmetries, so each Ψ value and
// each multiply-add serves four weights; the row generator (tiles for larger batches, backward,
// hash leaves, 1×1 leaves) shares each Ψ row between rows i and s−1−i. Ψ is one exp / expm1 in float32 (Cody–Waite reduction + degree-7
// polynomial, branch-free so the row loops vectorise under `omp simd`). The arguments are
// bounded by the format (u = c·r < 8, ρ ≤ 1, so t < 8): nothing overflows.
//
// Leaves are ordered by top-level block row (the codec's quadtree order), `row_start[I]` is the
// first leaf of top block row I; threads split the top block rows, so no two write one output row.
#include "kernels.h"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace {

constexpr int kHashKind = 8;
constexpr int kLeafInts = 6;    // row0, col0, size, kind, k, table offset
constexpr int kLeafParams = 3;  // u, a, b (float64)

// Everything called inside the vectorised loops must inline, or the loop stays scalar.
#define RS_INLINE inline __attribute__((always_inline))

// e^t = p2 · (1 + em1) with p2 = 2^n, em1 = expm1(r), |r| ≤ ln2/2 (t ∈ [-126 ln2, 24 ln2]).
struct ExpParts {
  float p2, em1;
};

RS_INLINE ExpParts exp_parts(float t) {
  const float n = (t * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest (magic 1.5·2^23)
  const float r = (t - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;  // ln 2 in two parts
  const float em1 =
      r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r * (1.f / 720 + r * (1.f / 5040)))))));
  return {__builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23), em1};
}

RS_INLINE float exp_f(float t) {
  const ExpParts e = exp_parts(t);
  return e.p2 + e.p2 * e.em1;
}

// expm1 without the cancellation of exp(t) − 1 near 0 (t ≤ 24 ln 2, so p2 − 1 is exact)
RS_INLINE float expm1_f(float t) {
  const ExpParts e = exp_parts(t);
  return (e.p2 - 1.f) + e.p2 * e.em1;
}

// Ψ_kind(t), t ≥ 0; kind = 2·family + d_r (codecs/packed64.py's table).
template <int KIND>
RS_INLINE float radial(float t) {
  if constexpr (KIND == 0) {  // sinh t = (E + E/(E+1))/2, E = expm1 t: exact near 0
    const float E = expm1_f(t);
    return 0.5f * (E + E / (E + 1.f));
  } else if constexpr (KIND == 1) {  // cosh
    const float e = exp_f(t);
    return 0.5f * (e + 1.f / e);
  } else if constexpr (KIND == 2) {  // tanh t = E/(E+2), E = expm1 2t
    const float E = expm1_f(2.f * t);
    return E / (E + 2.f);
  } else if constexpr (KIND == 3) {  // sech² t
    const float e = exp_f(t), c = 0.5f * (e + 1.f / e);
    return 1.f / (c * c);
  } else if constexpr (KIND == 4) {  // exp(−t²)
    return exp_f(-t * t);
  } else if constexpr (KIND == 5) {  // −2t exp(−t²)
    return -2.f * t * exp_f(-t * t);
  } else if constexpr (KIND == 6) {  // sech t
    const float e = exp_f(t);
    return 2.f / (e + 1.f / e);
  } else {  // −sech t · tanh t = −2E·√(E+1)/(E+2)², E = expm1 2t
    static_assert(KIND == 7);
    const float E = expm1_f(2.f * t), d = E + 2.f;
    return -2.f * E * __builtin_sqrtf(E + 1.f) / (d * d);  // E ≥ 0: no errno path (-fno-math-errno)
  }
}

struct Leaf {
  int64_t row0, col0, s, k;
  float u, a, b;
  const float* table;  // this leaf size's grid tables
};

Leaf read_leaf(const int32_t* li, const double* lp, const float* tables) {
  return Leaf{li[0], li[1], li[2], li[4], static_cast<float>(lp[0]), static_cast<float>(lp[1]),
              static_cast<float>(lp[2]), tables + li[5]};
}

// Calls emit(i, w) for every row i ∈ [i0, i1) of the leaf, w its s generated values.
// psi and w are caller buffers of ≥ s floats.
template <int KIND, bool ANGULAR, class Emit>
void generate_polar(const Leaf& L, int64_t i0, int64_t i1, float* psi, float* w, Emit&& emit) {
  const int64_t s = L.s, ss = s * s;
  const float* rho = L.table;
  const float* S = L.table + ss * L.k;        // sin kθ (k ≥ 1)
  const float* C = L.table + ss * (3 + L.k);  // cos kθ
  const float u = L.u, a = L.a, b = L.b;
  for (int64_t m = 0; m < (s + 1) / 2; ++m) {  // rows m and s−1−m share Ψ
    const int64_t pair[2] = {m, s - 1 - m};
    const int n_rows = pair[1] == m ? 1 : 2;
    bool any = false;
    for (int r = 0; r < n_rows; ++r) any |= pair[r] >= i0 && pair[r] < i1;
    if (!any) continue;
    const float* rho_m = rho + m * s;
#pragma omp simd
    for (int64_t j = 0; j < s; ++j) psi[j] = radial<KIND>(u * rho_m[j]);
    for (int r = 0; r < n_rows; ++r) {
      const int64_t i = pair[r];
      if (i < i0 || i >= i1) continue;
      if constexpr (ANGULAR) {
        const float* Si = S + i * s;
        const float* Ci = C + i * s;
#pragma omp simd
        for (int64_t j = 0; j < s; ++j) w[j] = psi[j] * (a * Si[j] + b * Ci[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < s; ++j) w[j] = b * psi[j];
      }
      emit(i, w);
    }
  }
}

template <class Emit>
void generate_hash(const Leaf& L, int64_t i0, int64_t i1, float* w, Emit&& emit) {
  const int64_t s = L.s;
  for (int64_t i = i0; i < i1; ++i) {
    const float* mi = L.table + i * s;
#pragma omp simd
    for (int64_t j = 0; j < s; ++j) w[j] = L.a * mi[j];
    emit(i, w);
  }
}

// f(std::integral_constant<int, kind>{}): one switch turns the runtime kind into a template argument.
template <class F>
void dispatch_kind(int kind, F&& f) {
  switch (kind) {
    case 0: return f(std::integral_constant<int, 0>{});
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: TORCH_CHECK(false, "packed64: unknown leaf kind ", kind);
  }
}

// Rows [i0, i1) of one leaf (row indices local to the leaf) into emit(i, w).
template <class Emit>
void generate_leaf(const int32_t* li, const double* lp, const float* tables, int64_t i0, int64_t i1, float* psi,
                   float* w, Emit&& emit) {
  const Leaf L = read_leaf(li, lp, tables);
  const int kind = li[3];
  if (kind == kHashKind) return generate_hash(L, i0, i1, w, emit);
  dispatch_kind(kind, [&](auto K) {
    if (L.k == 0) generate_polar<K.value, false>(L, i0, i1, psi, w, emit);
    else generate_polar<K.value, true>(L, i0, i1, psi, w, emit);
  });
}


RS_INLINE float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += a[j] * b[j];
  return acc;
}

// The batch loop of `leaf_gemv_folded` for a compile-time half side H, NB batch rows per pass
// (their A, D accumulators stay in registers). Returns the first batch row it did not do.
template <int H, bool ANGULAR>
int64_t folded_rows(const Leaf& L, const float* x, int64_t B, int64_t Cp, float* y, int64_t Rp, const float* ps,
                    const float* pc, float sigma) {
  constexpr int NB = H >= 32 ? 1 : 2;
  const int64_t s = 2 * H;
  int64_t bb = 0;
  for (; bb + NB <= B; bb += NB) {
    float xp[NB][H], xm[NB][H], A[NB][H] = {}, D[NB][H] = {};
    for (int n = 0; n < NB; ++n) {
      const float* xb = x + (bb + n) * Cp + L.col0;
      for (int j = 0; j < H; ++j) {
        const float xl = xb[j], xr = sigma * xb[s - 1 - j];
        xp[n][j] = xl + xr;
        xm[n][j] = xl - xr;
      }
    }
    for (int j = 0; j < H; ++j) {
      const float* psj = ps + j * H;
      const float* pcj = pc + j * H;
      for (int n = 0; n < NB; ++n) {
        const float xpj = xp[n][j], xmj = xm[n][j];
#pragma omp simd
        for (int i = 0; i < H; ++i) {
          if constexpr (ANGULAR) A[n][i] += psj[i] * xmj;
          D[n][i] += pcj[i] * xpj;
        }
      }
    }
    for (int n = 0; n < NB; ++n) {
      float* yb = y + (bb + n) * Rp + L.row0;
      for (int i = 0; i < H; ++i) {
        const float a = ANGULAR ? L.a * A[n][i] : 0.f, d = L.b * D[n][i];
        yb[i] += a + d;
        yb[s - 1 - i] += d - a;
      }
    }
  }
  return bb;
}

// y += x Wᵀ over one polar leaf of even side s, by its symmetries (exact for the generator):
// mirroring a column (x_j → −x_j, θ → π − θ) maps sin kθ → −σ sin kθ and cos kθ → σ cos kθ with
// σ = (−1)^k, mirroring a row (θ → −θ) maps sin kθ → −sin kθ; ρ is unchanged by both. So with
// the folded input xp_j = x_j + σ x_{s−1−j}, xm_j = x_j − σ x_{s−1−j} (j < h = s/2) and, for
// i < h, A_i = Σ_{j<h} Ψ_ij sin(kθ_ij) xm_j, D_i = Σ_{j<h} Ψ_ij cos(kθ_ij) xp_j:
//     y_i = a A_i + b D_i,    y_{s−1−i} = −a A_i + b D_i
// — each Ψ value and each multiply-add serves four weights (k = 0: y_i = y_{s−1−i} = b D_i).
// The quadrant tables are stored column-major ([j][i]), so A and D accumulate as vectors over i
// with x_j broadcast: no horizontal sums. buf holds ≥ 2h² + 4h floats.
template <int KIND, bool ANGULAR>
void leaf_gemv_folded(const Leaf& L, const float* x, int64_t B, int64_t Cp, float* y, int64_t Rp, float* buf) {
  const int64_t s = L.s, h = s / 2, hh = h * h;
  const float* rho_q = L.table + 7 * s * s;  // quadrant tables [ρ | sin kθ (k=1..3) | cos kθ (k=1..3)], [j][i]
  const float* S_q = rho_q + hh * L.k;
  const float* C_q = rho_q + hh * (3 + L.k);
  const float sigma = ANGULAR && (L.k & 1) ? -1.f : 1.f;
  float* ps = buf;        // Ψ sin kθ over the quadrant, [j][i]
  float* pc = buf + hh;   // Ψ cos kθ (Ψ when k = 0)
  float* A = pc + hh;
  float* D = A + h;
  float* xp = D + h;
  float* xm = xp + h;
  const float u = L.u;
#pragma omp simd
  for (int64_t q = 0; q < hh; ++q) {
    const float psi = radial<KIND>(u * rho_q[q]);
    if constexpr (ANGULAR) {
      ps[q] = psi * S_q[q];
      pc[q] = psi * C_q[q];
    } else {
      pc[q] = psi;
    }
  }
  int64_t bb = 0;
  switch (h) {  // register-resident accumulators for the common sides, two batch rows per pass
    case 4: bb = folded_rows<4, ANGULAR>(L, x, B, Cp, y, Rp, ps, pc, sigma); break;
    case 8: bb = folded_rows<8, ANGULAR>(L, x, B, Cp, y, Rp, ps, pc, sigma); break;
    case 16: bb = folded_rows<16, ANGULAR>(L, x, B, Cp, y, Rp, ps, pc, sigma); break;
    case 32: bb = folded_rows<32, ANGULAR>(L, x, B, Cp, y, Rp, ps, pc, sigma); break;
    default: break;
  }
  for (; bb < B; ++bb) {
    const float* xb = x + bb * Cp + L.col0;
    for (int64_t j = 0; j < h; ++j) {
      const float xl = xb[j], xr = sigma * xb[s - 1 - j];
      xp[j] = xl + xr;
      xm[j] = xl - xr;
    }
    std::fill(A, A + 2 * h, 0.f);  // A and D
    for (int64_t j = 0; j < h; ++j) {
      const float xpj = xp[j], xmj = xm[j];
      const float* psj = ps + j * h;
      const float* pcj = pc + j * h;
#pragma omp simd
      for (int64_t i = 0; i < h; ++i) {
        if constexpr (ANGULAR) A[i] += psj[i] * xmj;
        D[i] += pcj[i] * xpj;
      }
    }
    float* yb = y + bb * Rp + L.row0;
    for (int64_t i = 0; i < h; ++i) {
      const float a = ANGULAR ? L.a * A[i] : 0.f, d = L.b * D[i];
      yb[i] += a + d;
      yb[s - 1 - i] += d - a;
    }
  }
}

// Validates the layout against the padded matrix (n_top_rows · block) × cols_pad: every table
// read and output write stays in bounds and each leaf lies in its own top block row (so threads
// never share an output row). A corrupt layout is an error, never a wild access.
int64_t check_layout(const torch::Tensor& leaves, const torch::Tensor& params, const torch::Tensor& row_start,
                     const torch::Tensor& tables, int64_t block, int64_t cols_pad) {
  TORCH_CHECK(leaves.scalar_type() == torch::kInt && leaves.is_contiguous() && leaves.dim() == 2 &&
                  leaves.size(1) == kLeafInts,
              "leaves must be contiguous int32 [n, 6]");
  TORCH_CHECK(params.scalar_type() == torch::kDouble && params.is_contiguous() && params.dim() == 2 &&
                  params.size(0) == leaves.size(0) && params.size(1) == kLeafParams,
              "params must be contiguous float64 [n, 3]");
  TORCH_CHECK(row_start.scalar_type() == torch::kLong && row_start.is_contiguous() && row_start.dim() == 1 &&
                  row_start.size(0) >= 2,
              "row_start must be contiguous int64 [top block rows + 1]");
  TORCH_CHECK(tables.scalar_type() == torch::kFloat && tables.is_contiguous(), "tables must be contiguous float32");
  TORCH_CHECK(block >= 1 && cols_pad >= block && cols_pad % block == 0,
              "columns must be padded to a positive number of whole top-level blocks");
  const int64_t n = leaves.size(0), n_top_rows = row_start.size(0) - 1;
  const int64_t* rs = row_start.data_ptr<int64_t>();
  const int32_t* li = leaves.data_ptr<int32_t>();
  TORCH_CHECK(rs[0] == 0 && rs[n_top_rows] == n, "row_start must run from 0 to the number of leaves");
  for (int64_t I = 0; I < n_top_rows; ++I) {
    TORCH_CHECK(rs[I] <= rs[I + 1], "row_start must be non-decreasing");
    for (int64_t l = rs[I]; l < rs[I + 1]; ++l) {
      const int32_t* leaf = li + l * kLeafInts;
      const int64_t row0 = leaf[0], col0 = leaf[1], s = leaf[2], kind = leaf[3], k = leaf[4], off = leaf[5];
      const int64_t n_tab = kind == kHashKind ? s * s : 7 * s * s + 7 * (s / 2) * (s / 2);
      TORCH_CHECK(s >= 1 && s <= block && row0 >= I * block && row0 + s <= (I + 1) * block && col0 >= 0 &&
                      col0 + s <= cols_pad && kind >= 0 && kind <= kHashKind && k >= 0 && k <= 3 && off >= 0 &&
                      off + n_tab <= tables.numel(),
                  "packed64: corrupt leaf ", l);
    }
  }
  return n_top_rows;
}

}  // namespace

// x: [B, Cp] fp32 (Cp = columns padded to the top block). Returns y: [B, rows_pad].
torch::Tensor packed64_gemv(torch::Tensor x, torch::Tensor leaves, torch::Tensor params, torch::Tensor row_start,
                            torch::Tensor tables, int64_t block) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(), "x must be contiguous fp32 [B, Cp]");
  const int64_t B = x.size(0), Cp = x.size(1);
  TORCH_CHECK(B >= 1, "empty batch");
  const int64_t n_top_rows = check_layout(leaves, params, row_start, tables, block, Cp);
  auto y = torch::zeros({B, n_top_rows * block}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int32_t* li = leaves.data_ptr<int32_t>();
  const double* lp = params.data_ptr<double>();
  const int64_t* rs = row_start.data_ptr<int64_t>();
  const float* tab = tables.data_ptr<float>();
  const int64_t Rp = y.size(1);
  at::parallel_for(0, n_top_rows, 1, [&](int64_t I0, int64_t I1) {
    std::vector<float> psi(block), w(block), buf(block * block / 2 + 2 * block);
    for (int64_t l = rs[I0]; l < rs[I1]; ++l) {
      const int32_t* leaf = li + l * kLeafInts;
      const int64_t row0 = leaf[0], col0 = leaf[1], s = leaf[2], kind = leaf[3];
      if (kind != kHashKind && s % 2 == 0) {  // polar: by the leaf's symmetries
        const Leaf L = read_leaf(leaf, lp + l * kLeafParams, tab);
        dispatch_kind(kind, [&](auto K) {
          if (L.k == 0) leaf_gemv_folded<K.value, false>(L, xp, B, Cp, yp, Rp, buf.data());
          else leaf_gemv_folded<K.value, true>(L, xp, B, Cp, yp, Rp, buf.data());
        });
        continue;
      }
      generate_leaf(leaf, lp + l * kLeafParams, tab, 0, s, psi.data(), w.data(), [&](int64_t i, const float* wr) {
        for (int64_t b = 0; b < B; ++b) yp[b * Rp + row0 + i] += dot(wr, xp + b * Cp + col0, s);
      });
    }
  });
  return y;
}

// Rows [r0, r1) of the padded W: [r1 − r0, cols_pad] fp32 (the tiled path's and backward's tile).
torch::Tensor packed64_rows(torch::Tensor leaves, torch::Tensor params, torch::Tensor row_start,
                            torch::Tensor tables, int64_t block, int64_t r0, int64_t r1, int64_t cols_pad) {
  const int64_t n_top_rows = check_layout(leaves, params, row_start, tables, block, cols_pad);
  TORCH_CHECK(0 <= r0 && r0 < r1 && r1 <= n_top_rows * block, "rows [r0, r1) outside the padded matrix");
  auto out = torch::zeros({r1 - r0, cols_pad}, torch::dtype(torch::kFloat));
  float* op = out.data_ptr<float>();
  const int32_t* li = leaves.data_ptr<int32_t>();
  const double* lp = params.data_ptr<double>();
  const int64_t* rs = row_start.data_ptr<int64_t>();
  const float* tab = tables.data_ptr<float>();
  const int64_t I_begin = r0 / block, I_end = (r1 - 1) / block + 1;
  at::parallel_for(I_begin, I_end, 1, [&](int64_t I0, int64_t I1) {
    std::vector<float> psi(block), w(block);
    for (int64_t l = rs[I0]; l < rs[I1]; ++l) {
      const int32_t* leaf = li + l * kLeafInts;
      const int64_t row0 = leaf[0], col0 = leaf[1], s = leaf[2];
      const int64_t i0 = std::max<int64_t>(0, r0 - row0), i1 = std::min<int64_t>(s, r1 - row0);
      if (i0 >= i1) continue;
      generate_leaf(leaf, lp + l * kLeafParams, tab, i0, i1, psi.data(), w.data(), [&](int64_t i, const float* wr) {
        std::copy(wr, wr + s, op + (row0 + i - r0) * cols_pad + col0);
      });
    }
  });
  return out;
}

static reality_stone::RegisterBindings bind_packed64([](pybind11::module_& m) {
  m.def("packed64_gemv", &packed64_gemv, "fused Packed64 GEMV/small-batch GEMM (leaves generated row by row)");
  m.def("packed64_rows", &packed64_rows, "rows [r0, r1) of a Packed64 weight, generated (tiled path, backward)");
});
