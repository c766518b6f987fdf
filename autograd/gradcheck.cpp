#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/ops.h"
#include "tensor/random.h"

namespace sessa::autograd {

namespace {
double projected(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
                 const Tensor& weights) {
  return ops::sum_all(ops::mul(f(inputs), weights)).item();
}
}  // namespace

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& opt) {
  for (const Tensor& x : inputs)
    SESSA_CHECK(
        x.dtype() == DType::F64 && x.device().is_cpu() && x.is_contiguous() && x.requires_grad() && !x.grad_fn(),
        "gradcheck", "inputs must be contiguous float64 cpu leaves requiring grad, got " << x.str());
  for (const Tensor& x : inputs) x.set_grad({});

  Generator gen(opt.seed);
  Tensor out = f(inputs);
  Tensor weights = uniform(out.shape(), 0.5, 1.5, gen, {DType::F64});
  backward(sum_all(mul(out, weights)));

  GradcheckResult result;
  std::ostringstream report;
  NoGradGuard no_grad;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    Tensor analytic = x.grad().defined() ? x.grad() : zeros(x.shape(), x.options());
    const double* a = analytic.data<double>();
    double* v = x.data<double>();
    const int64_t n = x.numel();
    const int64_t checks = opt.max_checks_per_input < 0 ? n : std::min(n, opt.max_checks_per_input);
    double worst = -1, worst_a = 0, worst_n = 0;
    int64_t worst_i = 0;
    for (int64_t c = 0; c < checks; ++c) {
      int64_t i = checks == n ? c : int64_t(uniform({}, 0, double(n), gen).item()) % n;
      double saved = v[i];
      v[i] = saved + opt.eps;
      double up = projected(f, inputs, weights);
      v[i] = saved - opt.eps;
      double down = projected(f, inputs, weights);
      v[i] = saved;
      double numeric = (up - down) / (2 * opt.eps);
      double err = std::abs(a[i] - numeric);
      double excess = err - (opt.atol + opt.rtol * std::abs(numeric));
      result.max_abs_error = std::max(result.max_abs_error, err);
      if (!(excess <= 0) && (worst < 0 || excess > worst))
        worst = excess, worst_i = i, worst_a = a[i], worst_n = numeric;
    }
    if (worst >= 0 || std::isnan(worst)) {
      result.ok = false;
      report << "input " << k << " " << x.shape() << ": element " << worst_i << " analytic " << worst_a << " numeric "
             << worst_n << "\n";
    }
  }
  result.report = report.str();
  return result;
}

}  // namespace sessa::autograd
