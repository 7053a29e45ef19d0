// One decode step (a single token) through every decoder block of a Llama-family model whose
// projections are all compressed layouts with a fused CPU kernel — group-quantised
// (int_lowbit_cpu.cpp) or seed basis (seedbasis_cpu.cpp) — in one call.
//
// Why: at batch 1 the weight kernels of a small model take less time than the ~190 eager torch
// ops per block around them (norms, rotary, cache writes, attention, residuals), each a few µs of
// dispatch. Here those are plain loops over a few thousand floats, and each projection is one
// `lowbit_gemv_row` / `seedbasis_gemv_rows` call into a preallocated buffer. The arithmetic is the
// Python Decoder's (reality_stone/models/decoder.py, `_step` with T = 1); tests compare both with
// the model's own forward pass and `generate` (tests/models/test_decoder.py).
//
// Per block b, tensors[b] holds, in order (an empty tensor where a part is absent):
//   0 norm1 weight [D]; 1 norm2 weight [D]; 2 q_norm weight [d]; 3 k_norm weight [d];
//   4 + 4i … 7 + 4i: projection slot i (i = 0 … 6: q, k, v, o, gate, up, down), 4 tensors each;
//   32 k cache [KV, L, d]; 33 v cache [KV, L, d]
// and ints[b] 6 per slot (42 values): {kind, …}. Slots that read one input run in order and write
// one after another (q, k, v → [q | k | v]; gate, up → [gate | up]), so a stacked q/k/v layout sits
// in slot q with k and v empty (kind 0). Kinds:
//   1 group-quantised: tensors codes, scale, offset, bias; ints {1, zero_point, group, bits, int8, 0}
//   2 seed basis: tensors records, pattern table (`seedbasis_gemv_table`), row scales fp32 [Np],
//     bias; ints {2, S, E, Q, P, rows}
//   3 seed basis, int8 activations: the same, with the pattern ids as uint8 [2^S, 4] (padded
//     with any id) for the table; ints {3, S, E, Q, P, rows}
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace {

void rms_norm(const float* x, const float* w, int64_t n, double eps, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

// out = x·cos + roll(x, d/2)·sin, sin sign-folded (Decoder._rotary_tables): HF's rotate_half form
void rope(float* x, const float* cos, const float* sin, int64_t d) {
  float tmp[1024];
  const int64_t half = d / 2;
  for (int64_t i = 0; i < d; ++i) tmp[i] = x[i] * cos[i] + x[(i + half) % d] * sin[i];
  std::copy(tmp, tmp + d, x);
}

struct Projection {
  int kind = 0;  // 0 absent, 1 group-quantised, 2 seed basis, 3 seed basis with int8 activations
  const torch::Tensor *a = nullptr, *b = nullptr, *c = nullptr, *bias = nullptr;
  bool zero_point = false, int8 = false;
  int64_t group = 0, bits = 0, in_padded = 0, out = 0;
  int S = 0, E = 0, Q = 0, P = 0;
};

// slot `which` of a block: tensors from `at`, ints from 6·which; `in`: the width it reads
// `checked`: the pattern tables (start, size) already checked in this call
Projection projection(const std::vector<torch::Tensor>& t, const std::vector<int64_t>& ints, int at, int which,
                      int64_t in, std::vector<std::pair<const void*, int64_t>>& checked) {
  const int64_t* v = ints.data() + 6 * which;
  Projection p;
  p.kind = static_cast<int>(v[0]);
  p.a = &t[at];
  p.b = &t[at + 1];
  p.c = &t[at + 2];
  p.bias = &t[at + 3];
  if (p.kind == 0) return p;
  if (p.kind == 1) {
    p.zero_point = v[1] != 0;
    p.group = v[2];
    p.bits = v[3];
    p.int8 = v[4] != 0;
    TORCH_CHECK(p.a->scalar_type() == torch::kUInt8 && p.a->dim() == 2 && p.a->is_contiguous(),
                "decode_step: codes must be contiguous uint8 [N, bytes]");
    TORCH_CHECK((p.bits == 2 || p.bits == 3 || p.bits == 4 || p.bits == 8) && p.a->size(1) % (8 * p.bits) == 0,
                "decode_step: bad bits");
    p.in_padded = p.a->size(1) / (8 * p.bits) * 64;
    p.out = p.a->size(0);
    TORCH_CHECK(p.b->scalar_type() == torch::kHalf && p.c->scalar_type() == torch::kHalf && p.b->is_contiguous() &&
                    p.c->is_contiguous(),
                "decode_step: scale/offset must be contiguous fp16");
    TORCH_CHECK(in <= p.in_padded, "decode_step: input wider than the layout");
  } else if (p.kind == 2 || p.kind == 3) {
    p.S = static_cast<int>(v[1]);
    p.E = static_cast<int>(v[2]);
    p.Q = static_cast<int>(v[3]);
    p.P = static_cast<int>(v[4]);
    p.out = v[5];
    TORCH_CHECK(p.S >= 1 && p.S <= 16 && p.E >= 0 && p.E <= 4 && p.Q >= 1 && p.Q <= 4 && p.P >= 1 && p.P <= 8,
                "decode_step: seed-basis field widths out of range");
    const int64_t PL = p.P <= 4 ? 4 : 8;
    if (p.kind == 3) {  // every uint8 id indexes the 256 sign sums
      TORCH_CHECK(reality_stone::seedbasis_a8_supported(p.S, p.E, p.P, p.Q),
                  "decode_step: the seed-basis int8-activation kernel does not take this format or CPU");
      TORCH_CHECK(p.b->scalar_type() == torch::kUInt8 && p.b->is_contiguous() && p.b->dim() == 2 &&
                      p.b->size(0) == (int64_t{1} << p.S) && p.b->size(1) == 4,
                  "decode_step: seed-basis int8 pattern table must be contiguous uint8 [2^S, 4]");
    } else {
      TORCH_CHECK(p.b->scalar_type() == torch::kInt && p.b->is_contiguous() && p.b->dim() == 2 &&
                      p.b->size(0) == (int64_t{1} << p.S) && p.b->size(1) == PL,
                  "decode_step: seed-basis pattern table must be contiguous int32 [2^S, ", PL, "]");
    }
    // the kernel indexes 257 sign sums with them (one table serves every layer of a configuration:
    // checked once per call, in one vectorisable pass)
    const std::pair<const void*, int64_t> key{p.b->data_ptr(), p.b->numel()};
    if (p.kind == 2 && std::find(checked.begin(), checked.end(), key) == checked.end()) {
      const uint32_t* pat = reinterpret_cast<const uint32_t*>(p.b->data_ptr<int32_t>());
      const int64_t n = p.b->numel();
      uint32_t worst = 0;
      for (int64_t k = 0; k < n; ++k) worst = std::max(worst, pat[k]);
      TORCH_CHECK(worst <= 256, "decode_step: seed-basis pattern ids must be in [0, 256]");
      checked.push_back(key);
    }
    TORCH_CHECK(p.c->scalar_type() == torch::kFloat && p.c->is_contiguous() && p.c->dim() == 1 &&
                    p.c->size(0) % 8 == 0 && p.out >= 1 && p.out <= p.c->size(0) && p.c->size(0) - p.out < 8,
                "decode_step: seed-basis row scales must be contiguous fp32 [Np], Np the rows padded to 8");
    const int64_t R = p.S + p.E + p.P * p.Q, nb = (in + 7) / 8;
    TORCH_CHECK(p.a->scalar_type() == torch::kUInt8 && p.a->is_contiguous() && p.a->dim() == 1 &&
                    p.a->numel() == p.c->size(0) / 8 * nb * R + 16,
                "decode_step: seed-basis records must be contiguous uint8 of G·nb·R + 16 bytes");
  } else {
    TORCH_CHECK(false, "decode_step: unknown projection kind ", p.kind);
  }
  TORCH_CHECK(p.bias->numel() == 0 || (p.bias->scalar_type() == torch::kFloat && p.bias->numel() == p.out &&
                                       p.bias->is_contiguous()),
              "decode_step: bias must be fp32 [N] or empty");
  return p;
}

void add_bias(const Projection& p, float* y) {
  if (p.bias->numel()) {
    const float* b = p.bias->data_ptr<float>();
    for (int64_t i = 0; i < p.out; ++i) y[i] += b[i];
  }
}

// the slots [first, last] of a block, read from one input of width `in`, writing `width` outputs
// one after another
struct Group {
  std::vector<Projection> parts;
  Group(const std::vector<torch::Tensor>& t, const std::vector<int64_t>& ints, int first, int last, int64_t in,
        int64_t width, std::vector<std::pair<const void*, int64_t>>& checked) {
    int64_t n = 0;
    for (int i = first; i <= last; ++i) {
      Projection p = projection(t, ints, 4 + 4 * i, i, in, checked);
      if (p.kind == 0) continue;
      n += p.out;
      parts.push_back(p);
    }
    TORCH_CHECK(!parts.empty() && n == width, "decode_step: projection widths do not match the configuration");
  }
  static bool same_seedbasis(const Projection& a, const Projection& b) {
    return a.kind >= 2 && a.kind == b.kind && a.b->data_ptr() == b.b->data_ptr() && a.b->numel() == b.b->numel() &&
           a.S == b.S && a.E == b.E && a.Q == b.Q && a.P == b.P;
  }
  // y = [W_1 x | W_2 x | …] (+ biases); group-quantised: x copied into a zero-padded buffer of the
  // layout's width; consecutive seed-basis weights of one format: one kernel call (x's tables once)
  void operator()(const float* x, int64_t in, std::vector<float>& pad, float* y) const {
    for (size_t i = 0; i < parts.size();) {
      const Projection& p = parts[i];
      if (p.kind == 1) {
        pad.assign(p.in_padded, 0.f);
        std::copy(x, x + in, pad.begin());
        reality_stone::lowbit_gemv_row(pad.data(), *p.a, *p.b, *p.c, p.zero_point, p.group, p.bits, p.int8, y);
        add_bias(p, y);
        y += p.out;
        ++i;
        continue;
      }
      std::vector<reality_stone::SeedbasisWeight> run;
      size_t k = i;
      for (float* yk = y; k < parts.size() && (k == i || same_seedbasis(p, parts[k])); yk += parts[k].out, ++k)
        run.push_back({parts[k].a->data_ptr<uint8_t>(), parts[k].c->data_ptr<float>(), parts[k].c->size(0),
                       parts[k].out, yk});
      if (p.kind == 3)
        reality_stone::seedbasis_gemm_a8_rows(x, 1, in, run.data(), static_cast<int>(run.size()), 0,
                                              p.b->data_ptr<uint8_t>(), p.S, p.E, p.P, p.Q);
      else
        reality_stone::seedbasis_gemv_rows(x, in, run.data(), static_cast<int>(run.size()), p.b->data_ptr<int32_t>(),
                                           p.b->size(1), p.S, p.E, p.P, p.Q);
      for (; i < k; ++i) {
        add_bias(parts[i], y);
        y += parts[i].out;
      }
    }
  }
};

// x: the residual stream [D] fp32, updated in place. cos/sin: the rotary rows [d] of position pos.
void decode_step(torch::Tensor x, int64_t pos, const std::vector<std::vector<torch::Tensor>>& blocks,
                 const std::vector<std::vector<int64_t>>& ints, torch::Tensor cos, torch::Tensor sin, int64_t H,
                 int64_t KV, int64_t d, int64_t inter, double eps, double qk_eps, double scaling) {
  TORCH_CHECK(x.dim() == 1 && x.scalar_type() == torch::kFloat && x.is_contiguous(), "decode_step: x must be fp32 [D]");
  TORCH_CHECK(cos.numel() == d && sin.numel() == d && cos.is_contiguous() && sin.is_contiguous() &&
                  cos.scalar_type() == torch::kFloat && sin.scalar_type() == torch::kFloat,
              "decode_step: cos/sin must be fp32 [d]");
  TORCH_CHECK(H >= 1 && KV >= 1 && H % KV == 0 && d >= 2 && d % 2 == 0 && d <= 1024 && inter >= 1,
              "decode_step: bad head configuration");
  TORCH_CHECK(blocks.size() == ints.size(), "decode_step: one ints entry per block");
  const int64_t D = x.size(0), G = H / KV, nqkv = (H + 2 * KV) * d;
  float* xp = x.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  std::vector<float> h(D), pad, qkv(nqkv), att(H * d), tmp(D), gu(2 * inter), act(inter);
  std::vector<std::pair<const void*, int64_t>> checked;
  for (size_t b = 0; b < blocks.size(); ++b) {
    const auto& t = blocks[b];
    TORCH_CHECK(t.size() == 34 && ints[b].size() == 42, "decode_step: each block takes 34 tensors and 42 ints");
    const Group qkv_p(t, ints[b], 0, 2, D, nqkv, checked), o_p(t, ints[b], 3, 3, H * d, D, checked),
        gu_p(t, ints[b], 4, 5, D, 2 * inter, checked), down_p(t, ints[b], 6, 6, inter, D, checked);
    for (int i : {0, 1})
      TORCH_CHECK(t[i].numel() == D && t[i].scalar_type() == torch::kFloat && t[i].is_contiguous(),
                  "decode_step: norm weights must be fp32 [D]");
    const torch::Tensor &kc = t[32], &vc = t[33];
    TORCH_CHECK(kc.dim() == 3 && kc.size(0) == KV && kc.size(2) == d && kc.is_contiguous() && vc.sizes() == kc.sizes() &&
                    vc.is_contiguous() && kc.scalar_type() == torch::kFloat && vc.scalar_type() == torch::kFloat,
                "decode_step: caches must be contiguous fp32 [KV, L, d]");
    const int64_t L = kc.size(1);
    TORCH_CHECK(pos >= 0 && pos < L, "decode_step: position ", pos, " outside the cache of ", L);

    rms_norm(xp, t[0].data_ptr<float>(), D, eps, h.data());
    qkv_p(h.data(), D, pad, qkv.data());
    float* q = qkv.data();
    float* k = q + H * d;
    const float* v = k + KV * d;
    const bool qk_norm = t[2].numel() > 0;
    TORCH_CHECK(!qk_norm || (t[2].numel() == d && t[3].numel() == d && t[2].scalar_type() == torch::kFloat &&
                             t[3].scalar_type() == torch::kFloat && t[2].is_contiguous() && t[3].is_contiguous()),
                "decode_step: q/k norm weights must be fp32 [d]");
    for (int64_t j = 0; j < H + KV; ++j) {
      float* head = q + j * d;  // q heads, then k heads (contiguous)
      if (qk_norm) rms_norm(head, t[j < H ? 2 : 3].data_ptr<float>(), d, qk_eps, head);
      rope(head, cp, sp, d);
    }
    float *kcp = kc.data_ptr<float>(), *vcp = vc.data_ptr<float>();
    for (int64_t j = 0; j < KV; ++j) {
      std::copy(k + j * d, k + (j + 1) * d, kcp + (j * L + pos) * d);
      std::copy(v + j * d, v + (j + 1) * d, vcp + (j * L + pos) * d);
    }
    const int64_t n = pos + 1;
    at::parallel_for(0, H, 1, [&](int64_t h0, int64_t h1) {
      std::vector<float> p(n);
      for (int64_t hh = h0; hh < h1; ++hh) {
        const float* qh = q + hh * d;
        const float* keys = kcp + (hh / G) * L * d;
        const float* vals = vcp + (hh / G) * L * d;
        float mx = -INFINITY;
        for (int64_t s = 0; s < n; ++s) {
          float acc = 0.f;
          for (int64_t i = 0; i < d; ++i) acc += qh[i] * keys[s * d + i];
          p[s] = acc * static_cast<float>(scaling);
          mx = std::max(mx, p[s]);
        }
        float sum = 0.f;
        for (int64_t s = 0; s < n; ++s) sum += (p[s] = std::exp(p[s] - mx));
        float* out = att.data() + hh * d;
        std::fill(out, out + d, 0.f);
        for (int64_t s = 0; s < n; ++s) {
          const float w = p[s] / sum;
          for (int64_t i = 0; i < d; ++i) out[i] += w * vals[s * d + i];
        }
      }
    });
    o_p(att.data(), H * d, pad, tmp.data());
    for (int64_t i = 0; i < D; ++i) xp[i] += tmp[i];
    rms_norm(xp, t[1].data_ptr<float>(), D, eps, h.data());
    gu_p(h.data(), D, pad, gu.data());
    for (int64_t i = 0; i < inter; ++i) {
      const float g = gu[i];
      act[i] = g / (1.f + std::exp(-g)) * gu[inter + i];  // SiLU(gate) · up
    }
    down_p(act.data(), inter, pad, tmp.data());
    for (int64_t i = 0; i < D; ++i) xp[i] += tmp[i];
  }
}

}  // namespace

static reality_stone::RegisterBindings bind_decode_step([](pybind11::module_& m) {
  m.def("decode_step", &decode_step, "one token through every block of a Llama-family model with fused compressed projections");
});
