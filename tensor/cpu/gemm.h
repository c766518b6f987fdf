#pragma once
#include <cstdint>

namespace sessa::cpu {

// C = alpha * op(A) @ op(B) + beta * C, all matrices ROW-MAJOR.
// op(A) is M x K: A itself (lda >= K) when !trans_a, else A is stored K x M (lda >= M).
// op(B) is K x N: B itself (ldb >= N) when !trans_b, else B is stored N x K (ldb >= K).
// C is M x N with ldc >= N. beta == 0 means C is not read (may hold NaN).
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace sessa::cpu
