// Prototype CPU kernels for one question: how much faster would CPU inference get if each
// edge-gated graph convolution ran as one fused kernel instead of ~50 PyTorch operators?
//
// Measurement only (tools/bench/fused_eggc.py builds and times it); nothing in our packages
// uses it. Scope, chosen to answer the question and no more: float32, contiguous inputs, one
// thread (the loops scatter into shared rows without synchronisation), the upstream gated
// mean with residuals, and first derivatives only (forces and stress for inference; training
// needs the double backward, which these kernels do not provide).
//
// The layer (N nodes, E edges, H features), with P = x W4^T + b4 whose four column blocks are
// [src_gate | dst_gate | dst_update | src_update]:
//   m_e  = P_sg[src_e] + P_dg[dst_e] + y_e We^T + be
//   h_v  = sum_{e->v} sigmoid(m_e) P_du[src_e] / (sum_{e->v} sigmoid(m_e) + eps)
//   x'   = x + silu(LN_n(P_su + h)),   y' = y + silu(LN_e(m))

#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// exp(x) that GCC vectorises (libm's expf does not): 2^k * p(r) with |r| <= ln2 / 2 and a
// degree-6 polynomial, ~2 ulp. k is rounded by the 1.5 * 2^23 trick instead of floorf, which
// GCC does not vectorise without -ffast-math.
inline float vexp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float k = t - 12582912.0f;
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (__builtin_bit_cast(int32_t, t) - 0x4B400000 + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline float sigmoid(float x) { return 1.0f / (1.0f + vexp(-x)); }

}  // namespace

// out = residual + silu(LN(x) * w + b), row by row; stats [R, 2] = (mean, 1/std) for backward.
std::vector<torch::Tensor> ln_silu_fwd(torch::Tensor x, torch::Tensor w, torch::Tensor b,
                                       double eps, torch::Tensor residual, bool has_residual) {
  const int64_t rows = x.size(0), H = x.size(1);
  auto out = torch::empty_like(x);
  auto stats = torch::empty({rows, 2}, x.options());
  const float* X = x.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const float* B = b.data_ptr<float>();
  const float* RES = has_residual ? residual.data_ptr<float>() : nullptr;
  float* O = out.data_ptr<float>();
  float* ST = stats.data_ptr<float>();
  for (int64_t i = 0; i < rows; ++i) {
    const float* __restrict xi = X + i * H;
    float sum = 0.f, sq = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < H; ++c) sum += xi[c];
    const float mean = sum / H;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < H; ++c) sq += (xi[c] - mean) * (xi[c] - mean);
    const float rstd = 1.0f / std::sqrt(sq / H + static_cast<float>(eps));
    ST[2 * i] = mean;
    ST[2 * i + 1] = rstd;
    float* __restrict oi = O + i * H;
#pragma omp simd
    for (int64_t c = 0; c < H; ++c) {
      const float a = (xi[c] - mean) * rstd * W[c] + B[c];
      oi[c] = a * sigmoid(a);
    }
    if (RES) {
      const float* __restrict ri = RES + i * H;
#pragma omp simd
      for (int64_t c = 0; c < H; ++c) oi[c] += ri[c];
    }
  }
  return {out, stats};
}

// Gradient of ln_silu_fwd with respect to x only (inference: parameters need none).
torch::Tensor ln_silu_bwd(torch::Tensor grad_out, torch::Tensor x, torch::Tensor w,
                          torch::Tensor b, torch::Tensor stats) {
  const int64_t rows = x.size(0), H = x.size(1);
  auto go = grad_out.contiguous();
  auto gx = torch::empty_like(x);
  const float* G = go.data_ptr<float>();
  const float* X = x.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const float* B = b.data_ptr<float>();
  const float* ST = stats.data_ptr<float>();
  float* GX = gx.data_ptr<float>();
  std::vector<float> g_hat(H);
  for (int64_t i = 0; i < rows; ++i) {
    const float* __restrict xi = X + i * H;
    const float* __restrict gi = G + i * H;
    float* __restrict gh = g_hat.data();
    const float mean = ST[2 * i], rstd = ST[2 * i + 1];
    float s1 = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t c = 0; c < H; ++c) {
      const float xhat = (xi[c] - mean) * rstd;
      const float a = xhat * W[c] + B[c];
      const float sg = sigmoid(a);
      gh[c] = gi[c] * sg * (1.0f + a * (1.0f - sg)) * W[c];
      s1 += gh[c];
      s2 += gh[c] * xhat;
    }
    float* __restrict gxi = GX + i * H;
#pragma omp simd
    for (int64_t c = 0; c < H; ++c) {
      const float xhat = (xi[c] - mean) * rstd;
      gxi[c] = rstd * (gh[c] - (s1 + xhat * s2) / H);
    }
  }
  return gx;
}

// Forward of the whole layer; returns x', y' (empty unless update_edges) and what backward needs.
std::vector<torch::Tensor> eggc_fwd(torch::Tensor x, torch::Tensor y, torch::Tensor src,
                                    torch::Tensor dst, torch::Tensor W4, torch::Tensor b4,
                                    torch::Tensor We, torch::Tensor be, torch::Tensor ln_n_w,
                                    torch::Tensor ln_n_b, double ln_n_eps, torch::Tensor ln_e_w,
                                    torch::Tensor ln_e_b, double ln_e_eps, double eps,
                                    bool update_edges) {
  const int64_t N = x.size(0), E = y.size(0), H = We.size(0);
  auto P = torch::addmm(b4, x, W4.t());  // [N, 4H]
  auto m = torch::empty({E, H}, x.options());
  const float* PP = P.data_ptr<float>();
  const int64_t* S = src.data_ptr<int64_t>();
  const int64_t* D = dst.data_ptr<int64_t>();
  const float* BE = be.data_ptr<float>();
  float* M = m.data_ptr<float>();
  for (int64_t e = 0; e < E; ++e) {
    const float* __restrict ps = PP + S[e] * 4 * H;
    const float* __restrict pd = PP + D[e] * 4 * H + H;
    float* __restrict me = M + e * H;
#pragma omp simd
    for (int64_t c = 0; c < H; ++c) me[c] = ps[c] + pd[c] + BE[c];
  }
  m.addmm_(y, We.t());
  auto h = torch::zeros({N, H}, x.options());      // numerator, then h
  auto recip = torch::zeros({N, H}, x.options());  // sum of gates, then 1 / (sum + eps)
  float* HP = h.data_ptr<float>();
  float* RP = recip.data_ptr<float>();
  for (int64_t e = 0; e < E; ++e) {
    const float* __restrict me = M + e * H;
    const float* __restrict value = PP + S[e] * 4 * H + 2 * H;
    float* __restrict num = HP + D[e] * H;
    float* __restrict den = RP + D[e] * H;
#pragma omp simd
    for (int64_t c = 0; c < H; ++c) {
      const float g = sigmoid(me[c]);
      num[c] += g * value[c];
      den[c] += g;
    }
  }
  auto pre = torch::empty({N, H}, x.options());
  float* PRE = pre.data_ptr<float>();
  for (int64_t i = 0; i < N; ++i) {
    const float* __restrict self_term = PP + i * 4 * H + 3 * H;
#pragma omp simd
    for (int64_t c = 0; c < H; ++c) {
      const float r = 1.0f / (RP[i * H + c] + static_cast<float>(eps));
      RP[i * H + c] = r;
      HP[i * H + c] *= r;
      PRE[i * H + c] = self_term[c] + HP[i * H + c];
    }
  }
  auto node = ln_silu_fwd(pre, ln_n_w, ln_n_b, ln_n_eps, x, true);
  auto none = torch::empty({0}, x.options());
  std::vector<torch::Tensor> edge = {none, none};
  if (update_edges) edge = ln_silu_fwd(m, ln_e_w, ln_e_b, ln_e_eps, y, true);
  return {node[0], edge[0], P, m, h, recip, pre, node[1], edge[1]};
}

// First-order backward of eggc_fwd: gradients for x and y from those of x' and y'.
std::vector<torch::Tensor> eggc_bwd(torch::Tensor grad_x_new, torch::Tensor grad_y_new,
                                    torch::Tensor src, torch::Tensor dst, torch::Tensor W4,
                                    torch::Tensor We, torch::Tensor ln_n_w, torch::Tensor ln_n_b,
                                    torch::Tensor ln_e_w, torch::Tensor ln_e_b, torch::Tensor P,
                                    torch::Tensor m, torch::Tensor h, torch::Tensor recip,
                                    torch::Tensor pre, torch::Tensor stats_n,
                                    torch::Tensor stats_e, bool update_edges) {
  const int64_t N = h.size(0), E = m.size(0), H = We.size(0);
  auto g_pre = ln_silu_bwd(grad_x_new, pre, ln_n_w, ln_n_b, stats_n);  // [N, H]
  auto g_m = update_edges ? ln_silu_bwd(grad_y_new, m, ln_e_w, ln_e_b, stats_e)
                          : torch::zeros({E, H}, m.options());
  auto gP = torch::zeros({N, 4 * H}, m.options());
  auto g_num = g_pre * recip;      // dL/d numerator
  auto g_den = -(g_num * h);       // dL/d sum of gates
  const float* GNUM = g_num.data_ptr<float>();
  const float* GDEN = g_den.data_ptr<float>();
  const float* GPRE = g_pre.data_ptr<float>();
  const float* PP = P.data_ptr<float>();
  const float* M = m.data_ptr<float>();
  const int64_t* S = src.data_ptr<int64_t>();
  const int64_t* D = dst.data_ptr<int64_t>();
  float* GM = g_m.data_ptr<float>();
  float* GP = gP.data_ptr<float>();
  for (int64_t i = 0; i < N; ++i) {
#pragma omp simd
    for (int64_t c = 0; c < H; ++c) GP[i * 4 * H + 3 * H + c] = GPRE[i * H + c];
  }
  for (int64_t e = 0; e < E; ++e) {
    const int64_t s = S[e], d = D[e];
    const float* __restrict me = M + e * H;
    const float* __restrict value = PP + s * 4 * H + 2 * H;
    const float* __restrict gnum = GNUM + d * H;
    const float* __restrict gden = GDEN + d * H;
    float* __restrict gm = GM + e * H;
    float* __restrict gps = GP + s * 4 * H;
#pragma omp simd
    for (int64_t c = 0; c < H; ++c) {
      const float g = sigmoid(me[c]);
      const float total = gm[c] + (gnum[c] * value[c] + gden[c]) * g * (1.0f - g);
      gm[c] = total;
      gps[c] += total;                 // src_gate block
      gps[2 * H + c] += gnum[c] * g;   // dst_update block
    }
    float* __restrict gpd = GP + d * 4 * H + H;  // dst_gate block
#pragma omp simd
    for (int64_t c = 0; c < H; ++c) gpd[c] += gm[c];
  }
  auto grad_y = torch::mm(g_m, We);
  if (update_edges) grad_y.add_(grad_y_new);
  auto grad_x = torch::addmm(grad_x_new, gP, W4);
  return {grad_x, grad_y};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("ln_silu_fwd", &ln_silu_fwd);
  module.def("ln_silu_bwd", &ln_silu_bwd);
  module.def("eggc_fwd", &eggc_fwd);
  module.def("eggc_bwd", &eggc_bwd);
}
