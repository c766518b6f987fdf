// Mamba's fused kernels: causal depthwise conv1d and the selective scan, forward and
// backward, plus their autograd wrappers.
//
// causal_conv1d backward (x = 0 before t = 0, dy = 0 after t = T-1; with SiLU, dy is
// first replaced by dy * SiLU'(pre), pre the conv output recomputed from x, w and bias):
//   dx[b,s,c]  = sum_j w[c,j] * dy[b, s+K-1-j, c]
//   dw[c,j]    = sum_{b,t} dy[b,t,c] * x[b, t-K+1+j, c]
//   dbias[c]   = sum_{b,t} dy[b,t,c]
//
// selective_scan backward. Per (b, c), with e_t[n] = exp(delta_t * A[c,n]) and the
// forward h_t[n] = e_t[n] h_{t-1}[n] + delta_t Bm_t[n] u_t, y_t = sum_n Cm_t[n] h_t[n] + D u_t,
// let gh_t[n] = dL/dh_t[n] (the full adjoint of the state). It obeys a backward recurrence
//   gh_t[n] = dy_t * Cm_t[n] + e_{t+1}[n] * gh_{t+1}[n],      gh_T = 0,
// and every input's gradient is a sum of local terms:
//   du_t      = dy_t * D + sum_n gh_t[n] * delta_t * Bm_t[n]
//   ddelta_t  = sum_n gh_t[n] * (A[c,n] * e_t[n] * h_{t-1}[n] + Bm_t[n] * u_t)
//   dA[c,n]   = sum_{b,t} gh_t[n] * delta_t * e_t[n] * h_{t-1}[n]
//   dBm_t[n]  = sum_c gh_t[n] * delta_t * u_t                (summed over channels)
//   dCm_t[n]  = sum_c dy_t * h_t[n]                          (summed over channels)
//   dD[c]     = sum_{b,t} dy_t * u_t
// With the gate, out_t = y_t * SiLU(z_t): dz_t = dout_t * y_t * SiLU'(z_t), and the above
// runs on dy_t = dout_t * SiLU(z_t) (here literally so, through the ungated op).
// When delta = softplus(dt) (the mixer's call, `ddelta_wrt_dt`), dt's gradient is
//   ddt_t = ddelta_t * sigmoid(dt_t) = ddelta_t * (1 - exp(-delta_t)),
// since softplus'(x) = sigmoid(x) and exp(-softplus(x)) = 1 - sigmoid(x).
// The backward here reruns the forward recurrence for one (b, c), keeping h_t and
// e_t for every step in a per-thread T*N buffer, then walks time backwards. (b, c)
// pairs run in parallel; dA, dD (reduced over b) and dBm, dCm (reduced over c) go to
// per-thread float64 accumulators that a second, parallel pass sums. This CPU path is
// the float64 parity reference of the CUDA kernels.
// CUDA tensors go to the kernels in nn/mamba_conv.cu and nn/mamba_scan.cu after the same
// argument checks.
#include "nn/mamba_ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/node.h"
#include "nn/mamba_cuda.h"
#include "tensor/cpu/loops.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::nn {

namespace {

void require_same_device(const char* op, const Tensor& x, const Tensor& ref) {
  SESSA_CHECK(x.device() == ref.device(), op, "tensors on different devices: " << ref.str() << " and " << x.str());
}

void check_conv(const char* op, const Tensor& x, const Tensor& w, const Tensor& bias) {
  SESSA_CHECK(x.defined() && w.defined() && bias.defined(), op, "x, w and bias must all be defined");
  SESSA_CHECK(
      x.dim() == 3 && w.dim() == 2 && w.size(0) == x.size(2) && w.size(1) >= 1 && bias.shape() == Shape{x.size(2)}, op,
      "expects x (B, T, C), w (C, K), bias (C); got x " << x.shape() << ", w " << w.shape() << ", bias "
                                                        << bias.shape());
  SESSA_CHECK(x.dtype() == w.dtype() && x.dtype() == bias.dtype(), op,
              "dtype mismatch: " << x.str() << ", " << w.str() << ", " << bias.str());
  require_same_device(op, w, x), require_same_device(op, bias, x);
}

}  // namespace

Tensor causal_conv1d_forward(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in, bool silu) {
  check_conv("causal_conv1d", x_in, w_in, bias_in);
  if (x_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::causal_conv1d(x_in, w_in, bias_in, silu));
  }
  Tensor x = ops::contiguous(x_in), w = ops::contiguous(w_in), bias = ops::contiguous(bias_in);
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  Tensor y = empty_like(x);
  cpu::dispatch_float(x.dtype(), "causal_conv1d", [&](auto tag) {
    using F = decltype(tag);
    const F *px = x.data<F>(), *pw = w.data<F>(), *pb = bias.data<F>();
    F* py = y.data<F>();
#pragma omp parallel for schedule(static) if (x.numel() * K >= cpu::kParallelGrain)
    for (int64_t r = 0; r < B * T; ++r) {
      const int64_t b = r / T, t = r % T;
      F* yrow = py + r * C;
      for (int64_t c = 0; c < C; ++c) yrow[c] = pb[c];
      for (int64_t j = 0; j < K; ++j) {
        const int64_t s = t - K + 1 + j;
        if (s < 0) continue;
        const F* xrow = px + (b * T + s) * C;
        for (int64_t c = 0; c < C; ++c) yrow[c] += pw[c * K + j] * xrow[c];
      }
    }
  });
  return silu ? ops::unary(ops::Unary::Silu, y) : y;
}

Conv1dGrads causal_conv1d_backward(const Tensor& dy_in, const Tensor& x_in, const Tensor& w_in, const Tensor& bias,
                                   bool silu) {
  const char* op = "causal_conv1d_backward";
  SESSA_CHECK(x_in.dim() == 3 && w_in.dim() == 2 && w_in.size(0) == x_in.size(2), op,
              "expects x (B, T, C) and w (C, K); got x " << x_in.shape() << ", w " << w_in.shape());
  SESSA_CHECK(dy_in.shape() == x_in.shape(), op, "gradient " << dy_in.shape() << " vs input " << x_in.shape());
  SESSA_CHECK(dy_in.dtype() == x_in.dtype() && w_in.dtype() == x_in.dtype(), op,
              "dtype mismatch: " << dy_in.str() << ", " << x_in.str() << ", " << w_in.str());
  require_same_device(op, x_in, dy_in), require_same_device(op, w_in, dy_in);
  if (silu) check_conv(op, x_in, w_in, bias);
  if (dy_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::causal_conv1d_backward(dy_in, x_in, w_in, bias, silu));
  }
  Tensor x = ops::contiguous(x_in), w = ops::contiguous(w_in);
  Tensor dy =
      silu ? ops::unary_backward(ops::Unary::Silu, causal_conv1d_forward(x, w, bias), dy_in) : ops::contiguous(dy_in);
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  Conv1dGrads g{empty_like(x), empty_like(w), Tensor::empty({C}, x.options())};
  const bool parallel = x.numel() * K >= cpu::kParallelGrain;
  cpu::dispatch_float(x.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    const F *px = x.data<F>(), *pw = w.data<F>(), *pdy = dy.data<F>();
    F *pdx = g.dx.data<F>(), *pdw = g.dw.data<F>(), *pdb = g.dbias.data<F>();
    // dx: row (b, s) gathers dy from the K rows s .. s+K-1 that read it.
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r = 0; r < B * T; ++r) {
      const int64_t b = r / T, s = r % T;
      F* dxrow = pdx + r * C;
      for (int64_t c = 0; c < C; ++c) dxrow[c] = F(0);
      for (int64_t j = 0; j < K; ++j) {
        const int64_t t = s + K - 1 - j;
        if (t >= T) continue;
        const F* dyrow = pdy + (b * T + t) * C;
        for (int64_t c = 0; c < C; ++c) dxrow[c] += pw[c * K + j] * dyrow[c];
      }
    }
    // dw, dbias: reductions over (b, t), parallel over blocks of channels.
    constexpr int64_t kBlock = 16;
    const int64_t nblocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
      const int64_t c0 = blk * kBlock, nc = std::min(kBlock, C - c0);
      std::vector<double> aw(size_t(nc * K), 0.0), ab(size_t(nc), 0.0);
      for (int64_t r = 0; r < B * T; ++r) {
        const int64_t b = r / T, t = r % T;
        const F* dyrow = pdy + r * C + c0;
        for (int64_t c = 0; c < nc; ++c) ab[size_t(c)] += double(dyrow[c]);
        for (int64_t j = 0; j < K; ++j) {
          const int64_t s = t - K + 1 + j;
          if (s < 0) continue;
          const F* xrow = px + (b * T + s) * C + c0;
          for (int64_t c = 0; c < nc; ++c) aw[size_t(c * K + j)] += double(dyrow[c]) * double(xrow[c]);
        }
      }
      for (int64_t c = 0; c < nc; ++c) {
        pdb[c0 + c] = F(ab[size_t(c)]);
        for (int64_t j = 0; j < K; ++j) pdw[(c0 + c) * K + j] = F(aw[size_t(c * K + j)]);
      }
    }
  });
  return g;
}

namespace {

struct ScanDims {
  int64_t B, T, Di, N;
};

ScanDims check_scan(const char* op, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm,
                    const Tensor& Cm, const Tensor& Dskip, const Tensor& z) {
  for (const Tensor* t : {&u, &delta, &A, &Bm, &Cm, &Dskip}) SESSA_CHECK(t->defined(), op, "an input is undefined");
  const bool ok = u.dim() == 3 && delta.shape() == u.shape() && A.dim() == 2 && A.size(0) == u.size(2) &&
                  Bm.dim() == 3 && Bm.size(0) == u.size(0) && Bm.size(1) == u.size(1) && Bm.size(2) == A.size(1) &&
                  Cm.shape() == Bm.shape() && Dskip.shape() == Shape{u.size(2)};
  SESSA_CHECK(ok, op,
              "expects u, delta (B, T, Di), A (Di, N), Bm, Cm (B, T, N), D (Di); got u "
                  << u.shape() << ", delta " << delta.shape() << ", A " << A.shape() << ", Bm " << Bm.shape() << ", Cm "
                  << Cm.shape() << ", D " << Dskip.shape());
  for (const Tensor* t : {&delta, &A, &Bm, &Cm, &Dskip}) {
    SESSA_CHECK(t->dtype() == u.dtype(), op, "dtype mismatch: " << u.str() << " and " << t->str());
    require_same_device(op, *t, u);
  }
  if (z.defined()) {
    SESSA_CHECK(z.shape() == u.shape() && z.dtype() == u.dtype(), op,
                "the gate z " << z.str() << " should match u " << u.str());
    require_same_device(op, z, u);
  }
  return {u.size(0), u.size(1), u.size(2), A.size(1)};
}

}  // namespace

Tensor selective_scan_forward(const Tensor& u_in, const Tensor& delta_in, const Tensor& A_in, const Tensor& Bm_in,
                              const Tensor& Cm_in, const Tensor& D_in, const Tensor& z, Tensor* checkpoints) {
  const ScanDims d = check_scan("selective_scan", u_in, delta_in, A_in, Bm_in, Cm_in, D_in, z);
  if (u_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::selective_scan(u_in, delta_in, A_in, Bm_in, Cm_in, D_in, z, checkpoints));
  }
  if (checkpoints) *checkpoints = Tensor();
  if (z.defined())
    return ops::mul(selective_scan_forward(u_in, delta_in, A_in, Bm_in, Cm_in, D_in), ops::unary(ops::Unary::Silu, z));
  const int64_t B = d.B, T = d.T, Di = d.Di, N = d.N;
  Tensor u = ops::contiguous(u_in), delta = ops::contiguous(delta_in), A = ops::contiguous(A_in),
         Bm = ops::contiguous(Bm_in), Cm = ops::contiguous(Cm_in), Dk = ops::contiguous(D_in);
  Tensor y = empty_like(u);
  cpu::dispatch_float(u.dtype(), "selective_scan", [&](auto tag) {
    using F = decltype(tag);
    const F *pu = u.data<F>(), *pdelta = delta.data<F>(), *pA = A.data<F>(), *pB = Bm.data<F>(), *pC = Cm.data<F>(),
            *pD = Dk.data<F>();
    F* py = y.data<F>();
#pragma omp parallel if (B * T * Di * N >= cpu::kParallelGrain)
    {
      std::vector<F> h(static_cast<size_t>(N), F(0));
#pragma omp for schedule(static)
      for (int64_t item = 0; item < B * Di; ++item) {
        const int64_t b = item / Di, c = item % Di;
        const F* Ac = pA + c * N;
        std::fill(h.begin(), h.end(), F(0));
        for (int64_t t = 0; t < T; ++t) {
          const int64_t i = (b * T + t) * Di + c;
          const F ut = pu[i], delta_t = pdelta[i], dtu = delta_t * ut;
          const F *Bt = pB + (b * T + t) * N, *Ct = pC + (b * T + t) * N;
          F acc = 0;
          for (int64_t n = 0; n < N; ++n) {
            h[size_t(n)] = std::exp(delta_t * Ac[n]) * h[size_t(n)] + dtu * Bt[n];
            acc += Ct[n] * h[size_t(n)];
          }
          py[i] = acc + pD[c] * ut;
        }
      }
    }
  });
  return y;
}

SelectiveScanGrads selective_scan_backward(const Tensor& dy_in, const Tensor& u_in, const Tensor& delta_in,
                                           const Tensor& A_in, const Tensor& Bm_in, const Tensor& Cm_in,
                                           const Tensor& D_in, const Tensor& z, const Tensor& checkpoints,
                                           bool ddelta_wrt_dt) {
  const char* op = "selective_scan_backward";
  (void)checkpoints;  // the CUDA forward's; the CPU backward recomputes everything
  const ScanDims d = check_scan(op, u_in, delta_in, A_in, Bm_in, Cm_in, D_in, z);
  const int64_t B = d.B, T = d.T, Di = d.Di, N = d.N;
  SESSA_CHECK(dy_in.shape() == u_in.shape() && dy_in.dtype() == u_in.dtype(), op,
              "gradient " << dy_in.str() << " does not match the output " << u_in.str());
  require_same_device(op, dy_in, u_in);
  if (u_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::selective_scan_backward(dy_in, u_in, delta_in, A_in, Bm_in, Cm_in, D_in, z,
                                                         checkpoints, ddelta_wrt_dt));
  }
  if (z.defined()) {  // out = y * SiLU(z): dz = dout * y * SiLU'(z), dy = dout * SiLU(z)
    const Tensor y = selective_scan_forward(u_in, delta_in, A_in, Bm_in, Cm_in, D_in);
    SelectiveScanGrads g = selective_scan_backward(ops::mul(dy_in, ops::unary(ops::Unary::Silu, z)), u_in, delta_in,
                                                   A_in, Bm_in, Cm_in, D_in, {}, {}, ddelta_wrt_dt);
    g.dz = ops::unary_backward(ops::Unary::Silu, z, ops::mul(dy_in, y));
    return g;
  }
  Tensor dy = ops::contiguous(dy_in), u = ops::contiguous(u_in), delta = ops::contiguous(delta_in),
         A = ops::contiguous(A_in), Bm = ops::contiguous(Bm_in), Cm = ops::contiguous(Cm_in),
         Dk = ops::contiguous(D_in);
  SelectiveScanGrads g{empty_like(u),  empty_like(u),  empty_like(A), empty_like(Bm),
                       empty_like(Cm), empty_like(Dk), Tensor()};
  const bool parallel = B * T * Di * N >= cpu::kParallelGrain;
  const int nthreads = parallel ? std::max(1, omp_get_max_threads()) : 1;
  const int64_t nBTN = B * T * N, nAD = Di * N + Di;
  // Per-thread float64 accumulators: [dBm | dCm] and [dA | dD].
  std::vector<double> acc_bc(size_t(nthreads) * size_t(2 * nBTN), 0.0), acc_ad(size_t(nthreads) * size_t(nAD), 0.0);
  cpu::dispatch_float(u.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    const F *pdy = dy.data<F>(), *pu = u.data<F>(), *pdelta = delta.data<F>(), *pA = A.data<F>(), *pB = Bm.data<F>(),
            *pC = Cm.data<F>(), *pD = Dk.data<F>();
    F *pdu = g.du.data<F>(), *pddelta = g.ddelta.data<F>();
#pragma omp parallel num_threads(nthreads)
    {
      const int tid = omp_get_thread_num();
      double* dB = acc_bc.data() + size_t(tid) * size_t(2 * nBTN);
      double* dC = dB + nBTN;
      double* dA = acc_ad.data() + size_t(tid) * size_t(nAD);
      double* dD = dA + Di * N;
      std::vector<double> H(static_cast<size_t>(T * N)), E(static_cast<size_t>(T * N)), gh(static_cast<size_t>(N));
#pragma omp for schedule(static)
      for (int64_t item = 0; item < B * Di; ++item) {
        const int64_t b = item / Di, c = item % Di;
        const F* Ac = pA + c * N;
        const double Dc = double(pD[c]);
        // Forward again, keeping e_t and h_t.
        for (int64_t t = 0; t < T; ++t) {
          const int64_t i = (b * T + t) * Di + c;
          const double ut = double(pu[i]), delta_t = double(pdelta[i]);
          const F* Bt = pB + (b * T + t) * N;
          double* Ht = H.data() + t * N;
          double* Et = E.data() + t * N;
          const double* Hp = t > 0 ? Ht - N : nullptr;
          for (int64_t n = 0; n < N; ++n) {
            Et[n] = std::exp(delta_t * double(Ac[n]));
            Ht[n] = (Hp ? Et[n] * Hp[n] : 0.0) + delta_t * double(Bt[n]) * ut;
          }
        }
        // Backward in time; gh holds e_{t+1} * gh_{t+1} on entry to step t.
        std::fill(gh.begin(), gh.end(), 0.0);
        double dD_acc = 0;
        for (int64_t t = T - 1; t >= 0; --t) {
          const int64_t i = (b * T + t) * Di + c;
          const int64_t row = (b * T + t) * N;
          const double ut = double(pu[i]), delta_t = double(pdelta[i]), gy = double(pdy[i]);
          const F *Bt = pB + row, *Ct = pC + row;
          const double* Ht = H.data() + t * N;
          const double* Et = E.data() + t * N;
          const double* Hp = t > 0 ? Ht - N : nullptr;
          double du = gy * Dc, ddelta = 0;
          dD_acc += gy * ut;
          for (int64_t n = 0; n < N; ++n) {
            const double g_h = gh[size_t(n)] + gy * double(Ct[n]);
            const double hp = Hp ? Hp[n] : 0.0;
            const double a = double(Ac[n]), bn = double(Bt[n]);
            dC[row + n] += gy * Ht[n];
            dB[row + n] += g_h * delta_t * ut;
            dA[c * N + n] += g_h * delta_t * Et[n] * hp;
            ddelta += g_h * (a * Et[n] * hp + bn * ut);
            du += g_h * delta_t * bn;
            gh[size_t(n)] = g_h * Et[n];
          }
          pdu[i] = F(du);
          pddelta[i] = F(ddelta_wrt_dt ? ddelta * -std::expm1(-delta_t) : ddelta);  // sigmoid(dt) = 1 - exp(-delta)
        }
        dD[c] += dD_acc;
      }
    }
    // Sum the per-thread partials.
    F *pdB = g.dB.data<F>(), *pdC = g.dC.data<F>(), *pdA = g.dA.data<F>(), *pdD = g.dD.data<F>();
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t i = 0; i < nBTN; ++i) {
      double sb = 0, sc = 0;
      for (int k = 0; k < nthreads; ++k) {
        const double* base = acc_bc.data() + size_t(k) * size_t(2 * nBTN);
        sb += base[i], sc += base[nBTN + i];
      }
      pdB[i] = F(sb), pdC[i] = F(sc);
    }
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t i = 0; i < nAD; ++i) {
      double s = 0;
      for (int k = 0; k < nthreads; ++k) s += acc_ad[size_t(k) * size_t(nAD) + size_t(i)];
      if (i < Di * N)
        pdA[i] = F(s);
      else
        pdD[i - Di * N] = F(s);
    }
  });
  return g;
}

Tensor causal_conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, bool silu) {
  return autograd::record(silu ? "causal_conv1d_silu" : "causal_conv1d", causal_conv1d_forward(x, w, bias, silu),
                          {x, w, bias},
                          [x = x.detach(), w = w.detach(), b = silu ? bias.detach() : Tensor(), silu](const Tensor& g) {
                            auto gr = causal_conv1d_backward(g, x, w, b, silu);
                            return std::vector<Tensor>{gr.dx, gr.dw, gr.dbias};
                          });
}

Tensor selective_scan(const Tensor& u, const Tensor& delta_in, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                      const Tensor& Dskip, const Tensor& z, bool delta_softplus) {
  // delta_in is dt with delta_softplus: the node's input is dt, it keeps delta = softplus(dt).
  const Tensor delta = delta_softplus ? ops::unary(ops::Unary::Softplus, delta_in.detach()) : delta_in.detach();
  // The CUDA forward's chunk checkpoints are kept for the backward (undefined on the CPU).
  Tensor ckpt;
  Tensor y = selective_scan_forward(u, delta, A, Bm, Cm, Dskip, z, &ckpt);
  std::vector<Tensor> inputs{u, delta_in, A, Bm, Cm, Dskip};
  if (z.defined()) inputs.push_back(z);
  return autograd::record(z.defined() ? "selective_scan_gated" : "selective_scan", y, inputs,
                          [u = u.detach(), delta, A = A.detach(), Bm = Bm.detach(), Cm = Cm.detach(),
                           Dk = Dskip.detach(), z = z.detach(), ckpt, delta_softplus](const Tensor& g) {
                            auto gr = selective_scan_backward(g, u, delta, A, Bm, Cm, Dk, z, ckpt, delta_softplus);
                            std::vector<Tensor> grads{gr.du, gr.ddelta, gr.dA, gr.dB, gr.dC, gr.dD};
                            if (z.defined()) grads.push_back(gr.dz);
                            return grads;
                          });
}

}  // namespace sessa::nn
