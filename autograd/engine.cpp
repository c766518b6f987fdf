// The backward pass: order the graph, then run each node once, after every node
// that consumes its output, summing the gradients that reach it.
#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "autograd/node.h"
#include "tensor/ops.h"

namespace sessa::autograd {

namespace {
thread_local bool g_grad_enabled = true;

// Nodes reachable from `root`, producers after consumers (reverse topological order).
std::vector<std::shared_ptr<Node>> reverse_topological(const std::shared_ptr<Node>& root) {
  std::vector<std::shared_ptr<Node>> post_order;
  std::unordered_set<Node*> visited{root.get()};
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack{{root, 0}};
  while (!stack.empty()) {
    auto& [node, next_input] = stack.back();
    if (next_input < node->inputs.size()) {
      const auto& child = node->inputs[next_input++].fn;
      if (child && visited.insert(child.get()).second) stack.push_back({child, 0});
    } else {
      post_order.push_back(node);
      stack.pop_back();
    }
  }
  return {post_order.rbegin(), post_order.rend()};
}

// For each leaf: how many edges of the graph feed it, so the engine knows when it is final.
std::unordered_map<const void*, int> leaf_uses(const std::vector<std::shared_ptr<Node>>& nodes) {
  std::unordered_map<const void*, int> uses;
  for (const auto& node : nodes)
    for (const Edge& e : node->inputs)
      if (e.leaf.defined()) ++uses[e.leaf.identity()];
  return uses;
}

// The gradient reaching each node so far. It may grow in place once the engine holds the
// only handle to it and to its storage (Tensor::unshared): a sum the engine formed, a new
// tensor from a backward, or an upstream gradient passed on whose other holders are gone
// (a residual add's gradient, once the branch beside it has run). The root's seed, still
// held by the caller, never is.
using PendingMap = std::unordered_map<Node*, Tensor>;

// What the gradient of input e may be summed into in place (SummingBackwardFn), or nothing:
// the engine's unshared running sum for e's producer; for a producer with no gradient yet that
// only passes its gradient on (a cast, a slice: Node::sum_view), the matching part of what its
// own input's gradient is summed into; for a leaf, its .grad. Contiguous, or nothing.
Tensor sum_for(const Edge& e, const PendingMap& pending) {
  Tensor sum;
  if (e.leaf.defined()) {
    sum = e.leaf.grad();
  } else if (e.fn) {
    auto slot = pending.find(e.fn.get());
    if (slot != pending.end())
      sum = slot->second.unshared() ? slot->second : Tensor{};
    else if (e.fn->sum_view && e.fn->inputs.size() == 1)
      if (Tensor below = sum_for(e.fn->inputs[0], pending); below.defined()) sum = e.fn->sum_view(below);
  }
  return sum.defined() && sum.is_contiguous() ? sum : Tensor{};
}

// g may come in another float dtype than the leaf's (autograd::cast passes a leaf its
// gradient unconverted): it is summed, or stored, in the leaf's dtype.
void accumulate_leaf(const Tensor& leaf, const Tensor& g) {
  Tensor current = leaf.grad();
  if (current.defined())
    ops::add_(current, g);
  else  // the leaf owns its gradient buffer
    leaf.set_grad(g.dtype() == leaf.dtype() ? ops::clone(g) : ops::cast(g, leaf.dtype()));
}
}  // namespace

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

// The node of an op over `inputs`, or null when no input needs a gradient.
static std::shared_ptr<Node> new_node(const char* name, const std::vector<Tensor>& inputs) {
  auto node = std::make_shared<Node>();
  node->name = name;
  bool any = false;
  for (const Tensor& in : inputs) {
    Edge e;
    if (in.defined()) {
      e.shape = in.shape();
      if (in.grad_fn())
        e.fn = in.grad_fn();
      else if (in.requires_grad())
        e.leaf = in;
    }
    any = any || e.needs_grad();
    node->inputs.push_back(std::move(e));
  }
  return any ? node : nullptr;
}

// Attaches a new node over `inputs` to `out`, its backward set by `fill`; nothing when
// recording is off or no input needs a gradient. The record_* functions differ only in `fill`.
template <class Fill>
static Tensor attach(const char* name, Tensor out, const std::vector<Tensor>& inputs, Fill&& fill) {
  if (!g_grad_enabled) return out;
  auto node = new_node(name, inputs);
  if (!node) return out;
  fill(*node);
  out.set_grad_fn(std::move(node));
  return out;
}

Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs, BackwardFn backward) {
  return attach(name, std::move(out), inputs, [&](Node& n) { n.backward = std::move(backward); });
}

Tensor record_summing(const char* name, Tensor out, const std::vector<Tensor>& inputs, SummingBackwardFn backward) {
  return attach(name, std::move(out), inputs, [&](Node& n) { n.summing_backward = std::move(backward); });
}

Tensor record_view(const char* name, Tensor out, const Tensor& input, BackwardFn backward, SumViewFn sum_view) {
  return attach(name, std::move(out), {input}, [&](Node& n) {
    n.backward = std::move(backward);
    n.sum_view = std::move(sum_view);
  });
}

Tensor record_view(const char* name, Tensor out, const Tensor& input, SummingBackwardFn backward, SumViewFn sum_view) {
  return attach(name, std::move(out), {input}, [&](Node& n) {
    n.summing_backward = std::move(backward);
    n.sum_view = std::move(sum_view);
  });
}

void backward(const Tensor& root, const Tensor& seed, const LeafReadyHook& on_leaf_ready) {
  SESSA_CHECK(root.requires_grad(), "backward", "the tensor does not require grad (no recorded op leads to it)");
  SESSA_CHECK(seed.defined() || root.numel() == 1, "backward",
              "a seed gradient is needed for a non-scalar root of shape " << root.shape());
  Tensor g = seed.defined() ? seed : ones(root.shape(), root.options());
  if (!root.grad_fn()) {
    accumulate_leaf(root, g);
    if (on_leaf_ready) on_leaf_ready(root);
    return;
  }

  const auto order = reverse_topological(root.grad_fn());
  std::unordered_map<const void*, int> uses_left;
  if (on_leaf_ready) uses_left = leaf_uses(order);
  auto used_leaves_of = [&](const Node& node) {  // counts down; a leaf is ready at zero
    if (!on_leaf_ready) return;
    for (const Edge& e : node.inputs)
      if (e.leaf.defined() && --uses_left[e.leaf.identity()] == 0) on_leaf_ready(e.leaf);
  };
  PendingMap pending{{root.grad_fn().get(), g}};
  for (const auto& node : order) {
    auto it = pending.find(node.get());
    if (it == pending.end()) {  // no gradient flowed here
      used_leaves_of(*node);
      continue;
    }
    Tensor grad_out = std::move(it->second);
    pending.erase(it);
    SESSA_CHECK(node->backward || node->summing_backward, "backward",
                "the graph through '" << node->name << "' was already freed by an earlier backward()");
    // A summing op gets what each input's gradient may be summed into (sum_for; each producer or
    // leaf once: at its first input).
    std::vector<Tensor> sums(node->inputs.size());
    if (node->summing_backward) {
      for (size_t i = 0; i < sums.size(); ++i) {
        const Edge& e = node->inputs[i];
        const auto earlier = [&](const Edge& o) {
          return e.fn ? o.fn == e.fn : o.leaf.defined() && o.leaf.identity() == e.leaf.identity();
        };
        if (!e.needs_grad() || std::any_of(node->inputs.begin(), node->inputs.begin() + i, earlier)) continue;
        sums[i] = sum_for(e, pending);
      }
    }
    std::vector<Tensor> grads =
        node->summing_backward ? node->summing_backward(grad_out, sums) : node->backward(grad_out);
    SESSA_CHECK(
        grads.size() == node->inputs.size(), "backward",
        "'" << node->name << "' returned " << grads.size() << " gradients for " << node->inputs.size() << " inputs");
    for (size_t i = 0; i < grads.size(); ++i) {
      const Edge& e = node->inputs[i];
      if (!e.needs_grad() || !grads[i].defined()) continue;
      SESSA_CHECK(grads[i].shape() == e.shape, "backward",
                  "'" << node->name << "' returned a gradient of shape " << grads[i].shape() << " for input " << i
                      << " of shape " << e.shape);
      const bool summed = sums[i].defined() && grads[i].same(sums[i]);  // in place, where it belongs
      if (e.leaf.defined()) {
        if (!summed) accumulate_leaf(e.leaf, grads[i]);
      } else if (!summed) {
        Tensor& slot = pending[e.fn.get()];
        slot = slot.defined() ? ops::add(slot, grads[i]) : grads[i];
      }
    }
    used_leaves_of(*node);
    node->release();
  }
}

}  // namespace sessa::autograd
