// CUDA selective scan: the launches (the kernels are in nn/mamba_scan.cuh, the math and
// the float64 CPU reference in nn/mamba_ops.h and .cpp).
//
// Design. A thread owns 4 states of one channel and walks time; a block is 64 channels
// x 4 state groups (256 threads) for N <= 16, 32 x 16 (512) for N <= 64. Inputs are staged
// through shared memory; the forward fetches the next tile into registers during this
// one (register prefetch), the backward loads a tile right before staging it and relies
// on its other resident blocks to hide the latency. Time is split into chunks as well when
// that fills the GPU's resident-block slots better (time_chunks): pass 1 per chunk from a
// zero state, a carry kernel composing the chunks' maps, the main pass from the true state.
// Checkpoints: the forward keeps the state entering every 32nd step (16th for N > 16),
// (B, segments, N, Di) float32 (float64 for float64), which the backward reuses (or
// recomputes without y). Backward per checkpoint segment: a forward walk keeps the state
// entering each 8-step (4 for N > 16) sub-segment (the thread's shared slots); per sub-segment, last first: a forward
// walk leaves h_{t-1} in shared slots, a backward walk recomputes e_t and forms the gradients.
//
// Why this shape. The previous kernels ran one thread per (b, channel) with all 16
// states: 24,576 threads at 16 x 1024, ~6 warps per SM, global loads 8 steps ahead and
// Bm/Cm staged by serial loads between barriers; ncu: latency-bound, 4% of the copy
// bandwidth. Splitting the states over 4 threads gives 4x the threads with no extra work
// (the sums over n go through shared memory once per tile), and the staged tiles replace
// per-step global loads. Splitting time instead costs a second walk with its exp per
// (t, n), and EX2 is the scarcest unit (below).
//
// Cost model, H200 (132 SMs, ~1.98 GHz; per SM and clock 128 thread-instructions issued,
// 16 MUFU.EX2), at B 16, T 1024, Di 1536, N 16: 25.2M (t, c) pairs, 403M (t, n) updates.
// One instruction per (t, n) = 12 us of issue; one EX2 per (t, n) = 96 us of MUFU.
//   Bytes, bf16, gated (bench/mamba_scan.cpp's count): forward 4 B T Di + 2 B T N
//   elements = 202 MB, backward 7 B T Di + 4 B T N = 354 MB. Beyond those: the float32
//   checkpoints (403M / 32 x 4 B = 50 MB written, 50 MB read) and the dBm/dCm partials
//   (24 channel blocks x B x 2N x T x 4 B = 50 MB written, 50 MB read): ~760 MB moved,
//   ~0.2 ms at ~3.7 TB/s. Not the limit.
//   Forward per (t, n): FMUL (delta a), EX2, FMUL + FFMA (h), FFMA (y); per step and
//   thread 3 shared loads, an FMUL and a shared store over its 4 states; the y epilogue
//   per (t, c) (4 group sums, D u, the SiLU gate with 2 MUFU, a store: ~16 over 16
//   states) and the staging (~0.5): ~7.7 instructions (92 us) and 1.13 MUFU (108 us):
//   ~110 us, MUFU-bound.
//   Backward per (t, n): the segment walk over 3/4 of the steps (~3.6), the sub-segment
//   walk (~5), the backward step (EX2 again, 13 FP, shared loads: ~15), the warp sums of
//   the 8 dBm/dCm terms per lane (a shuffle butterfly: 9 SHFL, 9 FADD, 14 selects per
//   step over 4 states: ~8), the du/ddelta/dz epilogue per (t, c) (~2.3), staging (~1.3):
//   ~35 instructions (~420 us) and 2.8 EX2 (~270 us): issue-bound, ~0.42 ms; the
//   cross-channel sums and the two re-walks are ~45% of it.
//   Shared memory (128 B per clock per SM; shuffles assumed to share that pipe), per
//   warp-step (4 states x 32 lanes): forward ~8 wavefronts (the (u, delta) pair 2, Bm and
//   Cm broadcasts 2, the y part 1, epilogue and staging ~3) against ~8 clocks of MUFU and
//   ~8 of issue: balanced; backward ~43 (walk 3.8, sub-segment walk 9, backward step 15,
//   shuffles 9, epilogue and staging ~7) against ~35 of issue: if shuffles do share the
//   pipe, the backward is bound there, ~0.5 ms. ncu's "MIO throttle" / "shared memory"
//   stall share tells which; the cheapest cuts are splitting the staged (u, delta, gy,
//   dzf) tile into separate arrays (the walks read 2 of its 4 values) and 3-value
//   partial slots (~6 wavefronts).
//   Residency (ptxas, sm_90): forward 80 registers, 30 KB shared: 3 blocks (24 warps) per
//   SM; backward 80 registers, 56 KB: 3 blocks (24 warps). A register prefetch of the
//   backward's next tile needed 102 registers (2 blocks) and measured slower.
//   Loads in flight per thread: forward 3 x 4 (t, c) values + 2 Bm/Cm values per 16-step
//   tile, issued ~400 issue slots per warp ahead of use; backward 4 x 2 + 1 per 8-step tile.
//   Expected at 16 x 1024: forward one chunk, 384 blocks in 396 slots: ~0.11-0.13 ms;
//   backward ~0.46-0.55 ms; finalize kernels ~0.03 ms: ~0.6-0.7 ms in all, ~22-26% of the
//   copy bandwidth for the 556 MB the bench counts.
//   Floor, whatever the design (no (B, T, Di, N) tensor stored, state in float32): per
//   (t, c, n) the forward needs 4 FP32 instructions and one exponential (delta a, dtu Bm,
//   the h and y FMAs); the backward must rebuild h_{t-1} (3 FP32 and the exponential,
//   kept for the reverse step at best) and then form gh, q, e h, w and the five sums
//   (dA, ddelta, du, dz, and the dBm, dCm terms with their adds over channels): 12-13.
//   About 22 instructions per (t, c, n) in all, each an issue slot (128 per SM and clock,
//   whichever pipe; an exponential moved to the FMA pipe as a polynomial only adds
//   slots): 22 x 403M / (128 x 132 x 1.98 GHz) = 0.265 ms at 100% issue and no loads,
//   stores, staging or address arithmetic. Half the copy bandwidth moves the bench's bytes
//   in 0.278 ms gated (557 MB) and 0.202 ms ungated (406 MB): issue #16's 50% is out of
//   reach of any scan of this recurrence on this GPU (docs/performance.md, fifteenth
//   session); what is left is the way from ~1.4 ms to a practical ~0.4 ms.
//   Measured (H200, bench_mamba_scan, bf16 16 x 1024): forward 0.26 ms, backward 1.05 ms,
//   1.32 ms in all (the previous design 2.7; 1.55 until the tile registers kept the stored
//   bf16 values, docs/performance.md 2026-12-01 second session): about 2x the model in both
//   kernels, 10% of the copy bandwidth when gated; an ncu source-level look at where the
//   model is wrong comes before more tuning.
#include <algorithm>
#include <type_traits>

#include "nn/mamba_cuda.h"
#include "nn/mamba_partials.cuh"
#include "nn/mamba_scan.cuh"
#include "tensor/ops.h"

namespace sessa::cuda {

namespace {

using namespace scan;

// f(integral_constant<int, kNG>) for the state groups that N needs.
template <class Fn>
void with_groups(int64_t N, Fn&& f) {
  if (N <= 16)
    f(std::integral_constant<int, 4>{});
  else
    f(std::integral_constant<int, 16>{});
}

int64_t checkpoint_spacing(int64_t N) { return N <= 16 ? Geo<4>::kEvery : Geo<16>::kEvery; }

// u, delta, dy may be any (B, T, Di) view with unit channel stride; Bm, Cm any (B, T, N)
// view with unit state stride (the mixer's slices of the x_proj output): ops::unit_last_stride.
// Others are copied.
using ops::unit_last_stride;

void check_scan_sizes(const char* op, int64_t B, int64_t T, int64_t Di, int64_t N) {
  SESSA_CHECK(N <= kMaxState, op, "state size N = " << N << " is not supported on cuda (at most " << kMaxState << ")");
  SESSA_CHECK(B <= 65535 && B * T * Di < (int64_t(1) << 31) && T < (int64_t(1) << 30), op,
              "sizes too large for the cuda kernels (batch at most 65535, B*T*channels below 2^31); got B "
                  << B << ", T " << T << ", channels " << Di);
}

ScanParams make_params(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                       const Tensor& Dk) {
  ScanParams p;
  p.batch = int(u.size(0)), p.seqlen = int(u.size(1)), p.dim = int(u.size(2)), p.dstate = int(A.size(1));
  const int64_t every = checkpoint_spacing(A.size(1));
  p.segments = int((u.size(1) + every - 1) / every);
  p.u_bstride = u.strides()[0], p.u_tstride = u.strides()[1];
  p.delta_bstride = delta.strides()[0], p.delta_tstride = delta.strides()[1];
  p.B_bstride = Bm.strides()[0], p.B_tstride = Bm.strides()[1];
  p.C_bstride = Cm.strides()[0], p.C_tstride = Cm.strides()[1];
  p.u = u.raw_data(), p.delta = delta.raw_data(), p.A = A.raw_data(), p.Bm = Bm.raw_data(), p.Cm = Cm.raw_data();
  p.D = Dk.raw_data();
  return p;
}

// Resident blocks of `kernel` (kThr threads, `smem` bytes of shared memory) on the GPU.
template <int kNG, class Kernel>
int64_t resident_blocks(Kernel kernel, size_t smem, int device, const char* op) {
  int per_sm = 0;
  SESSA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Geo<kNG>::kThr, smem), op);
  return int64_t(std::max(per_sm, 1)) * sm_count(device);
}

// Time chunks of whole checkpoint segments. A launch of n blocks with S resident slots runs
// in ceil(n / S) waves, each as long as one block's walk, which is proportional to the chunk
// length: a wave that fills few slots costs as much as a full one (a block's walk is a chain
// of dependent steps). With `blocks` blocks per chunk, c chunks of len steps cost
//   ceil(c blocks / S_main) len + pass1_cost ceil((c - 1) blocks / S_pass1) len,
// pass 1 walking every chunk but one (its own kernel, its own slots). The count minimises
// that, at most kMaxChunks; ties go to more chunks. Measured on the H200 (Mamba small, bf16,
// 4 x 4096: 96 blocks per chunk, 396 slots; docs/performance.md, 2026-12-01 fifth session),
// forward / backward chunks: 4 / 4 349.4k tok/s, 8 / 8 354.8k, 12 / 12 361.8k, 16 / 16
// 358.5k, 5 / 5 337.4k, 2 / 4 339.6k, 4 / 2 305.0k; at 16 x 1024 (384 blocks) one chunk
// 390.8k, 2 / 2 372.2k. The model picks 8 / 12 and one chunk; it favours 16 by 1-3%, which
// measured slower than 12 (a block's fixed start, not in the model), hence the cap.
constexpr int64_t kMaxChunks = 12;
template <class Acc, int kNG>
Chunks<Acc> time_chunks(const ScanParams& p, int64_t main_slots, int64_t pass1_slots, double pass1_cost) {
  const int64_t blocks = int64_t(p.batch) * ((p.dim + Geo<kNG>::kC - 1) / Geo<kNG>::kC);
  const auto waves = [](int64_t n, int64_t slots) { return double((n + slots - 1) / slots); };
  Chunks<Acc> best;
  double best_cost = 0;
  for (int64_t c = 1; c <= std::min(kMaxChunks, int64_t(p.segments)); ++c) {
    const int64_t per_chunk = (p.segments + c - 1) / c, count = (p.segments + per_chunk - 1) / per_chunk;
    const double cost =
        double(per_chunk) * (waves(count * blocks, main_slots) + pass1_cost * waves((count - 1) * blocks, pass1_slots));
    if (c == 1 || cost <= best_cost * (1 + 1e-9))
      best.len = int(per_chunk * Geo<kNG>::kEvery), best.count = int(count), best_cost = cost;
  }
  return best;
}

// Pass 1's cost per step relative to the main pass, as measured (H200, ncu, Mamba B 4,
// T 4096, four chunks; the instruction counts of the header predicted 0.6 and 0.2): the
// forward's pass 1 walks the state like the main pass and costs nearly as much.
constexpr double kFwdPass1Cost = 0.8, kBwdPass1Cost = 0.28;

template <int kNG>
dim3 scan_grid(const ScanParams& p, int chunks) {
  return {unsigned((p.dim + Geo<kNG>::kC - 1) / Geo<kNG>::kC), unsigned(p.batch), unsigned(chunks)};
}

// (count, B, N, Di) in the accumulation type.
Tensor chunk_table(const ScanParams& p, int count, const Tensor& like) {
  return Tensor::empty({count, p.batch, p.dstate, p.dim}, {accumulation_dtype(like.dtype()), like.device()});
}

// The carry kernel over (B, N, Di) rows.
template <class Acc, bool kReverse>
void launch_carry(const ScanParams& p, const Chunks<Acc>& tc, Acc* carry, cudaStream_t st, const char* op) {
  const int64_t rows = int64_t(p.batch) * p.dim * p.dstate;
  if (rows == 0) return;
  scan_carry_kernel<Acc, kReverse><<<blocks_for(rows), kThreads, 0, st>>>(tc, carry, rows);
  SESSA_CUDA_LAUNCH_CHECK(op);
}

// The forward: y (if p.y) and the checkpoints (if p.ckpt).
// Shared memory per block fits the 227 KB an sm_90 block may opt into.
template <class Acc, int kNG>
constexpr bool fits_smem = sizeof(FwdSmem<Acc, kNG>) <= 227 * 1024 && sizeof(BwdSmem<Acc, kNG>) <= 227 * 1024;
static_assert(fits_smem<float, 4> && fits_smem<double, 4> && fits_smem<float, 16> && fits_smem<double, 16>,
              "a scan block needs more shared memory than sm_90 has");

template <class F, int kNG>
void run_forward(const ScanParams& p, const Tensor& like, cudaStream_t st, const char* op) {
  using Acc = acc_t<F>;
  constexpr size_t smem = sizeof(FwdSmem<Acc, kNG>);
  auto pass1 = scan_fwd_kernel<F, kNG, false>;
  auto final_pass = scan_fwd_kernel<F, kNG, true>;
  allow_dynamic_smem(pass1, smem, op), allow_dynamic_smem(final_pass, smem, op);
  const int dev = like.device().index;
  Chunks<Acc> tc = time_chunks<Acc, kNG>(p, resident_blocks<kNG>(final_pass, smem, dev, op),
                                         resident_blocks<kNG>(pass1, smem, dev, op), kFwdPass1Cost);
  const dim3 grid = scan_grid<kNG>(p, tc.count);
  Tensor ends, prods, carry;
  if (tc.count > 1) {  // pass 1 on chunks 0 .. count-2, then the states entering each chunk
    ends = chunk_table(p, tc.count, like), prods = chunk_table(p, tc.count, like);
    carry = chunk_table(p, tc.count, like);
    tc.ends = static_cast<Acc*>(ends.raw_data()), tc.prods = static_cast<Acc*>(prods.raw_data());
    ScanParams p1 = p;
    p1.y = nullptr, p1.z = nullptr, p1.ckpt = nullptr;  // (nothing but the chunk maps)
    pass1<<<dim3{grid.x, grid.y, grid.z - 1}, Geo<kNG>::kThr, smem, st>>>(p1, tc);
    SESSA_CUDA_LAUNCH_CHECK(op);
    launch_carry<Acc, false>(p, tc, static_cast<Acc*>(carry.raw_data()), st, op);
    tc.carry = static_cast<const Acc*>(carry.raw_data());
  }
  ScanParams pf = p;
  if (!pf.y) pf.z = nullptr;  // checkpoints only: no gate to load
  final_pass<<<grid, Geo<kNG>::kThr, smem, st>>>(pf, tc);
  SESSA_CUDA_LAUNCH_CHECK(op);
}

// The backward kernels; p.ckpt holds the checkpoints, p.part_bc is (channel blocks, B,
// 2N, T); part_ad becomes (B, count, N + 1, Di) for the chunk count chosen here.
template <class F, int kNG>
void run_backward(ScanParams& p, const Tensor& like, Tensor& part_ad, cudaStream_t st, const char* op) {
  using Acc = acc_t<F>;
  constexpr size_t smem = sizeof(BwdSmem<Acc, kNG>), smem1 = sizeof(BwdPass1Smem<Acc, kNG>);
  auto pass1 = scan_bwd_pass1_kernel<F, kNG>;
  auto main_pass = scan_bwd_kernel<F, kNG>;
  allow_dynamic_smem(pass1, smem1, op), allow_dynamic_smem(main_pass, smem, op);
  const int dev = like.device().index;
  Chunks<Acc> tc = time_chunks<Acc, kNG>(p, resident_blocks<kNG>(main_pass, smem, dev, op),
                                         resident_blocks<kNG>(pass1, smem1, dev, op), kBwdPass1Cost);
  const dim3 grid = scan_grid<kNG>(p, tc.count);
  part_ad = Tensor::empty({p.batch, tc.count, p.dstate + 1, p.dim}, {accumulation_dtype(like.dtype()), like.device()});
  p.part_ad = part_ad.raw_data();
  Tensor ends, prods, carry;
  if (tc.count > 1) {  // pass 1 on chunks 1 .. count-1, then the q entering each chunk
    ends = chunk_table(p, tc.count, like), prods = chunk_table(p, tc.count, like);
    carry = chunk_table(p, tc.count, like);
    tc.ends = static_cast<Acc*>(ends.raw_data()), tc.prods = static_cast<Acc*>(prods.raw_data());
    pass1<<<dim3{grid.x, grid.y, grid.z - 1}, Geo<kNG>::kThr, smem1, st>>>(p, tc);
    SESSA_CUDA_LAUNCH_CHECK(op);
    launch_carry<Acc, true>(p, tc, static_cast<Acc*>(carry.raw_data()), st, op);
    tc.carry = static_cast<const Acc*>(carry.raw_data());
  }
  main_pass<<<grid, Geo<kNG>::kThr, smem, st>>>(p, tc);
  SESSA_CUDA_LAUNCH_CHECK(op);
}

}  // namespace

Tensor selective_scan(const Tensor& u_in, const Tensor& delta_in, const Tensor& A_in, const Tensor& Bm_in,
                      const Tensor& Cm_in, const Tensor& D_in, const Tensor& z_in, Tensor* checkpoints) {
  const char* op = "selective_scan";
  Tensor u = unit_last_stride(u_in), delta = unit_last_stride(delta_in), A = ops::contiguous(A_in),
         Bm = unit_last_stride(Bm_in), Cm = unit_last_stride(Cm_in), Dk = ops::contiguous(D_in);
  const int64_t B = u.size(0), T = u.size(1), Di = u.size(2), N = A.size(1);
  check_scan_sizes(op, B, T, Di, N);
  Tensor y = Tensor::empty(u.shape(), u.options());
  if (checkpoints) *checkpoints = Tensor();
  if (y.numel() == 0) return y;
  ScanParams p = make_params(u, delta, A, Bm, Cm, Dk);
  p.y = y.raw_data();
  Tensor z = z_in.defined() ? unit_last_stride(z_in) : Tensor();
  if (z.defined()) p.z = z.raw_data(), p.z_bstride = z.strides()[0], p.z_tstride = z.strides()[1];
  if (checkpoints) {
    *checkpoints = Tensor::empty({B, p.segments, N, Di}, {accumulation_dtype(u.dtype()), u.device()});
    p.ckpt = checkpoints->raw_data();
  }
  cudaStream_t st = stream(u.device().index);
  dispatch_float(u.dtype(), op, [&](auto tag) {
    with_groups(N, [&](auto kNG) { run_forward<decltype(tag), decltype(kNG)::value>(p, u, st, op); });
  });
  return y;
}

nn::SelectiveScanGrads selective_scan_backward(const Tensor& dy_in, const Tensor& u_in, const Tensor& delta_in,
                                               const Tensor& A_in, const Tensor& Bm_in, const Tensor& Cm_in,
                                               const Tensor& D_in, const Tensor& z_in, const Tensor& checkpoints,
                                               bool ddelta_wrt_dt) {
  const char* op = "selective_scan_backward";
  Tensor dy = unit_last_stride(dy_in), u = unit_last_stride(u_in), delta = unit_last_stride(delta_in),
         A = ops::contiguous(A_in), Bm = unit_last_stride(Bm_in), Cm = unit_last_stride(Cm_in),
         Dk = ops::contiguous(D_in);
  const int64_t B = u.size(0), T = u.size(1), Di = u.size(2), N = A.size(1);
  check_scan_sizes(op, B, T, Di, N);
  const TensorOptions opt = u.options(), acc{accumulation_dtype(u.dtype()), u.device()};
  const bool gate = z_in.defined();
  if (u.numel() == 0)
    return {zeros(u.shape(), opt),
            zeros(u.shape(), opt),
            zeros(A.shape(), opt),
            zeros(Bm.shape(), opt),
            zeros(Cm.shape(), opt),
            zeros(Dk.shape(), opt),
            gate ? zeros(u.shape(), opt) : Tensor()};
  nn::SelectiveScanGrads g{Tensor::empty(u.shape(), opt),
                           Tensor::empty(u.shape(), opt),
                           Tensor::empty(A.shape(), opt),
                           Tensor::empty(Bm.shape(), opt),
                           Tensor::empty(Cm.shape(), opt),
                           Tensor::empty(Dk.shape(), opt),
                           gate ? Tensor::empty(u.shape(), opt) : Tensor()};
  ScanParams p = make_params(u, delta, A, Bm, Cm, Dk);
  p.ddelta_wrt_dt = ddelta_wrt_dt;
  Tensor z = gate ? unit_last_stride(z_in) : Tensor();
  if (gate) p.z = z.raw_data(), p.z_bstride = z.strides()[0], p.z_tstride = z.strides()[1];
  // Checkpoints from the forward if they fit this call; otherwise the forward makes them (no y).
  const Shape ck_shape{B, p.segments, N, Di};
  Tensor ckpt = checkpoints;
  const bool ready = ckpt.defined() && ckpt.shape() == ck_shape && ckpt.dtype() == acc.dtype &&
                     ckpt.device() == u.device() && ckpt.is_contiguous();
  cudaStream_t st = stream(u.device().index);
  dispatch_float(u.dtype(), op, [&](auto tag) {
    using F = decltype(tag);
    using Acc = acc_t<F>;
    with_groups(N, [&](auto kNGc) {
      constexpr int kNG = decltype(kNGc)::value;
      if (!ready) {
        ckpt = Tensor::empty(ck_shape, acc);
        ScanParams pf = p;
        pf.ckpt = ckpt.raw_data();
        run_forward<F, kNG>(pf, u, st, op);
      }
      p.ckpt = ckpt.raw_data();
      p.dy = dy.raw_data(), p.dy_bstride = dy.strides()[0], p.dy_tstride = dy.strides()[1];
      p.du = g.du.raw_data(), p.ddelta = g.ddelta.raw_data();
      if (gate) p.dz = g.dz.raw_data();
      const int64_t groups = (Di + Geo<kNG>::kC - 1) / Geo<kNG>::kC;
      Tensor part_bc = Tensor::empty({groups, B, 2 * N, T}, acc), part_ad;
      p.part_bc = part_bc.raw_data();
      run_backward<F, kNG>(p, u, part_ad, st, op);
      scan_dbc_finalize_kernel<F><<<blocks_for(B * 2 * N * T), kThreads, 0, st>>>(
          static_cast<const Acc*>(part_bc.raw_data()), static_cast<F*>(g.dB.raw_data()),
          static_cast<F*>(g.dC.raw_data()), int(groups), int(B), int(T), int(N));
      SESSA_CUDA_LAUNCH_CHECK(op);
      // dA (Di, N) and dD (Di): the (b, chunk) partials (B * count, N + 1, Di) summed.
      sum_split_partials<F>(static_cast<const Acc*>(part_ad.raw_data()), static_cast<F*>(g.dA.raw_data()),
                            static_cast<F*>(g.dD.raw_data()), int(part_ad.size(0) * part_ad.size(1)), int(Di), int(N),
                            st, op);
    });
  });
  return g;
}

}  // namespace sessa::cuda
