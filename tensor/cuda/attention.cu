// Causal grouped-query attention on CUDA, flash-attention style: the host side. The math
// is in tensor/ops/attention.cpp; nothing of size Tq x Tk is stored, the softmax
// statistics stay in float32 (float64 for float64). Two kernel families, chosen by dtype,
// both for head dims up to 128:
// - bfloat16: tensor cores, FlashAttention-2 order: the forward on Hopper warpgroup MMAs
//   fed by the copy engine (tensor/cuda/attention_wgmma.cuh), the backward too
//   (attention_wgmma_backward.cuh). They read q, k, v and dout through tensor maps and out
//   through strides, so the (B, T, heads, dh) projections enter as permuted views without a
//   copy; dq, dk, dv and out are written in the layout of their inputs.
// - float32 / float64: SIMT tiles (tensor/cuda/attention_simt.cuh) on contiguous operands.
// Both backwards start from D_i = dout_i . out_i (row_dot_kernel below).
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "tensor/cuda/attention.h"
#include "tensor/cuda/attention_simt.cuh"
#include "tensor/cuda/attention_wgmma.cuh"
#include "tensor/cuda/attention_wgmma_backward.cuh"
#include "tensor/cuda/common.cuh"
#include "tensor/cuda/heads_layout.h"
#include "tensor/cuda/rowops.h"
#include "tensor/cuda/tma.h"

namespace sessa::cuda {

namespace {

using attn::Dims;
using attn::Strides;

// D_i = dout_i . out_i for every row i of (B, H, Tq): W lanes per row (W divides 32), each
// reading packs of V elements (bf16 rows in 16-byte packs: V = 8, W = 8 for head dims up to
// 64, 16 up to 128; any layout: W = 32, V = 1).
template <class T, int W, int V>
__global__ void __launch_bounds__(256) row_dot_kernel(const T* dout, const T* out, acc_t<T>* res, Dims d) {
  const int64_t rows = int64_t(d.B) * d.H * d.Tq;
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / W;
  const int64_t r = min(row, rows - 1);  // (past the end: row rows - 1 again, as the shuffles need every lane)
  const int t = int(r % d.Tq), h = int(r / d.Tq % d.H), b = int(r / d.Tq / d.H);
  const T* x = dout + attn::offset(d.dout, b, h, t);
  const T* y = out + attn::offset(d.out, b, h, t);
  acc_t<T> sum = 0;
  for (int i = threadIdx.x % W * V; i < d.dh; i += W * V) {
    const Pack<T, V> px = load_pack<V>(x, i), py = load_pack<V>(y, i);
#pragma unroll
    for (int e = 0; e < V; ++e) sum += load(&px.v[e]) * load(&py.v[e]);
  }
  sum = warp_sum<W>(sum);
  if (row < rows && threadIdx.x % W == 0) res[row] = sum;
}

Strides strides_of(const Tensor& t) { return {t.strides()[0], t.strides()[1], t.strides()[2]}; }

// Shapes of q (B, H, Tq, dh) and k (B, Hkv, Tk, dh); strides of q, k, v (and of out,
// dout and the gradients when given).
Dims dims_of(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* out, const Tensor* dout,
             const ops::AttentionGrads* grads, int64_t q_offset, const char* op) {
  SESSA_CHECK(q.size(3) <= 128, op, "head dim " << q.size(3) << " of " << q.str() << " is above 128, the CUDA limit");
  Dims d;
  d.B = int(q.size(0)), d.H = int(q.size(1)), d.Hkv = int(k.size(1)), d.Tq = int(q.size(2));
  d.Tk = int(k.size(2)), d.dh = int(q.size(3)), d.group = d.H / d.Hkv, d.q_offset = int(q_offset);
  d.q = strides_of(q), d.k = strides_of(k), d.v = strides_of(v);
  if (out) d.out = strides_of(*out);
  if (dout) d.dout = strides_of(*dout);
  if (grads) d.dq = strides_of(grads->dq), d.dk = strides_of(grads->dk), d.dv = strides_of(grads->dv);
  return d;
}

// t when its head dim is contiguous (the tensor-core kernels take such views), else a copy.
Tensor unit_head_dim(const Tensor& t) { return t.size(3) == 1 || t.strides()[3] == 1 ? t : ops::contiguous(t); }

// 16-byte rows: cp.async and paired stores may be used on every operand.
bool vectorizable(int dh, std::initializer_list<const Tensor*> ts) {
  bool ok = dh % 8 == 0;
  for (const Tensor* t : ts)
    ok = ok && reinterpret_cast<uintptr_t>(t->raw_data()) % 16 == 0 && t->strides()[0] % 8 == 0 &&
         t->strides()[1] % 8 == 0 && t->strides()[2] % 8 == 0;
  return ok;
}

// t as the copy engine can read it (tensor/cuda/tma.h): t itself when 16-byte aligned
// with a head dim and strides in multiples of 8 elements, else a copy with the head dim
// zero-padded to a multiple of 8 (odd head dims, unaligned views).
Tensor tma_operand(const Tensor& t) {
  const int64_t dh = t.size(3);
  bool ok = dh > 0 && dh % 8 == 0 && reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0;
  for (int i = 0; i < 3; ++i) ok = ok && (t.size(i) == 1 || (t.strides()[i] > 0 && t.strides()[i] % 8 == 0));
  if (ok) return t;
  const Tensor padded = zeros({t.size(0), t.size(1), t.size(2), std::max<int64_t>(8, (dh + 7) / 8 * 8)}, t.options());
  ops::copy_(ops::narrow(padded, 3, 0, dh), t);
  return padded;
}

// The tile map of a (B, heads, T, dh) operand from tma_operand, in boxes of `rows` rows.
CUtensorMap tile_map_of(const Tensor& t, int rows, const char* op) {
  const int64_t strides[3] = {t.strides()[2], t.strides()[1], t.strides()[0]};
  return cuda::tile_map(t.raw_data(), int(dtype_size(t.dtype())), t.size(0), t.size(1), t.size(2), t.size(3), strides,
                        rows, op);
}

// The persistent forward's tile counter and count of finished blocks (attention_wgmma.cuh):
// zero before and after every launch, so forward launches on one device must not overlap
// (ops run on the device's main lane, one after another). One per device (a __device__
// variable lives on each device the module is loaded on).
__device__ int forward_schedule[2];
int* forward_schedule_of(const char* op) {
  void* p = nullptr;
  SESSA_CUDA_CHECK(cudaGetSymbolAddress(&p, forward_schedule), op);
  return static_cast<int*>(p);
}

// f(std::integral_constant<int, DH>) with the tile width DH for head dim dh: SIMT
// kernels (float32, float64), tensor-core kernels (bfloat16).
template <class F>
void with_simt_dh(int dh, F&& f) {
  if (dh <= 32)
    f(std::integral_constant<int, 32>{});
  else if (dh <= 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 128>{});
}
template <class F>
void with_mma_dh(int dh, F&& f) {
  if (dh <= 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 128>{});
}

}  // namespace

ops::AttentionOut attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, int64_t q_offset,
                            double scale) {
  const char* op = "attention";
  const Device dev = q_in.device();
  return dispatch_float(q_in.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    constexpr bool kMma = std::is_same_v<T, bf16_t>;
    const Tensor q = kMma ? unit_head_dim(q_in) : ops::contiguous(q_in);
    const Tensor k = kMma ? unit_head_dim(k_in) : ops::contiguous(k_in);
    const Tensor v = kMma ? unit_head_dim(v_in) : ops::contiguous(v_in);
    ops::AttentionOut res{kMma ? empty_heads_like(q, q.dtype()) : Tensor::empty(q.shape(), q.options()),
                          Tensor::empty({q.size(0), q.size(1), q.size(2)}, {dtype_of<A>(), dev})};
    const Dims d = dims_of(q, k, v, &res.out, nullptr, nullptr, q_offset, op);
    if (int64_t(d.B) * d.H * d.Tq == 0) return res;
    const cudaStream_t st = stream(dev.index);
    if constexpr (kMma) {
      const Tensor qt = tma_operand(q), kt = tma_operand(k), vt = tma_operand(v);
      with_mma_dh(d.dh, [&](auto dh_tag) {
        using Tile = attn::WgmmaForwardTile<decltype(dh_tag)::value>;
        const int64_t tiles = int64_t(blocks_for(d.Tq, Tile::BM)) * d.B * d.H;
        const int blocks = int(std::min<int64_t>(tiles, sm_count(dev.index)));
        SESSA_CHECK(tiles + blocks <= INT32_MAX, op,
                    tiles << " query tiles of " << q.str() << " are beyond the tile counter's int32 range");
        const CUtensorMap q_map = tile_map_of(qt, Tile::BM, op), k_map = tile_map_of(kt, Tile::BN, op),
                          v_map = tile_map_of(vt, Tile::BN, op);
        allow_dynamic_smem(attn::wgmma_forward<Tile>, Tile::smem_bytes, op);
        attn::wgmma_forward<Tile><<<blocks, Tile::kThreads, Tile::smem_bytes, st>>>(
            q_map, k_map, v_map, ptr<bf16_t>(res.out), ptr<float>(res.lse), d, float(scale) * attn::kLog2e,
            vectorizable(d.dh, {&res.out}), forward_schedule_of(op));
        SESSA_CUDA_LAUNCH_CHECK(op);
      });
    } else {
      constexpr int R = sizeof(A) == 8 ? 2 : 4;
      with_simt_dh(d.dh, [&](auto dh_tag) {
        constexpr int DH = decltype(dh_tag)::value;
        const size_t smem = attn::simt_forward_smem<T, DH, R>();
        allow_dynamic_smem(attn::simt_forward<T, DH, R>, smem, op);
        attn::simt_forward<T, DH, R><<<dim3(unsigned(d.B * d.H), blocks_for(d.Tq, 16 * R)), 256, smem, st>>>(
            ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(res.out), ptr<A>(res.lse), d, A(scale));
        SESSA_CUDA_LAUNCH_CHECK(op);
      });
    }
    return res;
  });
}

ops::AttentionGrads attention_backward(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in,
                                       const Tensor& v_in, const Tensor& out_in, const Tensor& lse_in, int64_t q_offset,
                                       double scale, std::optional<double> rope_base) {
  const char* op = "attention_backward";
  const Device dev = q_in.device();
  return dispatch_float(q_in.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    constexpr bool kMma = std::is_same_v<T, bf16_t>;
    SESSA_CHECK(kMma || !rope_base, op, "rotates inside the bfloat16 kernels only, got " << q_in.str());
    auto prepare = [&](const Tensor& t) { return kMma ? unit_head_dim(t) : ops::contiguous(t); };
    const Tensor q = prepare(q_in), k = prepare(k_in), v = prepare(v_in), dout = prepare(dout_in),
                 out = prepare(out_in), lse = ops::contiguous(lse_in);
    // Gradients in the layout of their inputs (bfloat16), contiguous for the SIMT kernels.
    auto grad_like = [&](const Tensor& t) { return kMma ? empty_heads_like(t, t.dtype()) : empty_like(t); };
    ops::AttentionGrads g{grad_like(q), grad_like(k), grad_like(v)};
    const Dims d = dims_of(q, k, v, &out, &dout, &g, q_offset, op);
    const cudaStream_t st = stream(dev.index);
    const int64_t rows = int64_t(d.B) * d.H * d.Tq;
    const Tensor Dv = Tensor::empty({d.B, d.H, d.Tq}, {dtype_of<A>(), dev});
    if (rows > 0) {
      auto row_dot = [&](auto w, auto v) {
        constexpr int W = decltype(w)::value, V = decltype(v)::value;
        row_dot_kernel<T, W, V><<<blocks_for(rows * W), kThreads, 0, st>>>(ptr<T>(dout), ptr<T>(out), ptr<A>(Dv), d);
      };
      using std::integral_constant;
      bool packed = false;  // bf16 rows in 16-byte packs
      if constexpr (kMma) {
        packed = vectorizable(d.dh, {&dout, &out});
        if (packed && d.dh <= 64) row_dot(integral_constant<int, 8>{}, integral_constant<int, 8>{});
        if (packed && d.dh > 64) row_dot(integral_constant<int, 16>{}, integral_constant<int, 8>{});
      }
      if (!packed) row_dot(integral_constant<int, 32>{}, integral_constant<int, 1>{});
      SESSA_CUDA_LAUNCH_CHECK(op);
    }
    const bool run_dkdv = int64_t(d.B) * d.Hkv * d.Tk > 0;
    if constexpr (kMma) {
      if (!run_dkdv) return g;
      if (rows == 0) {  // no queries: dk and dv are zero (and the copy engine's maps need rows)
        for (const Tensor* t : {&g.dk, &g.dv})
          SESSA_CUDA_CHECK(cudaMemsetAsync(t->raw_data(), 0, size_t(t->numel()) * sizeof(bf16_t), st), op);
        return g;
      }
      const Tensor qt = tma_operand(q), kt = tma_operand(k), vt = tma_operand(v), gt = tma_operand(dout);
      // dq is summed over key tiles in float32 by the copy engine, then scaled and rounded. The
      // sum's rows must be 16 bytes apart: with a head dim not a multiple of 4 it is kept in
      // the padded layout of qt (its extra columns stay zero) and cut back at the end.
      const bool dq_padded = d.dh % 4 != 0 || d.dh == 0;
      const Tensor dq_acc = empty_heads_like(dq_padded ? qt : q, DType::F32);
      SESSA_CUDA_CHECK(cudaMemsetAsync(dq_acc.raw_data(), 0, size_t(dq_acc.numel()) * sizeof(float), st), op);
      const Tensor dq_out = dq_padded ? empty_heads_like(qt, DType::BF16) : g.dq;  // like dq_acc
      const bool vec = vectorizable(d.dh, {&g.dk, &g.dv});
      // RoPE's inverse rotation: dq's in the scaling pass, from the tables the forward's rope
      // made (queries at q_offset .. q_offset + Tq - 1: the tables cover keys 0 .. Tk - 1, and
      // Tk = q_offset + Tq); dk's (and a padded dq's) by rope after the walk.
      attn::RopeRows rot;
      RopeTables tables;
      if (rope_base && !dq_padded) {
        tables = rope_tables(dev, d.Tk, d.dh / 2, 0, *rope_base, DType::F32);
        rot = {ptr<float>(tables.cs), ptr<float>(tables.sn), d.dh, token_major(dq_acc) ? d.H : 1, d.Tq, q_offset};
      }
      with_mma_dh(d.dh, [&](auto dh_tag) {
        constexpr int DH = decltype(dh_tag)::value;
        using Tile = attn::WgmmaBackwardTile<DH>;
        const CUtensorMap q_map = tile_map_of(qt, Tile::BQ, op), k_map = tile_map_of(kt, Tile::BN, op),
                          v_map = tile_map_of(vt, Tile::BN, op), g_map = tile_map_of(gt, Tile::BQ, op),
                          dq_map = tile_map_of(dq_acc, Tile::BQ, op);
        allow_dynamic_smem(attn::wgmma_backward<DH>, Tile::smem_bytes, op);
        const int64_t blocks = int64_t(blocks_for(d.Tk, Tile::BN)) * d.B * d.Hkv;
        SESSA_CHECK(blocks <= INT32_MAX, op,
                    "needs " << blocks << " blocks for " << k.str() << ", above the grid's limit");
        attn::wgmma_backward<DH><<<unsigned(blocks), Tile::kThreads, Tile::smem_bytes, st>>>(
            q_map, k_map, v_map, g_map, dq_map, ptr<float>(lse), ptr<float>(Dv), ptr<bf16_t>(g.dk), ptr<bf16_t>(g.dv),
            d, float(scale) * attn::kLog2e, float(scale), vec);
      });
      SESSA_CUDA_LAUNCH_CHECK(op);
      const int64_t n = dq_acc.numel();
      if (n <= int64_t(UINT32_MAX))
        attn::scale_to_bf16_kernel<uint32_t><<<grid_stride_blocks(n / 8 + 1), kThreads, 0, st>>>(
            ptr<float>(dq_acc), ptr<bf16_t>(dq_out), float(scale), uint32_t(n), rot);
      else
        attn::scale_to_bf16_kernel<int64_t><<<grid_stride_blocks(n / 8 + 1), kThreads, 0, st>>>(
            ptr<float>(dq_acc), ptr<bf16_t>(dq_out), float(scale), n, rot);
      SESSA_CUDA_LAUNCH_CHECK(op);
      if (dq_padded) {
        ops::copy_(g.dq, ops::narrow(dq_out, 3, 0, d.dh));
        if (rope_base) g.dq = rope(g.dq, q_offset, *rope_base, true);
      }
      if (rope_base) g.dk = rope(g.dk, 0, *rope_base, true);
    } else {
      constexpr int R = sizeof(A) == 8 ? 2 : 4;
      with_simt_dh(d.dh, [&](auto dh_tag) {
        constexpr int DH = decltype(dh_tag)::value;
        if (rows > 0) {
          const size_t smem = attn::simt_dq_smem<T, DH, R>();
          allow_dynamic_smem(attn::simt_backward_dq<T, DH, R>, smem, op);
          attn::simt_backward_dq<T, DH, R><<<dim3(unsigned(d.B * d.H), blocks_for(d.Tq, 16 * R)), 256, smem, st>>>(
              ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(dout), ptr<A>(lse), ptr<A>(Dv), ptr<T>(g.dq), d, A(scale));
          SESSA_CUDA_LAUNCH_CHECK(op);
        }
        if (run_dkdv) {
          const size_t smem = attn::simt_dkdv_smem<T, DH, R>();
          allow_dynamic_smem(attn::simt_backward_dkdv<T, DH, R>, smem, op);
          attn::simt_backward_dkdv<T, DH, R><<<dim3(unsigned(d.B * d.Hkv), blocks_for(d.Tk, 16 * R)), 256, smem, st>>>(
              ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<T>(dout), ptr<A>(lse), ptr<A>(Dv), ptr<T>(g.dk), ptr<T>(g.dv), d,
              A(scale));
          SESSA_CUDA_LAUNCH_CHECK(op);
        }
      });
    }
    return g;
  });
}

}  // namespace sessa::cuda
