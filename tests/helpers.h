// Small helpers shared by the tests.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/gradcheck.h"
#include "tensor/error.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace sessa::test {

// A float64 CPU leaf with normal(0, scale) entries that requires grad.
inline Tensor leaf(const Shape& shape, Generator& gen, double scale = 1.0) {
  Tensor t = normal(shape, 0.0, scale, gen, {DType::F64});
  t.set_requires_grad();
  return t;
}

// max |a - b| / max(1, max |b|)
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  REQUIRE(va.size() == vb.size());
  double diff = 0, scale = 1;
  for (size_t i = 0; i < va.size(); ++i) {
    diff = std::max(diff, std::abs(va[i] - vb[i]));
    scale = std::max(scale, std::abs(vb[i]));
    if (std::isnan(va[i]) != std::isnan(vb[i])) return INFINITY;
  }
  return diff / scale;
}

// Checks shape and max_rel_diff(got, ref) <= tol (tol 0: equal), both brought to float64 on the host.
inline void expect_close(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  REQUIRE_MESSAGE(got.defined() == ref.defined(), what << ": defined " << got.defined() << " vs " << ref.defined());
  if (!got.defined()) return;
  REQUIRE_MESSAGE(got.shape() == ref.shape(), what << ": shape " << got.shape() << " vs " << ref.shape());
  const double err = max_rel_diff(got.to(Device::cpu()).to(DType::F64), ref.to(Device::cpu()).to(DType::F64));
  CHECK_MESSAGE(err <= tol, what << ": relative error " << err << " > " << tol);
}

// Runs f, expecting a sessa::Error whose message contains every fragment.
template <class F>
void check_error(F&& f, const std::vector<std::string>& fragments) {
  try {
    f();
    FAIL("expected an error mentioning '" << fragments.at(0) << "'");
  } catch (const Error& e) {  // one error type: anything else fails the test
    std::string msg = e.what();
    for (const auto& frag : fragments) CHECK_MESSAGE(msg.find(frag) != std::string::npos, "message: " << msg);
  }
}

// Gradchecks f at `inputs` (float64 leaves) and fails the test with the report.
inline void expect_gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                             const std::vector<Tensor>& inputs, autograd::GradcheckOptions opt = {}) {
  auto r = autograd::gradcheck(f, inputs, opt);
  CHECK_MESSAGE(r.ok, r.report);
}

}  // namespace sessa::test
