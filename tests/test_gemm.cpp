// Tests for sessa::cpu::gemm against a naive triple loop accumulated in double.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "tensor/cpu/gemm.h"

namespace {

struct Lcg {
  uint64_t state;
  explicit Lcg(uint64_t seed) : state(seed) {}
  double next() {  // uniform in [-1, 1)
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return double(state >> 11) * (2.0 / 9007199254740992.0) - 1.0;
  }
};

template <class T>
std::vector<T> random_matrix(int64_t rows, int64_t ld, Lcg& rng) {
  std::vector<T> m(size_t(rows * ld));
  for (auto& x : m) x = T(rng.next());
  return m;
}

// Reference C = alpha * op(A) op(B) + beta * C in double; returns the result
// plus, per element, sum_k |a_ik * b_kj| + |beta * c| to scale the error bound.
template <class T>
void reference(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const std::vector<T>& A, int64_t lda,
               const std::vector<T>& B, int64_t ldb, double beta, const std::vector<T>& C, int64_t ldc,
               std::vector<double>& out, std::vector<double>& mag) {
  out.assign(size_t(M * N), 0.0);
  mag.assign(size_t(M * N), 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0, m = 0;
      for (int64_t p = 0; p < K; ++p) {
        const double a = ta ? A[size_t(p * lda + i)] : A[size_t(i * lda + p)];
        const double b = tb ? B[size_t(j * ldb + p)] : B[size_t(p * ldb + j)];
        s += a * b;
        m += std::fabs(a * b);
      }
      const double c = beta == 0 ? 0.0 : beta * double(C[size_t(i * ldc + j)]);
      out[size_t(i * N + j)] = alpha * s + c;
      mag[size_t(i * N + j)] = std::fabs(alpha) * m + std::fabs(c);
    }
}

// Runs one case; returns the worst error relative to its per-element bound (pass if <= 1).
template <class T>
double run_case(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, T beta, int64_t pad, uint64_t seed) {
  Lcg rng(seed);
  const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  auto A = random_matrix<T>(ta ? K : M, lda, rng);
  auto B = random_matrix<T>(tb ? N : K, ldb, rng);
  auto C = random_matrix<T>(M, ldc, rng);
  if (beta == T(0))
    for (auto& x : C) x = std::numeric_limits<T>::quiet_NaN();
  std::vector<double> ref, mag;
  reference(ta, tb, M, N, K, double(alpha), A, lda, B, ldb, double(beta), C, ldc, ref, mag);
  const std::vector<T> C0 = C;
  sessa::cpu::gemm<T>(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);

  const double eps = sizeof(T) == 4 ? 1e-5 : 1e-12;
  const double tol = eps * std::sqrt(double(std::max<int64_t>(K, 1)));
  double worst = 0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      const double got = double(C[size_t(i * ldc + j)]);
      const double err = std::fabs(got - ref[size_t(i * N + j)]);
      const double bound = tol * (mag[size_t(i * N + j)] + 1e-30);
      worst = std::max(worst, std::isfinite(got) ? err / bound : INFINITY);
    }
    // Padding columns of C must be untouched (compare bitwise: they may be NaN).
    for (int64_t j = N; j < ldc; ++j) {
      const T before = C0[size_t(i * ldc + j)], after = C[size_t(i * ldc + j)];
      if (std::memcmp(&before, &after, sizeof(T)) != 0) worst = INFINITY;
    }
  }
  return worst;
}

template <class T>
void sweep(const std::vector<int64_t>& sizes, int64_t pad) {
  uint64_t seed = 1;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (T beta : {T(0), T(1.3)})
        for (int64_t M : sizes)
          for (int64_t N : sizes)
            for (int64_t K : sizes) {
              const double worst = run_case<T>(ta, tb, M, N, K, T(0.7), beta, pad, seed++);
              INFO("ta=" << ta << " tb=" << tb << " M=" << M << " N=" << N << " K=" << K << " beta=" << beta
                         << " pad=" << pad);
              CHECK(worst <= 1.0);
            }
}

}  // namespace

TEST_CASE("gemm float: transposes, awkward sizes, padded leading dims") {
  sweep<float>({1, 7, 33, 130}, 3);
  sweep<float>({65, 257}, 0);
}

TEST_CASE("gemm double: transposes, awkward sizes, padded leading dims") {
  sweep<double>({1, 7, 33, 130}, 5);
  sweep<double>({65, 257}, 1);
}

TEST_CASE("gemm: sizes crossing the KC / MC / NR block boundaries") {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      CHECK(run_case<float>(ta, tb, 500, 97, 600, 0.7f, 1.3f, 2, 11) <= 1.0);
      CHECK(run_case<double>(ta, tb, 131, 515, 300, 0.7, 0.0, 4, 12) <= 1.0);
    }
  CHECK(run_case<float>(false, false, 1, 4100, 40, 1.0f, 0.0f, 0, 13) <= 1.0);
  CHECK(run_case<float>(false, false, 1000, 1, 1000, -2.0f, 0.5f, 7, 14) <= 1.0);
  CHECK(run_case<double>(true, false, 5, 300, 700, 0.7, 1.3, 3, 16) <= 1.0);  // short M
}

TEST_CASE("gemm: concurrent calls from an OpenMP parallel region") {
  int bad = 0;
#pragma omp parallel for reduction(+ : bad)
  for (int t = 0; t < 8; ++t)
    bad += run_case<float>(t % 2 == 1, t % 4 >= 2, 70 + t, 90, 80, 0.7f, 1.3f, 1, 100 + t) > 1.0;
  CHECK(bad == 0);
}

TEST_CASE("gemm: degenerate shapes") {
  std::vector<float> C = {1.f, 2.f, 3.f, 4.f};
  const float A[1] = {5.f}, B[1] = {6.f};
  sessa::cpu::gemm<float>(false, false, 2, 2, 0, 1.f, A, 1, B, 2, 2.f, C.data(), 2);  // K == 0
  CHECK(C == std::vector<float>{2.f, 4.f, 6.f, 8.f});
  C.assign(4, std::numeric_limits<float>::quiet_NaN());
  sessa::cpu::gemm<float>(false, false, 2, 2, 0, 1.f, A, 1, B, 2, 0.f, C.data(), 2);  // beta 0
  CHECK(C == std::vector<float>{0.f, 0.f, 0.f, 0.f});
  sessa::cpu::gemm<float>(false, false, 0, 2, 3, 1.f, A, 3, B, 2, 0.f, C.data(), 2);  // M == 0
  sessa::cpu::gemm<float>(false, false, 2, 0, 3, 1.f, A, 3, B, 1, 0.f, C.data(), 1);  // N == 0
  CHECK(C == std::vector<float>{0.f, 0.f, 0.f, 0.f});
  double c = 1.0;
  const double a = 3.0, b = 4.0;
  sessa::cpu::gemm<double>(true, true, 1, 1, 1, 0.5, &a, 1, &b, 1, 2.0, &c, 1);
  CHECK(c == 8.0);
  CHECK(run_case<float>(false, false, 64, 64, 64, 0.0f, 0.0f, 1, 15) <= 1.0);  // alpha 0
}

TEST_CASE("gemm: a broken result is detected") {
  // Guard that the checker itself can fail: perturb one entry of a correct result.
  const int64_t n = 40;
  Lcg rng(99);
  auto A = random_matrix<float>(n, n, rng), B = random_matrix<float>(n, n, rng);
  std::vector<float> C(size_t(n * n));
  sessa::cpu::gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n);
  std::vector<double> ref, mag;
  reference(false, false, n, n, n, 1.0, A, n, B, n, 0.0, C, n, ref, mag);
  double worst = 0;
  C[17] += 1e-3f;
  for (size_t i = 0; i < C.size(); ++i)
    worst = std::max(worst, std::fabs(C[i] - ref[i]) / (1e-5 * std::sqrt(40.0) * mag[i]));
  CHECK(worst > 1.0);
}
