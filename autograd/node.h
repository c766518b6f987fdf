// The autograd graph. Each differentiable op that sees an input requiring grad
// records one Node on its output: the node holds an Edge per input (to the
// producer's node, or to the leaf tensor whose .grad it feeds) and a backward
// function mapping the output's gradient to one gradient per input.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "tensor/tensor.h"

namespace sessa::autograd {

struct Node;

struct Edge {
  std::shared_ptr<Node> fn;  // the producer of this input, or
  Tensor leaf;               // the leaf that accumulates the gradient, or neither (no grad needed)
  Shape shape;               // the input's shape, to check what backward returns
  bool needs_grad() const { return fn != nullptr || leaf.defined(); }
};

// Gradient of the loss w.r.t. each input, given the gradient w.r.t. the output.
// An entry may be undefined when that input needs no gradient.
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;
// The same for an op that can add an input's gradient where it forms it (a GEMM with
// beta = 1): sums[i], when defined, is a contiguous tensor that the gradient of input i is
// summed into, owned by the engine alone: its running sum for that input, or, for a
// parameter reached directly or through casts and slices (Node::sum_view), the part of the
// parameter's own .grad that the gradient lands in, in the parameter's dtype (float32 beside
// a bfloat16 input under autocast). The op may add into it in place and return sums[i]
// itself. Every other gradient it returns must be a new tensor, or grad_output.
using SummingBackwardFn =
    std::function<std::vector<Tensor>(const Tensor& grad_output, const std::vector<Tensor>& sums)>;
// For an op of one input whose gradient is its output's, unchanged in value, in all or part
// of its input (a cast, a slice): given a tensor that the input's gradient is summed into,
// the part of it that the output's gradient lands in.
using SumViewFn = std::function<Tensor(const Tensor& input_sum)>;

struct Node {
  const char* name;
  std::vector<Edge> inputs;
  BackwardFn backward;
  SummingBackwardFn summing_backward;  // set instead of backward by record_summing
  SumViewFn sum_view;                  // set by record_view
  void release() {                     // frees saved tensors and links once backward has used them
    backward = nullptr;
    summing_backward = nullptr;
    sum_view = nullptr;
    inputs.clear();
  }
};

// Gradient recording is on by default; a NoGradGuard turns it off in its scope.
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Makes `out` the result of a differentiable op named `name` over `inputs` (some
// may be undefined). When grad is enabled and any input requires grad, attaches
// a node running `backward`. Tensors `backward` captures should be detached
// (see Tensor::detach) so that the graph holds no cycle.
Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs, BackwardFn backward);
// record for an op whose backward can add into the engine's running sums (SummingBackwardFn).
Tensor record_summing(const char* name, Tensor out, const std::vector<Tensor>& inputs, SummingBackwardFn backward);
// record for an op of one input whose output's gradient lands unchanged in (part of) the
// input's (SumViewFn): a summing op below it may then add straight into a parameter's .grad.
Tensor record_view(const char* name, Tensor out, const Tensor& input, BackwardFn backward, SumViewFn sum_view);
// The same for a view whose own backward can add into the input's running sum (a slice).
Tensor record_view(const char* name, Tensor out, const Tensor& input, SummingBackwardFn backward, SumViewFn sum_view);

// Called once per leaf reached by a backward pass, as soon as the last gradient
// contribution to it has been accumulated into its .grad (data parallelism starts
// reducing that gradient while the rest of backward runs).
using LeafReadyHook = std::function<void(const Tensor& leaf)>;

// Back-propagates from `root`: seed is d(loss)/d(root), ones for a one-element
// root when omitted. Leaf gradients accumulate into .grad; the graph is freed.
void backward(const Tensor& root, const Tensor& seed = {}, const LeafReadyHook& on_leaf_ready = {});

}  // namespace sessa::autograd
