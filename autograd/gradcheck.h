// Compares analytic gradients (backward) with central finite differences in float64.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sessa::autograd {

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-7;  // pass when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-5;
  int64_t max_checks_per_input = -1;  // -1: every element; else a seeded sample
  uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  std::string report;  // names the worst element of each failing input
};

// f maps float64 CPU inputs (leaves requiring grad) to a float64 output. The
// output is reduced to a scalar with a fixed random projection, so every output
// element's gradient path is exercised.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& opt = {});

}  // namespace sessa::autograd
