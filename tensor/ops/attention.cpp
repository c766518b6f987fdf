// Causal grouped-query softmax attention, forward and backward (flash-attention style).
//
// For query row i of head h (absolute position p_i = q_offset + i), kv head g = h / (H / Hkv),
// and the allowed keys s <= p_i:
//   S_is = scale * q_i . k_s,   lse_i = log sum_s exp(S_is),   P_is = exp(S_is - lse_i),
//   out_i = sum_s P_is v_s.
// Backward recomputes P from the saved lse, so nothing of size T^2 is ever stored:
//   dP_is = dout_i . v_s,   D_i = dout_i . out_i (= sum_s P_is dP_is),   dS_is = P_is (dP_is - D_i),
//   dq_i = scale * sum_s dS_is k_s,   dk_s = scale * sum_i dS_is q_i,   dv_s = sum_i P_is dout_i.
// Rows are processed in blocks of kBlock queries with cpu::gemm: a block of queries
// [i0, i0 + n) needs keys [0, q_offset + i0 + n), so each thread holds O(kBlock * Tk)
// scratch. Query heads of one group write their dk/dv into separate buffers that are
// summed afterwards, so the parallel loops never race.
#include "tensor/cuda/attention.h"

#include <algorithm>
#include <cmath>

#include "tensor/cpu/gemm.h"
#include "tensor/cpu/loops.h"
#include "tensor/cuda_hooks.h"
#include "tensor/ops.h"

namespace sessa::ops {

namespace {

constexpr int64_t kBlock = 64;  // query rows per block

struct Dims {
  int64_t B, H, Hkv, Tq, Tk, dh, group;
};

Dims check_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_offset,
                     double scale) {
  // The kernels take row maxima of unscaled scores, which needs scale > 0.
  SESSA_CHECK(scale > 0 && std::isfinite(scale), op, "scale " << scale << " must be positive and finite");
  SESSA_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
              "expects q (B, H, Tq, dh) and k, v (B, Hkv, Tk, dh), got q " << q.shape() << ", k " << k.shape() << ", v "
                                                                           << v.shape());
  SESSA_CHECK(k.shape() == v.shape(), op, "k " << k.shape() << " and v " << v.shape() << " differ");
  SESSA_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3), op,
              "q " << q.shape() << " and k " << k.shape() << " differ in batch size or head dim");
  SESSA_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op,
              "query heads of q " << q.shape() << " are not a multiple of kv heads of k " << k.shape());
  SESSA_CHECK(q_offset >= 0 && q_offset + q.size(2) <= k.size(2), op,
              "q_offset " << q_offset << " with q " << q.shape() << " and k " << k.shape()
                          << ": need 0 <= q_offset and q_offset + Tq <= Tk");
  SESSA_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(), op,
              "dtypes differ: q " << q.str() << ", k " << k.str() << ", v " << v.str());
  SESSA_CHECK(q.device() == k.device() && q.device() == v.device(), op,
              "devices differ: q " << q.str() << ", k " << k.str() << ", v " << v.str());
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), q.size(1) / k.size(1)};
}

// Where the (b, h) query slice (bh = b * H + h) and its kv slice start.
struct Head {
  int64_t qoff, kvoff;  // element offsets into q-shaped and k-shaped contiguous tensors
};
Head head_of(const Dims& d, int64_t bh) {
  const int64_t b = bh / d.H, h = bh % d.H;
  return {bh * d.Tq * d.dh, (b * d.Hkv + h / d.group) * d.Tk * d.dh};
}

// S (n x kn, row stride kn) = scale * Q[i0:i0+n] K[0:kn]^T, then each row r is turned into
// P = exp(S - lse) over its allowed keys s <= q_offset + i0 + r and 0 beyond. When lse is
// null it is computed here (forward, stored into lse_out) and P is normalised by it.
template <class T>
void block_probs(const T* qh, const T* kh, int64_t i0, int64_t n, int64_t kn, int64_t dh, int64_t q_offset,
                 double scale, const T* lse_in, T* lse_out, T* S) {
  cpu::gemm<T>(false, true, n, kn, dh, T(scale), qh + i0 * dh, dh, kh, dh, T(0), S, kn);
  for (int64_t r = 0; r < n; ++r) {
    T* row = S + r * kn;
    const int64_t len = q_offset + i0 + r + 1;  // allowed keys
    T lse;
    if (lse_in) {
      lse = lse_in[i0 + r];
    } else {  // max-subtracted log-sum-exp, accumulated in double
      T mx = row[0];
      for (int64_t s = 1; s < len; ++s) mx = std::max(mx, row[s]);
      double total = 0;
      for (int64_t s = 0; s < len; ++s) total += std::exp(double(row[s] - mx));
      lse = lse_out[i0 + r] = T(double(mx) + std::log(total));
    }
    for (int64_t s = 0; s < len; ++s) row[s] = std::exp(row[s] - lse);
    std::fill(row + len, row + kn, T(0));
  }
}

}  // namespace

AttentionOut attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, int64_t q_offset, double scale) {
  const Dims d = check_attention("attention", q_in, k_in, v_in, q_offset, scale);
  if (q_in.is_cuda()) {
    SESSA_CUDA_CALL(return cuda::attention(q_in, k_in, v_in, q_offset, scale));
  }
  Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in);
  AttentionOut res{empty_like(q), Tensor::empty({d.B, d.H, d.Tq}, q.options())};
  const int64_t blocks = (d.Tq + kBlock - 1) / kBlock, tasks = d.B * d.H * blocks;
  const int64_t work = d.B * d.H * d.Tq * d.Tk * std::max<int64_t>(d.dh, 1);
  cpu::dispatch_float(q.dtype(), "attention", [&](auto tag) {
    using T = decltype(tag);
    const T *pq = q.data<T>(), *pk = k.data<T>(), *pv = v.data<T>();
    T *po = res.out.data<T>(), *plse = res.lse.data<T>();
#pragma omp parallel if (tasks > 1 && work >= cpu::kParallelGrain)
    {
      std::vector<T> S;
#pragma omp for schedule(dynamic)
      for (int64_t t = 0; t < tasks; ++t) {
        const int64_t bh = t / blocks, i0 = t % blocks * kBlock;
        const int64_t n = std::min(kBlock, d.Tq - i0), kn = q_offset + i0 + n;
        const Head hd = head_of(d, bh);
        S.resize(size_t(n * kn));
        block_probs<T>(pq + hd.qoff, pk + hd.kvoff, i0, n, kn, d.dh, q_offset, scale, nullptr, plse + bh * d.Tq,
                       S.data());
        // out[i0:i0+n] = P V[0:kn] (P is already normalised)
        cpu::gemm<T>(false, false, n, d.dh, kn, T(1), S.data(), kn, pv + hd.kvoff, d.dh, T(0), po + hd.qoff + i0 * d.dh,
                     d.dh);
      }
    }
  });
  return res;
}

AttentionGrads attention_backward(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                  const Tensor& out_in, const Tensor& lse_in, int64_t q_offset, double scale,
                                  std::optional<double> rope_base) {
  const char* op = "attention_backward";
  const Dims d = check_attention(op, q_in, k_in, v_in, q_offset, scale);
  SESSA_CHECK(dout_in.shape() == q_in.shape() && out_in.shape() == q_in.shape(), op,
              "dout " << dout_in.shape() << " and out " << out_in.shape() << " must have q's shape " << q_in.shape());
  SESSA_CHECK(lse_in.shape() == Shape({d.B, d.H, d.Tq}), op,
              "lse " << lse_in.shape() << " must be (B, H, Tq) for q " << q_in.shape());
  for (const Tensor* t : {&dout_in, &out_in})
    SESSA_CHECK(t->dtype() == q_in.dtype() && t->device() == q_in.device(), op,
                t->str() << " does not match q " << q_in.str());
  const DType lse_dtype = q_in.dtype() == DType::BF16 ? DType::F32 : q_in.dtype();  // bfloat16 keeps lse in float32
  SESSA_CHECK(lse_in.dtype() == lse_dtype && lse_in.device() == q_in.device(), op,
              lse_in.str() << " does not match q " << q_in.str());
  if (rope_base) {
    SESSA_CHECK(*rope_base > 0, op, "rope base must be positive, got " << *rope_base);
    SESSA_CHECK(d.dh % 2 == 0, op, "rotary embedding needs an even head dim, got " << q_in.shape());
  }
  // The bfloat16 CUDA kernels rotate the gradients back themselves; the others' are the
  // gradients of the rotated operands, rotated back here.
  if (rope_base && !(q_in.is_cuda() && q_in.dtype() == DType::BF16)) {
    AttentionGrads g = attention_backward(dout_in, q_in, k_in, v_in, out_in, lse_in, q_offset, scale);
    return {rope(g.dq, q_offset, *rope_base, true), rope(g.dk, 0, *rope_base, true), g.dv};
  }
  if (q_in.is_cuda()) {
    SESSA_CUDA_CALL(
        return cuda::attention_backward(dout_in, q_in, k_in, v_in, out_in, lse_in, q_offset, scale, rope_base));
  }
  Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in);
  Tensor dout = contiguous(dout_in), out = contiguous(out_in), lse = contiguous(lse_in);
  // dk, dv per query head (B, H, Tk, dh); summed over each group below when H > Hkv.
  Tensor dk_heads = zeros({d.B, d.H, d.Tk, d.dh}, q.options()), dv_heads = zeros({d.B, d.H, d.Tk, d.dh}, q.options());
  AttentionGrads g{empty_like(q), Tensor(), Tensor()};
  const int64_t work = d.B * d.H * d.Tq * d.Tk * std::max<int64_t>(d.dh, 1);
  cpu::dispatch_float(q.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    const T *pq = q.data<T>(), *pk = k.data<T>(), *pv = v.data<T>();
    const T *pdo = dout.data<T>(), *po = out.data<T>(), *plse = lse.data<T>();
    T *pdq = g.dq.data<T>(), *pdk = dk_heads.data<T>(), *pdv = dv_heads.data<T>();
#pragma omp parallel if (d.B * d.H > 1 && work >= cpu::kParallelGrain)
    {
      std::vector<T> P, dS;
#pragma omp for schedule(dynamic)
      for (int64_t bh = 0; bh < d.B * d.H; ++bh) {
        const Head hd = head_of(d, bh);
        const T *qh = pq + hd.qoff, *kh = pk + hd.kvoff, *vh = pv + hd.kvoff, *doh = pdo + hd.qoff;
        T *dkh = pdk + bh * d.Tk * d.dh, *dvh = pdv + bh * d.Tk * d.dh;
        for (int64_t i0 = 0; i0 < d.Tq; i0 += kBlock) {
          const int64_t n = std::min(kBlock, d.Tq - i0), kn = q_offset + i0 + n;
          P.resize(size_t(n * kn)), dS.resize(size_t(n * kn));
          block_probs<T>(qh, kh, i0, n, kn, d.dh, q_offset, scale, plse + bh * d.Tq, nullptr, P.data());
          // dP = dout V^T, then dS = P * (dP - D) row by row (dS overwrites dP)
          cpu::gemm<T>(false, true, n, kn, d.dh, T(1), doh + i0 * d.dh, d.dh, vh, d.dh, T(0), dS.data(), kn);
          for (int64_t r = 0; r < n; ++r) {
            const T *gr = doh + (i0 + r) * d.dh, *orow = po + hd.qoff + (i0 + r) * d.dh;
            double D = 0;
            for (int64_t c = 0; c < d.dh; ++c) D += double(gr[c]) * double(orow[c]);
            T *ds = dS.data() + r * kn, *p = P.data() + r * kn;
            for (int64_t s = 0; s < kn; ++s) ds[s] = p[s] * (ds[s] - T(D));
          }
          // dq = scale dS K;  dk += scale dS^T Q;  dv += P^T dout
          cpu::gemm<T>(false, false, n, d.dh, kn, T(scale), dS.data(), kn, kh, d.dh, T(0), pdq + hd.qoff + i0 * d.dh,
                       d.dh);
          cpu::gemm<T>(true, false, kn, d.dh, n, T(scale), dS.data(), kn, qh + i0 * d.dh, d.dh, T(1), dkh, d.dh);
          cpu::gemm<T>(true, false, kn, d.dh, n, T(1), P.data(), kn, doh + i0 * d.dh, d.dh, T(1), dvh, d.dh);
        }
      }
    }
  });
  if (d.group == 1) {
    g.dk = dk_heads, g.dv = dv_heads;
  } else {  // sum the group's query heads: (B, Hkv, group, Tk, dh) -> (B, Hkv, Tk, dh)
    const Shape grouped{d.B, d.Hkv, d.group, d.Tk, d.dh};
    g.dk = sum(view(dk_heads, grouped), {2}), g.dv = sum(view(dv_heads, grouped), {2});
  }
  return g;
}

}  // namespace sessa::ops
