// Cache-blocked GEMM (Goto / BLIS scheme), float32 and float64, row-major.
//
// Loop nest (C is M x N, op(A) is M x K, op(B) is K x N):
//
//   for jc in [0, N) step NC            -- B block  (KC x NC) lives in L3
//     for pc in [0, K) step KC          -- rank-KC update of C
//       pack op(B)[pc:+KC, jc:+NC] -> Bp    (all threads, shared buffer)
//       for ic in [0, M) step MC        -- A block  (MC x KC) lives in L2   [parallel]
//         pack op(A)[ic:+MC, pc:+KC] -> Ap  (per-thread buffer)
//         for jr in [0, NC) step NR     -- B micro-panel (KC x NR) stays in L1
//           for ir in [0, MC) step MR   -- A micro-panels stream from L2
//             micro_kernel: C[ir:+MR, jr:+NR] += Ap_panel(MR x KC) @ Bp_panel(KC x NR)
//
// Sizing: the micro-kernel keeps an MR x NR tile of C in vector registers and,
// per k, does MR broadcasts of A against NR/lanes vector loads of B. The B
// micro-panel is re-read for every ir, so KC*NR*sizeof(T) should sit in L1
// (KC = 512, 64 KB, spills to L2 on Zen 4 yet measured faster than 256: each C
// tile is then loaded and stored half as often);
// the A block is re-read for every jr, so MC*KC*sizeof(T) should sit in L2;
// the packed B block is re-read for every ic, so KC*NC*sizeof(T) fits in L3.
// Packing copies both operands into contiguous, aligned, zero-padded panels,
// which also absorbs the transposes: the micro-kernel sees a single layout.
// Edge tiles are computed in full (padding is zero) and written back partially.
#include "tensor/cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <new>

namespace sessa::cpu {
namespace {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;    // zmm: 32 vector registers
constexpr int kRowsPerTile = 8;  // MR: 8 x 2 accumulators + 2 B + 1 broadcast <= 32 regs
#elif defined(__AVX__)
constexpr int kVecBytes = 32;    // ymm: 16 vector registers
constexpr int kRowsPerTile = 6;  // MR: 6 x 2 accumulators + 2 B + 1 broadcast <= 16 regs
#else
constexpr int kVecBytes = 16;
constexpr int kRowsPerTile = 6;
#endif
constexpr int64_t kSmallProblem = 32 * 32 * 32;  // below this M*N*K: direct loop
constexpr size_t kAlign = 64;

template <class T>
struct Blocking {
  typedef T Vec __attribute__((vector_size(kVecBytes)));
  static constexpr int kLanes = kVecBytes / int(sizeof(T));
  static constexpr int MR = kRowsPerTile;
  static constexpr int NV = 2;            // vectors per tile row
  static constexpr int NR = NV * kLanes;  // 32 floats / 16 doubles on AVX-512
  static constexpr int64_t KC = 512;      // B micro-panel KC*NR*sizeof(T) = 64 KB
  static constexpr int64_t MC = 240;      // A block MC*KC*sizeof(T) <= 480 KB, ~half L2
  static constexpr int64_t NC = 4096;     // B block KC*NC*sizeof(T) <= 8 MB, fits L3
};

// Aligned scratch buffer that only grows.
template <class T>
struct AlignedBuffer {
  T* ptr = nullptr;
  size_t size = 0;
  T* get(size_t n) {
    if (n > size) {
      release();
      ptr = static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kAlign)));
      size = n;
    }
    return ptr;
  }
  void release() {
    if (ptr) ::operator delete(ptr, std::align_val_t(kAlign));
    ptr = nullptr;
    size = 0;
  }
  ~AlignedBuffer() { release(); }
};

// Packs a kc x w slice into a zero-padded kc x W panel: out[k*W + j] = src[k*sk + j*sj].
// The loop order follows whichever source stride is unit, so reads stay sequential.
template <int W, class T>
void pack_panel(const T* src, int64_t sk, int64_t sj, int64_t w, int64_t kc, T* out) {
  if (sk == 1 && sj != 1) {
    for (int64_t j = 0; j < w; ++j)
      for (int64_t k = 0; k < kc; ++k) out[k * W + j] = src[j * sj + k];
  } else {
    for (int64_t k = 0; k < kc; ++k)
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) out[k * W + j] = src[k * sk + j * sj];
  }
  if (w < W)
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = w; j < W; ++j) out[k * W + j] = T(0);
}

// Packs op(A)[i0:+mc, p0:+kc] as consecutive MR-row panels (each kc x MR).
template <class T>
void pack_a(bool trans, const T* A, int64_t lda, int64_t i0, int64_t p0, int64_t mc, int64_t kc, T* out) {
  constexpr int MR = Blocking<T>::MR;
  const int64_t sk = trans ? lda : 1, si = trans ? 1 : lda;
  for (int64_t ir = 0; ir < mc; ir += MR)
    pack_panel<MR>(A + (i0 + ir) * si + p0 * sk, sk, si, std::min<int64_t>(MR, mc - ir), kc, out + ir * kc);
}

// Packs one NR-column panel op(B)[p0:+kc, j0:+nr] (kc x NR).
template <class T>
void pack_b_panel(bool trans, const T* B, int64_t ldb, int64_t p0, int64_t j0, int64_t nr, int64_t kc, T* out) {
  const int64_t sk = trans ? 1 : ldb, sj = trans ? ldb : 1;
  pack_panel<Blocking<T>::NR>(B + p0 * sk + j0 * sj, sk, sj, nr, kc, out);
}

// C[0:mr, 0:nr] = alpha * (Ap @ Bp) + beta * C, for one MR x NR register tile.
template <class T>
void micro_kernel(int64_t kc, const T* __restrict Ap, const T* __restrict Bp, T alpha, T beta, T* C, int64_t ldc,
                  int64_t mr, int64_t nr) {
  using B = Blocking<T>;
  using Vec = typename B::Vec;
  Vec acc[B::MR][B::NV] = {};
  for (int64_t k = 0; k < kc; ++k, Ap += B::MR, Bp += B::NR) {
    Vec b[B::NV];
#pragma GCC unroll 4
    for (int v = 0; v < B::NV; ++v) std::memcpy(&b[v], Bp + v * B::kLanes, sizeof(Vec));
#pragma GCC unroll 16
    for (int i = 0; i < B::MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < B::NV; ++v) acc[i][v] += Ap[i] * b[v];
  }
  alignas(kAlign) T tile[B::MR][B::NR];
  std::memcpy(tile, acc, sizeof(tile));
  for (int64_t i = 0; i < mr; ++i) {
    T* c = C + i * ldc;
    if (beta == T(0)) {
#pragma omp simd
      for (int64_t j = 0; j < nr; ++j) c[j] = alpha * tile[i][j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < nr; ++j) c[j] = alpha * tile[i][j] + beta * c[j];
    }
  }
}

// Plain loop for tiny problems, where packing would cost more than it saves.
template <class T>
void gemm_direct(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
                 int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T sum = T(0);
      for (int64_t p = 0; p < K; ++p)
        sum += (ta ? A[p * lda + i] : A[i * lda + p]) * (tb ? B[j * ldb + p] : B[p * ldb + j]);
      T& c = C[i * ldc + j];
      c = beta == T(0) ? alpha * sum : alpha * sum + beta * c;
    }
}

// C = beta * C (beta == 0 writes zeros without reading C).
template <class T>
void scale_c(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
}

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Macro-kernel: C[0:mc, j_begin:j_end] (+)= packed A block @ packed B columns.
template <class T>
void macro_kernel(int64_t mc, int64_t j_begin, int64_t j_end, int64_t kc, const T* Ap, const T* Bp, T alpha, T beta,
                  T* C, int64_t ldc) {
  using Bk = Blocking<T>;
  for (int64_t jr = j_begin; jr < j_end; jr += Bk::NR)
    for (int64_t ir = 0; ir < mc; ir += Bk::MR)
      micro_kernel(kc, Ap + ir * kc, Bp + jr * kc, alpha, beta, C + ir * ldc + jr, ldc,
                   std::min<int64_t>(Bk::MR, mc - ir), std::min<int64_t>(Bk::NR, j_end - jr));
}

template <class T>
void gemm_blocked(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
                  int64_t ldb, T beta, T* C, int64_t ldc) {
  using Bk = Blocking<T>;
  const int nthreads = omp_get_max_threads();
  // Work units are (A row block) x (column chunk of the B block). Row blocks are
  // shrunk so their count is a multiple of the thread count; column chunks > 1
  // only when M is too short to give every thread its own row block.
  const int64_t want_blocks = round_up(ceil_div(M, Bk::MC), nthreads);
  const int64_t mc_max = std::min(Bk::MC, round_up(ceil_div(M, want_blocks), Bk::MR));
  const int64_t m_blocks = ceil_div(M, mc_max);
  const int64_t nc_max = std::min(Bk::NC, round_up(N, Bk::NR));
  const int64_t kc_max = std::min(Bk::KC, K);
  const int64_t n_chunks = std::min(nc_max / Bk::NR, ceil_div(nthreads, m_blocks));

  // Buffers are thread_local so concurrent callers (and nested calls) never share one.
  static thread_local AlignedBuffer<T> b_buffer, a_buffer;
  T* Bp = b_buffer.get(size_t(kc_max * nc_max));  // owned by the calling thread, shared below
#pragma omp parallel num_threads(nthreads)
  {
    T* Ap = a_buffer.get(size_t(mc_max * kc_max));
    for (int64_t jc = 0; jc < N; jc += Bk::NC) {
      const int64_t nc = std::min(Bk::NC, N - jc), panels = ceil_div(nc, Bk::NR);
      for (int64_t pc = 0; pc < K; pc += Bk::KC) {
        const int64_t kc = std::min(Bk::KC, K - pc);
        const T beta_eff = pc == 0 ? beta : T(1);  // later rank-KC updates accumulate
#pragma omp for schedule(dynamic, 4)
        for (int64_t jr = 0; jr < nc; jr += Bk::NR)
          pack_b_panel(tb, B, ldb, pc, jc + jr, std::min<int64_t>(Bk::NR, nc - jr), kc, Bp + jr * kc);
#pragma omp for schedule(dynamic, 1)
        for (int64_t unit = 0; unit < m_blocks * n_chunks; ++unit) {
          const int64_t ic = unit / n_chunks * mc_max, mc = std::min(mc_max, M - ic);
          const int64_t chunk = unit % n_chunks;
          const int64_t j_begin = chunk * panels / n_chunks * Bk::NR;
          const int64_t j_end = std::min(nc, (chunk + 1) * panels / n_chunks * Bk::NR);
          pack_a(ta, A, lda, ic, pc, mc, kc, Ap);
          macro_kernel(mc, j_begin, j_end, kc, Ap, Bp, alpha, beta_eff, C + ic * ldc + jc, ldc);
        }
      }
    }
  }
}

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == T(0)) return scale_c(M, N, beta, C, ldc);
  if (M * N * K < kSmallProblem) return gemm_direct(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  gemm_blocked(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                           int64_t, double, double*, int64_t);

}  // namespace sessa::cpu
