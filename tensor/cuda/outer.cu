// Rank-1 products C (+)= a b^T: what a GEMM with inner dim K = 1 computes, e.g. the input
// gradient of a layer with one output (Sessa's gate projection: dx = dy w, (M, 1) x (1, N)).
// cuBLAS runs those as tiled GEMMs at a fraction of the memory bandwidth (a (16384, 768)
// bfloat16 sum took 30 us on an H200, where reading and writing it takes ~13), so
// matmul_into (blas.cpp) sends them here: the product is elementwise, each thread one
// 16-byte pack of a row of C, a[m] times b's matching pack (b is small and stays cached).
// Arithmetic in float (double for double); C in the operands' dtype, or float32 for
// bfloat16 operands.
#include "tensor/cuda/basic.h"
#include "tensor/cuda/blas.h"
#include "tensor/cuda/common.cuh"

namespace sessa::cuda {

namespace {

// C (M x N, row-major, contiguous) (+)= a b^T: a[m] at a + m * a_step, b[n] at b + n * b_step.
// Thread i: the P elements n0 .. n0 + P - 1 of row m (N a multiple of P).
template <class T, class O, int P>
__global__ void outer_kernel(const T* a, int64_t a_step, const T* b, int64_t b_step, O* c, int64_t M, int64_t N,
                             bool accumulate) {
  const int64_t packs_per_row = N / P, packs = M * packs_per_row;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < packs; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / packs_per_row, n0 = (i - m * packs_per_row) * P;
    const acc_t<O> am = load(a + m * a_step);
    Pack<O, P> out;
    if (accumulate) out = load_pack<P>(c, m * N + n0);
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const acc_t<O> product = am * load(b + (n0 + k) * b_step);
      store(&out.v[k], accumulate ? load(&out.v[k]) + product : product);
    }
    store_pack<P>(c, m * N + n0, out);
  }
}

}  // namespace

void outer_into(int device, int64_t M, int64_t N, const GemmOperand& a, const GemmOperand& b, void* c, DType c_dtype,
                bool accumulate) {
  const char* op = "matmul";
  SESSA_CHECK(a.dtype == b.dtype && (c_dtype == a.dtype || (c_dtype == DType::F32 && a.dtype == DType::BF16)), op,
              "rank-1 product: operands " << dtype_name(a.dtype) << " and " << dtype_name(b.dtype) << " into "
                                          << dtype_name(c_dtype));
  if (M == 0 || N == 0) return;
  // Element m of a (M x 1) and n of b (1 x N), in the layouts gemm_view describes.
  const int64_t a_step = a.trans ? 1 : a.ld, b_step = b.trans ? b.ld : 1;
  const cudaStream_t st = stream(device);
  dispatch_float(a.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](auto out_tag) {
      using O = decltype(out_tag);
      O* out = static_cast<O*>(c);
      constexpr int kP = kPackOf<O>;
      with_pack<kP>(N % kP == 0 && pack_aligned<kP>(out), [&](auto pack) {
        constexpr int P = decltype(pack)::value;
        outer_kernel<T, O, P><<<grid_stride_blocks(M * (N / P)), kThreads, 0, st>>>(
            static_cast<const T*>(a.data), a_step, static_cast<const T*>(b.data), b_step, out, M, N, accumulate);
        SESSA_CUDA_LAUNCH_CHECK(op);
      });
    };
    if (c_dtype == a.dtype)
      launch(T{});
    else
      launch(float{});
  });
}

}  // namespace sessa::cuda
