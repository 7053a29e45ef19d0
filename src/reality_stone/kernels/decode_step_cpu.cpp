// One decode step (a single token) through every decoder block of a Llama-family model whose
// projections are all group-quantised (int_lowbit_cpu.cpp layouts), in one call.
//
// Why: at batch 1 the weight kernels of a small model take less time than the ~190 eager torch
// ops per block around them (norms, rotary, cache writes, attention, residuals), each a few µs of
// dispatch. Here those are plain loops over a few thousand floats, and each projection is one
// `lowbit_gemv_row` into a preallocated buffer. The arithmetic is the
// Python Decoder's (reality_stone/models/decoder.py, `_step` with T = 1); tests compare both with
// the model's own forward pass and `generate` (tests/models/test_decoder.py).
//
// Per block b, tensors[b] holds, in order (an empty tensor where a part is absent):
//   0 norm1 weight [D]; 1-4 qkv codes, scale, offset, bias [(H+2KV)·d];
//   5-8 o codes, scale, offset, bias [D]; 9 norm2 weight [D];
//   10-13 gate_up codes, scale, offset, bias [2I]; 14-17 down codes, scale, offset, bias [D];
//   18 q_norm weight [d]; 19 k_norm weight [d]; 20 k cache [KV, L, d]; 21 v cache [KV, L, d]
// and ints[b] = {zero_point, group, bits, int8 activations} for qkv, o, gate_up, down (16 values).
#include "kernels.h"

#include <cmath>

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
  const torch::Tensor *codes, *scale, *offset, *bias;
  bool zero_point, int8;
  int64_t group, bits, in_padded, out;
};

Projection projection(const std::vector<torch::Tensor>& t, const std::vector<int64_t>& ints, int at, int which) {
  Projection p{&t[at], &t[at + 1], &t[at + 2], &t[at + 3], ints[4 * which] != 0, ints[4 * which + 3] != 0,
               ints[4 * which + 1], ints[4 * which + 2], 0, 0};
  TORCH_CHECK(p.codes->scalar_type() == torch::kUInt8 && p.codes->dim() == 2 && p.codes->is_contiguous(),
              "decode_step: codes must be contiguous uint8 [N, bytes]");
  TORCH_CHECK((p.bits == 2 || p.bits == 3 || p.bits == 4 || p.bits == 8) && p.codes->size(1) % (8 * p.bits) == 0, "decode_step: bad bits");
  p.in_padded = p.codes->size(1) / (8 * p.bits) * 64;
  p.out = p.codes->size(0);
  TORCH_CHECK(p.scale->scalar_type() == torch::kHalf && p.offset->scalar_type() == torch::kHalf &&
                  p.scale->is_contiguous() && p.offset->is_contiguous(),
              "decode_step: scale/offset must be contiguous fp16");
  TORCH_CHECK(p.bias->numel() == 0 || (p.bias->scalar_type() == torch::kFloat && p.bias->numel() == p.out &&
                                       p.bias->is_contiguous()),
              "decode_step: bias must be fp32 [N] or empty");
  return p;
}

// y[out] = W x[in] (+ bias); x is copied into a zero-padded buffer of the layout's width
void apply(const Projection& p, const float* x, int64_t in, std::vector<float>& pad, float* y) {
  TORCH_CHECK(in <= p.in_padded, "decode_step: input wider than the layout");
  pad.assign(p.in_padded, 0.f);
  std::copy(x, x + in, pad.begin());
  reality_stone::lowbit_gemv_row(pad.data(), *p.codes, *p.scale, *p.offset, p.zero_point, p.group, p.bits, p.int8, y);
  if (p.bias->numel()) {
    const float* b = p.bias->data_ptr<float>();
    for (int64_t i = 0; i < p.out; ++i) y[i] += b[i];
  }
}

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
  for (size_t b = 0; b < blocks.size(); ++b) {
    const auto& t = blocks[b];
    TORCH_CHECK(t.size() == 22 && ints[b].size() == 16, "decode_step: each block takes 22 tensors and 16 ints");
    const Projection qp = projection(t, ints[b], 1, 0), op = projection(t, ints[b], 5, 1),
                     gp = projection(t, ints[b], 10, 2), dp = projection(t, ints[b], 14, 3);
    TORCH_CHECK(qp.out == nqkv && op.out == D && gp.out == 2 * inter && dp.out == D,
                "decode_step: projection widths do not match the configuration");
    for (int i : {0, 9})
      TORCH_CHECK(t[i].numel() == D && t[i].scalar_type() == torch::kFloat && t[i].is_contiguous(),
                  "decode_step: norm weights must be fp32 [D]");
    const torch::Tensor &kc = t[20], &vc = t[21];
    TORCH_CHECK(kc.dim() == 3 && kc.size(0) == KV && kc.size(2) == d && kc.is_contiguous() && vc.sizes() == kc.sizes() &&
                    vc.is_contiguous() && kc.scalar_type() == torch::kFloat && vc.scalar_type() == torch::kFloat,
                "decode_step: caches must be contiguous fp32 [KV, L, d]");
    const int64_t L = kc.size(1);
    TORCH_CHECK(pos >= 0 && pos < L, "decode_step: position ", pos, " outside the cache of ", L);

    rms_norm(xp, t[0].data_ptr<float>(), D, eps, h.data());
    apply(qp, h.data(), D, pad, qkv.data());
    float* q = qkv.data();
    float* k = q + H * d;
    const float* v = k + KV * d;
    const bool qk_norm = t[18].numel() > 0;
    TORCH_CHECK(!qk_norm || (t[18].numel() == d && t[19].numel() == d), "decode_step: q/k norm weights must be [d]");
    for (int64_t j = 0; j < H + KV; ++j) {
      float* head = q + j * d;  // q heads, then k heads (contiguous)
      if (qk_norm) rms_norm(head, t[j < H ? 18 : 19].data_ptr<float>(), d, qk_eps, head);
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
    apply(op, att.data(), H * d, pad, tmp.data());
    for (int64_t i = 0; i < D; ++i) xp[i] += tmp[i];
    rms_norm(xp, t[9].data_ptr<float>(), D, eps, h.data());
    apply(gp, h.data(), D, pad, gu.data());
    for (int64_t i = 0; i < inter; ++i) {
      const float g = gu[i];
      act[i] = g / (1.f + std::exp(-g)) * gu[inter + i];  // SiLU(gate) · up
    }
    apply(dp, act.data(), inter, pad, tmp.data());
    for (int64_t i = 0; i < D; ++i) xp[i] += tmp[i];
  }
}

}  // namespace

static reality_stone::RegisterBindings bind_decode_step([](pybind11::module_& m) {
  m.def("decode_step", &decode_step, "one token through every block of a group-quantised Llama-family model");
});
