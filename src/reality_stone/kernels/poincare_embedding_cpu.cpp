// One training step of Poincaré embeddings (Nickel & Kiela 2017) with sparse Riemannian Adam, fused.
//
// Why a kernel: with D = 5..10 coordinates per point every torch op of the reference step
// (autograd over poincare.dist, sparse-gradient coalesce, expmap and gyration-based transport on
// the touched rows) is a pass over a few MB that does a handful of flops; an 82k-node WordNet
// batch of 1024 edges × 51 candidates took ~50 ms in ~100 such passes. Here each candidate's
// distance and gradient are computed once, and each touched row is updated in one visit: ~10 ms
// per batch on 2 threads, bound by memory (a batch touches ~39k of the 82k rows, and each
// touched row's point, moments and gradient are read and written).
//
// The maths is the reference's (`reality_stone.hierarchy`, torch path + `optim.RiemannianAdam`):
//   d(u, v) = arcosh(1 + t)/√c,  t = 2c‖u − v‖² / ((1 − c‖u‖²)(1 − c‖v‖²))
//   loss    = mean over edges of  d(u, v₀) + log Σ_{k valid} exp(−d(u, v_k))   (v₀ the positive)
//   ∂t/∂u   = 4c/(αβ) · ((u − v) + c‖u − v‖²/α · u),  α = 1 − c‖u‖², β = 1 − c‖v‖²
// A negative v_k is invalid (left out of the softmax) when it is u or one of u's closure
// neighbours (CSR rows with sorted columns). The Euclidean gradient is accumulated per touched
// row in a fixed order (deterministic for any thread count), then each touched row takes the
// lazy Riemannian Adam step of optim.RiemannianAdam._sparse_step: rgrad = g/λ², second moment
// λ²‖rgrad‖² (one scalar per row), x ← proj(x ⊕ tanh(√c λ‖s‖/2) s/(√c‖s‖)), first moment
// transported by gyr[x', −x] · λ_x/λ_x'.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr double kMinNorm = 1e-15;  // geometry/stable.py MIN_NORM

// Prefetch distance (candidates ahead) for the table rows the loops read in random order: on an
// 82k-row table each read is a cache miss, and latency, not arithmetic, set the pace (36 ms per
// 1024 × 51 batch on one thread before, most of it waiting on rows).
constexpr int64_t kAhead = 8;

template <typename T>
double step_impl(torch::Tensor weight, torch::Tensor exp_avg, torch::Tensor exp_avg_sq, const torch::Tensor& u,
                 const torch::Tensor& cand, const torch::Tensor& ptr, const torch::Tensor& cols,
                 torch::Tensor grad_buf, double c, double lr, double b1, double b2, double eps, int64_t step,
                 double boundary_eps) {
  const int64_t n = weight.size(0), D = weight.size(1), B = cand.size(0), K1 = cand.size(1);
  T* W = weight.data_ptr<T>();
  T* M = exp_avg.data_ptr<T>();
  T* V = exp_avg_sq.data_ptr<T>();
  double* Gr = grad_buf.data_ptr<double>();
  const int64_t* U = u.data_ptr<int64_t>();
  const int64_t* C = cand.data_ptr<int64_t>();
  const int64_t* P = ptr.data_ptr<int64_t>();
  const int64_t* N = cols.data_ptr<int64_t>();
  const double sc = std::sqrt(c), inv_sc = 1 / sc;

  // Phase A (parallel over edges): distances, softmax, and each candidate's gradient
  //   ∂L/∂v_k = G_k (v_k − u) + G_k c sq_k/β_k · v_k,  ∂L/∂u = Σ_k G_k (u − v_k) + (Σ_k G_k c sq_k/α) u
  // written in order to gc (B, K1, D) and gu (B, D).
  std::vector<double> gc(B * K1 * D), gu(B * D), loss(B);
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1_) {
    std::vector<double> d(K1), sq(K1), t(K1), beta(K1), e(K1);  // beta holds 1/β
    std::vector<char> valid(K1);
    for (int64_t b = b0; b < b1_; ++b) {
      const T* x = W + U[b] * D;
      const int64_t* cb = C + b * K1;
      double x2 = 0;
      for (int64_t j = 0; j < D; ++j) x2 += double(x[j]) * x[j];
      const double alpha = std::max(1 - c * x2, kMinNorm), inv_alpha = 1 / alpha;
      const int64_t* nb = N + P[U[b]];
      const int64_t deg = P[U[b] + 1] - P[U[b]];
      double dmin = INFINITY;
      for (int64_t k = 0; k < K1; ++k) {
        if (k + kAhead < K1) __builtin_prefetch(W + cb[k + kAhead] * D);
        const int64_t v = cb[k];
        valid[k] = k == 0 || (v != U[b] && !std::binary_search(nb, nb + deg, v));
        const T* y = W + v * D;
        double y2 = 0, s = 0;
        for (int64_t j = 0; j < D; ++j) {
          const double diff = double(x[j]) - double(y[j]);
          y2 += double(y[j]) * y[j];
          s += diff * diff;
        }
        beta[k] = 1 / std::max(1 - c * y2, kMinNorm);  // 1/β: multiplied below, never divided by
        sq[k] = s;
        t[k] = 2 * c * s * inv_alpha * beta[k];
        d[k] = std::log1p(t[k] + std::sqrt(t[k] * (t[k] + 2))) * inv_sc;
        if (valid[k]) dmin = std::min(dmin, d[k]);
      }
      double z = 0;
      for (int64_t k = 0; k < K1; ++k) {
        e[k] = valid[k] ? std::exp(dmin - d[k]) : 0.0;
        z += e[k];
      }
      loss[b] = d[0] - dmin + std::log(z);
      double* gub = gu.data() + b * D;
      for (int64_t j = 0; j < D; ++j) gub[j] = 0;
      double self = 0;
      for (int64_t k = 0; k < K1; ++k) {
        const double dl_dd = ((k == 0 ? 1.0 : 0.0) - e[k] / z) / double(B);
        // ∂d/∂t = 1/(√c √(t(t+2))); at t = 0 (u = v) the direction (u − v) is 0 as well
        const double g = dl_dd * (4 * c * inv_sc) * inv_alpha * beta[k] / std::max(std::sqrt(t[k] * (t[k] + 2)), kMinNorm);
        const double h = g * c * sq[k] * beta[k];
        self += g * c * sq[k] * inv_alpha;
        const T* y = W + cb[k] * D;  // in cache since the loop above
        double* g_out = gc.data() + (b * K1 + k) * D;
        for (int64_t j = 0; j < D; ++j) {
          const double diff = double(x[j]) - double(y[j]);
          gub[j] += g * diff;
          g_out[j] = h * y[j] - g * diff;
        }
      }
      for (int64_t j = 0; j < D; ++j) gub[j] += self * x[j];
    }
  });

  // Phase B (serial, fixed order: deterministic for any thread count): sum into the dense
  // gradient buffer, list the touched rows.
  std::vector<uint8_t> touched(n, 0);
  std::vector<int64_t> rows;
  rows.reserve(B * (K1 + 1));
  auto touch = [&](int64_t i) {
    if (!touched[i]) touched[i] = 1, rows.push_back(i);
  };
  for (int64_t b = 0; b < B; ++b) {
    double* gx = Gr + U[b] * D;
    touch(U[b]);
    for (int64_t j = 0; j < D; ++j) gx[j] += gu[b * D + j];
    for (int64_t k = 0; k < K1; ++k) {
      const int64_t q = b * K1 + k;
      if (q + kAhead < B * K1) __builtin_prefetch(Gr + C[q + kAhead] * D, 1);
      double* gy = Gr + C[q] * D;
      touch(C[q]);
      const double* src = gc.data() + q * D;
      for (int64_t j = 0; j < D; ++j) gy[j] += src[j];
    }
  }

  // Phase C (parallel over the touched rows in table order — a batch of 1024 touches ~half of
  // an 82k table, so visiting rows in index order streams the table instead of jumping): lazy
  // Riemannian Adam on each, as optim.RiemannianAdam._sparse_step; the buffer's rows are re-zeroed.
  if (int64_t(rows.size()) * 8 >= n) {  // many rows: collect them in order from the flags
    rows.clear();
    for (int64_t i = 0; i < n; ++i)
      if (touched[i]) rows.push_back(i);
  } else {
    std::sort(rows.begin(), rows.end());
  }
  const int64_t R = int64_t(rows.size());
  const double bc1 = 1 - std::pow(b1, double(step)), bc2 = 1 - std::pow(b2, double(step));
  const double maxnorm = (1 - boundary_eps) / sc;
  at::parallel_for(0, R, 256, [&](int64_t r0, int64_t r1) {
    std::vector<double> x(D), m(D), s(D), y(D);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = rows[r];
      double* grad = Gr + i * D;
      double x2 = 0;
      for (int64_t j = 0; j < D; ++j) x[j] = W[i * D + j], x2 += x[j] * x[j];
      const double lam = 2 / std::max(1 - c * x2, kMinNorm), inv_lam2 = 1 / (lam * lam);
      double rg2 = 0;
      for (int64_t j = 0; j < D; ++j) {
        const double rg = grad[j] * inv_lam2;
        grad[j] = 0;
        rg2 += rg * rg;
        m[j] = b1 * double(M[i * D + j]) + (1 - b1) * rg;
      }
      const double v = b2 * double(V[i]) + (1 - b2) * lam * lam * rg2;
      const double step_scale = -lr / (bc1 * (std::sqrt(v / bc2) + eps));
      double s2 = 0;
      for (int64_t j = 0; j < D; ++j) s[j] = step_scale * m[j], s2 += s[j] * s[j];
      // expmap_x(s) = x ⊕ tanh(√c λ‖s‖/2) s/(√c‖s‖)
      const double sn = std::max(std::sqrt(s2), kMinNorm);
      const double f = std::tanh(sc * lam * sn / 2) / (sc * sn);
      double e2 = 0, xe = 0;
      for (int64_t j = 0; j < D; ++j) s[j] *= f, e2 += s[j] * s[j], xe += x[j] * s[j];
      const double den = std::max(1 + 2 * c * xe + c * c * x2 * e2, kMinNorm);
      const double ca = (1 + 2 * c * xe + c * e2) / den, cb = (1 - c * x2) / den;
      double y2 = 0;
      for (int64_t j = 0; j < D; ++j) y[j] = ca * x[j] + cb * s[j], y2 += y[j] * y[j];
      const double yn = std::max(std::sqrt(y2), kMinNorm);
      if (yn > maxnorm) {
        const double p = maxnorm / yn;
        for (int64_t j = 0; j < D; ++j) y[j] *= p;
        y2 = 0;
        for (int64_t j = 0; j < D; ++j) y2 += y[j] * y[j];
      }
      // first moment transported: gyr[y, −x] m · λ_x/λ_y (Ungar's closed form, as poincare._gyration)
      double uv = 0, uw = 0, vw = 0;
      for (int64_t j = 0; j < D; ++j) uv -= y[j] * x[j], uw += y[j] * m[j], vw -= x[j] * m[j];
      const double a = -c * c * uw * x2 + c * vw + 2 * c * c * uv * vw;
      const double bb = -c * c * vw * y2 - c * uw;
      const double two_dd = 2 / std::max(1 + 2 * c * uv + c * c * y2 * x2, kMinNorm);
      const double ratio = lam * std::max(1 - c * y2, kMinNorm) / 2;  // λ_x/λ_y
      for (int64_t j = 0; j < D; ++j) {
        M[i * D + j] = T((m[j] + (a * y[j] - bb * x[j]) * two_dd) * ratio);
        W[i * D + j] = T(y[j]);
      }
      V[i] = T(v);
    }
  });
  double total = 0;
  for (int64_t b = 0; b < B; ++b) total += loss[b];
  return total / double(B);
}

double poincare_embedding_step(torch::Tensor weight, torch::Tensor exp_avg, torch::Tensor exp_avg_sq,
                               torch::Tensor u, torch::Tensor cand, torch::Tensor ptr, torch::Tensor cols,
                               torch::Tensor grad_buf, double c, double lr, double b1, double b2, double eps, int64_t step, double boundary_eps) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "weight must be a contiguous (n, D) table");
  TORCH_CHECK(weight.scalar_type() == torch::kFloat32 || weight.scalar_type() == torch::kFloat64,
              "weight must be float32 or float64");
  const int64_t n = weight.size(0), D = weight.size(1);
  TORCH_CHECK(exp_avg.sizes() == weight.sizes() && exp_avg.scalar_type() == weight.scalar_type() &&
                  exp_avg.is_contiguous(), "exp_avg must be a contiguous table like weight");
  TORCH_CHECK(exp_avg_sq.numel() == n && exp_avg_sq.scalar_type() == weight.scalar_type() &&
                  exp_avg_sq.is_contiguous(), "exp_avg_sq must be contiguous (n, 1) like weight");
  TORCH_CHECK(cand.dim() == 2 && cand.size(1) >= 1 && u.dim() == 1 && u.size(0) == cand.size(0),
              "u must be (B,) and cand (B, K+1)");
  TORCH_CHECK(u.scalar_type() == torch::kInt64 && cand.scalar_type() == torch::kInt64 && u.is_contiguous() &&
                  cand.is_contiguous(), "u and cand must be contiguous int64");
  TORCH_CHECK(ptr.numel() == n + 1 && ptr.scalar_type() == torch::kInt64 && cols.scalar_type() == torch::kInt64 &&
                  ptr.is_contiguous() && cols.is_contiguous(), "ptr must be (n+1,) and cols (E,), contiguous int64");
  TORCH_CHECK(grad_buf.sizes() == weight.sizes() && grad_buf.scalar_type() == torch::kFloat64 &&
                  grad_buf.is_contiguous(), "grad_buf must be a contiguous float64 table like weight (all zero)");
  TORCH_CHECK(D >= 1 && c > 0 && step >= 1, "need D >= 1, c > 0, step >= 1");
  if (u.numel()) {
    TORCH_CHECK(u.min().item<int64_t>() >= 0 && u.max().item<int64_t>() < n, "u holds an index outside [0, n)");
    TORCH_CHECK(cand.min().item<int64_t>() >= 0 && cand.max().item<int64_t>() < n,
                "cand holds an index outside [0, n)");
  }
  if (weight.scalar_type() == torch::kFloat64)
    return step_impl<double>(weight, exp_avg, exp_avg_sq, u, cand, ptr, cols, grad_buf, c, lr, b1, b2, eps, step, boundary_eps);
  return step_impl<float>(weight, exp_avg, exp_avg_sq, u, cand, ptr, cols, grad_buf, c, lr, b1, b2, eps, step, boundary_eps);
}

}  // namespace

static reality_stone::RegisterBindings bind_poincare_embedding([](pybind11::module_& m) {
  m.def("poincare_embedding_step", &poincare_embedding_step,
        "one fused Poincaré-embedding training step (softmax loss over candidates, lazy Riemannian Adam)");
});
