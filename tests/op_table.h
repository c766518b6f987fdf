// The op table: one entry per differentiable op, read by three drivers.
//   tests/test_ops.cpp       CPU: float64 gradcheck of every small case; strided, transposed and
//                            broadcast inputs against a contiguous run (outputs and gradients).
//   tests/cuda/test_ops.cpp  GPU vs CPU parity of outputs, raw statistics and input gradients in
//                            float32 (exact and TF32), bfloat16 and float64, for every layout.
//   bench/ops.cpp            forward and forward + backward timings of each entry's largest case.
// An entry names its inputs (how to draw them, which need grad, which are int32 indices), its
// cases (shapes and one integer argument), the differentiable call, optional raw-op outputs
// (statistics such as lse) and tolerances per dtype. Adding an op = adding one entry in
// tests/op_table.cpp. This file has no doctest dependency (the benchmark links it too).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "autograd/gradcheck.h"
#include "tensor/tensor.h"

namespace sessa::test {

// How an input's values are drawn (always as float32 on the CPU first, so every device and
// dtype sees the same numbers after rounding).
enum class Fill {
  Normal,   // normal(b, a): mean b, standard deviation a
  Uniform,  // uniform(a, b)
  Masked,   // normal(0, a) with the first 3 entries of the last dim set to -inf (masked logits)
  Index,    // int32 ids in [0, size of input `of` along `axis`), a fraction `a` replaced by -100
};
struct InputSpec {
  Fill fill = Fill::Normal;
  double a = 1.0, b = 0.0;
  bool grad = true;       // a leaf requiring grad (gradchecked, gradients compared)
  int of = -1;            // Index: the input whose size bounds the ids
  int64_t axis = 0;       // Index: along this dim of input `of`
  bool keep_f32 = false;  // stays float32 in bfloat16 runs (LayerNorm weights beside bf16 activations)
};
inline InputSpec normal_in(double scale = 1.0) { return {Fill::Normal, scale}; }
inline InputSpec uniform_in(double lo, double hi) { return {Fill::Uniform, lo, hi}; }
inline InputSpec masked_in(double scale) { return {Fill::Masked, scale}; }
inline InputSpec ids_in(int of, int64_t axis, double ignore_frac = 0.0) {
  return {Fill::Index, ignore_frac, 0.0, false, of, axis};
}
inline InputSpec const_in(InputSpec s) {  // drawn the same way, but no gradient
  s.grad = false;
  return s;
}
inline InputSpec f32_in(InputSpec s) {
  s.keep_f32 = true;
  return s;
}

// Where a case runs: kCpu cases are gradchecked in float64 and run in every CPU layout (keep
// them small); kGpu cases run in the GPU parity driver (awkward and large sizes go here).
enum Where : unsigned { kCpu = 1, kGpu = 2, kBoth = 3 };
struct OpCase {
  std::vector<Shape> shapes;  // one per input
  int64_t arg = 0;            // the entry's integer argument (transpose flags, dims, q_offset...)
  unsigned where = kBoth;
};

struct Tolerance {  // max |gpu - cpu| / max(1, max |cpu|); 0 = exact
  double f32 = 2e-5, bf16 = 2e-2, f64 = 1e-12;
  double tf32 = 2e-3;      // float32 with TF32 tensor-core products (entries with kTf32)
  double raw_bf16 = 2e-5;  // bfloat16 runs: float32 statistics (raw outputs, kOutF32 outputs) and
                           // the gradients of keep_f32 inputs, all float sums of the same rounded values
};

enum Flags : unsigned {
  kGradcheck = 1u << 0,      // float64 gradcheck of the kCpu cases
  kCuda = 1u << 1,           // GPU parity (float32 exact, float64)
  kBf16 = 1u << 2,           // ... and bfloat16
  kStrided = 1u << 3,        // every float input also as a strided and a transposed view
  kBroadcast = 1u << 4,      // every float input with size(0) > 1 also as an expanded row 0 (stride 0)
  kTf32 = 1u << 5,           // float32 also with TF32 products, against tol.tf32
  kDeterministic = 1u << 6,  // two GPU runs give bitwise equal outputs and gradients
  kRef64 = 1u << 7,          // the CPU reference computes in float64 for every GPU dtype
  kHostIndex = 1u << 8,      // GPU also with index inputs left on the host
  kOutF32 = 1u << 9,         // the output is float32 in bfloat16 runs (a loss)
  kRawF32 = 1u << 10,        // the raw outputs are float32 in bfloat16 runs (statistics)
  kDefault = kGradcheck | kCuda | kBf16 | kStrided | kBroadcast,
};

using OpFn = std::function<Tensor(const std::vector<Tensor>& in, int64_t arg)>;
using RawFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& in, int64_t arg)>;

struct OpEntry {
  std::string name;
  std::vector<InputSpec> inputs;
  std::vector<OpCase> cases;
  OpFn call;    // the differentiable op (autograd/ops.h, nn/, sessa/)
  RawFn raw{};  // raw-op outputs also compared (statistics such as lse; float32 in bf16 runs with kRawF32)
  unsigned flags = kDefault;
  Tolerance tol{};       // outputs
  Tolerance grad_tol{};  // input gradients
  autograd::GradcheckOptions gradcheck{};
  std::string family{};  // set by the table (one GPU test case each): "elementwise", "matmul", ...
};

// The table (built once), and its families in order.
const std::vector<OpEntry>& op_table();
std::vector<std::string> op_families();

// ---- running an entry (shared by the drivers) -----------------------------------------------

enum class Layout {
  Contiguous,
  Padded,      // float inputs in rows of size(-1) + 3 starting one element in (unit inner stride, unaligned)
  Strided,     // every float input read through a view with doubled strides
  Transposed,  // float inputs of dim >= 2 stored with the last two dims swapped (a transposed view)
  Broadcast,   // float inputs with size(0) > 1 replaced by row 0 expanded over dim 0 (stride 0)
};
const char* layout_name(Layout l);

// The case's inputs as float32 (int32 for ids) CPU tensors, seeded by `seed`.
std::vector<Tensor> draw_inputs(const OpEntry& e, const OpCase& c, uint64_t seed);

// `base` placed for a run: float values rounded to `round_to` (float32 for keep_f32 inputs when
// round_to is bfloat16), then held in `compute` (or `round_to` when compute is Undefined), on
// `device`, in `layout`; ids on `index_device`. Inputs with grad are fresh leaves.
struct Placement {
  DType round_to = DType::F64;
  DType compute = DType::F64;
  Device device = Device::cpu();
  Device index_device = Device::cpu();
  Layout layout = Layout::Contiguous;
};
std::vector<Tensor> place_inputs(const OpEntry& e, const std::vector<Tensor>& base, const Placement& p);

// Broadcast changes the values: the contiguous inputs with the same values as the Broadcast layout.
std::vector<Tensor> broadcast_values(const OpEntry& e, const std::vector<Tensor>& base);

struct OpResult {
  std::vector<Tensor> outputs;  // the call's output, then the raw outputs
  std::vector<Tensor> grads;    // one per input with grad
};
// Runs the call on `inputs` and backpropagates a normal(0, 1) upstream gradient drawn from
// `seed` and rounded to `round_to` (skipped when backward is false).
OpResult run_op(const OpEntry& e, const OpCase& c, const std::vector<Tensor>& inputs, uint64_t seed, DType round_to,
                bool backward = true);

std::string case_name(const OpEntry& e, const OpCase& c);  // "matmul [3, 4] [4, 5] arg 1"

}  // namespace sessa::test
