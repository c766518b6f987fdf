// The CUDA half of the Mamba ops (conv kernels in nn/mamba_conv.cu, the selective scan in
// nn/mamba_scan.cu), in sessa::cuda with every CUDA entry point. Each function is the
// CUDA path of the raw kernel in nn/mamba_ops.h of the same name (selective_scan here:
// nn::selective_scan_forward), whose argument checks (shapes, dtypes, one device) have
// already run. Inputs may be non-contiguous; dtypes float32, bfloat16 (float arithmetic)
// and float64. Backward reductions (dw, dbias, dA, dD, dBm, dCm) are deterministic:
// per-block partials, then a second pass. selective_scan supports a state size N of at
// most 64; its checkpoints are the float32 (float64 for float64) states entering every
// 32nd step (16th for N > 16), (B, segments, N, Di), which selective_scan_backward reuses instead of
// recomputing them when given.
#pragma once
#include "nn/mamba_ops.h"

namespace sessa::cuda {

Tensor causal_conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, bool silu);
nn::Conv1dGrads causal_conv1d_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& bias,
                                       bool silu);

Tensor selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                      const Tensor& Dskip, const Tensor& z, Tensor* checkpoints);
nn::SelectiveScanGrads selective_scan_backward(const Tensor& dy, const Tensor& u, const Tensor& delta, const Tensor& A,
                                               const Tensor& Bm, const Tensor& Cm, const Tensor& Dskip, const Tensor& z,
                                               const Tensor& checkpoints, bool ddelta_wrt_dt);

}  // namespace sessa::cuda
