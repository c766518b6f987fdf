// bench_ops: times every op-table entry (tests/op_table.h) on its largest case: the forward
// alone and forward + backward, median of --iters runs after two warm-ups, with the GB/s of
// the forward's inputs + output traffic (a lower bound on what the kernel moves).
// Usage: bench_ops [--device cuda|cpu] [--dtype f32|bf16|f64] [--iters N] [--op SUBSTRING]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "tensor/cuda_hooks.h"
#include "tensor/device.h"
#include "tensor/random.h"
#include "tests/op_table.h"

using namespace sessa;
using namespace sessa::test;

namespace {

using Clock = std::chrono::steady_clock;

int usage(const char* why) {
  std::fprintf(
      stderr, "bench_ops: %s\nusage: bench_ops [--device cuda|cpu] [--dtype f32|bf16|f64] [--iters N] [--op S]\n", why);
  return 2;
}

// The case with the most input elements (the GPU cases when timing the GPU).
const OpCase& largest(const OpEntry& e, bool gpu) {
  const OpCase* best = &e.cases.front();
  int64_t most = -1;
  for (const OpCase& c : e.cases) {
    if (gpu && !(c.where & kGpu)) continue;
    int64_t n = 0;
    for (const Shape& s : c.shapes) n += numel(s);
    if (n > most) most = n, best = &c;
  }
  return *best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = cuda_available() ? "cuda" : "cpu", dtype_arg = "f32", only;
  int iters = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return usage(("missing value after " + a).c_str());
    const std::string v = argv[++i];
    if (a == "--device")
      device = v;
    else if (a == "--dtype")
      dtype_arg = v;
    else if (a == "--iters")
      iters = std::max(1, std::atoi(v.c_str()));
    else if (a == "--op")
      only = v;
    else
      return usage(("unknown flag " + a).c_str());
  }
  if (device != "cuda" && device != "cpu") return usage("--device must be cuda or cpu");
  if (device == "cuda" && !cuda_available()) return usage("--device cuda: no CUDA GPU visible");
  const DType dtype = dtype_arg == "bf16" ? DType::BF16 : dtype_arg == "f64" ? DType::F64 : DType::F32;
  if (dtype_arg != "f32" && dtype_arg != "bf16" && dtype_arg != "f64") return usage("--dtype must be f32, bf16 or f64");
  const bool gpu = device == "cuda";
  const Device dev = gpu ? Device::cuda(0) : Device::cpu();
  if (!gpu && dtype == DType::BF16) return usage("--dtype bf16 runs on the GPU only");
  auto sync = [&] {  // kernels run asynchronously: wait before reading the clock
#if SESSA_HAS_CUDA
    if (gpu) cuda::synchronize(0);
#endif
  };

  std::printf("%-34s %-44s %10s %10s %12s\n", "op", "largest case", "fwd ms", "fwd GB/s", "fwd+bwd ms");
  for (const OpEntry& e : op_table()) {
    if (!only.empty() && e.name.find(only) == std::string::npos) continue;
    if (gpu && !(e.flags & kCuda)) continue;
    const OpCase& c = largest(e, gpu);
    const std::vector<Tensor> base = draw_inputs(e, c, 1);
    const Placement where{dtype, dtype, dev, dev, Layout::Contiguous};
    Tensor upstream;  // the gradient fed to backward, shaped like the output
    auto median_ms = [&](bool backward) {
      std::vector<double> ms;
      for (int r = 0; r < iters + 2; ++r) {
        const std::vector<Tensor> in = place_inputs(e, base, where);
        sync();
        const auto t0 = Clock::now();
        if (backward) {
          const Tensor y = e.call(in, c.arg);
          if (y.requires_grad()) autograd::backward(y, upstream);
        } else {
          autograd::NoGradGuard no_grad;
          e.call(in, c.arg);
        }
        sync();
        if (r >= 2) ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
      return ms[ms.size() / 2];
    };
    double bytes = 0;
    {
      autograd::NoGradGuard no_grad;
      const std::vector<Tensor> in = place_inputs(e, base, where);
      for (const Tensor& t : in) bytes += double(t.numel()) * double(dtype_size(t.dtype()));
      const Tensor y = e.call(in, c.arg);
      bytes += double(y.numel()) * double(dtype_size(y.dtype()));
      Generator gen(2);
      upstream = normal(y.shape(), 0.0, 1.0, gen, {DType::F32}).to(y.dtype()).to(dev);
    }
    const double fwd = median_ms(false), both = median_ms(true);
    std::string shapes;
    for (const Shape& s : c.shapes) {
      std::ostringstream o;
      o << s;
      if (!shapes.empty()) shapes += ' ';
      shapes += o.str();
    }
    std::printf("%-34s %-44s %10.3f %10.2f %12.3f\n", e.name.c_str(), shapes.substr(0, 44).c_str(), fwd,
                bytes / (fwd * 1e6), both);
  }
  return 0;
}
