// The flat parameter buffer (layout, views, buckets), the autograd hook that
// reports a leaf's gradient as final, and AdamW over the buffer: the multi-tensor
// update equals the per-parameter one, and sharded (ZeRO-1) updates compose to
// the unsharded one.
#include <doctest/doctest.h>

#include "autograd/ops.h"
#include "nn/layers.h"
#include "nn/optim.h"
#include "tensor/ops.h"
#include "tests/helpers.h"

using namespace sessa;
using sessa::test::max_rel_diff;

namespace {

// Three layers of awkward sizes: weights decay, biases and the gain do not.
struct Net : nn::Module {
  std::shared_ptr<nn::Linear> a, b, c;
  Tensor gain;
  explicit Net(Generator& g) {
    a = register_module("a", std::make_shared<nn::Linear>(5, 7, g, nn::LinearOptions{}, TensorOptions{DType::F64}));
    gain = full({7}, 1.0, {DType::F64});
    register_parameter("gain", gain, false);
    b = register_module("b", std::make_shared<nn::Linear>(7, 33, g, nn::LinearOptions{}, TensorOptions{DType::F64}));
    c = register_module("c", std::make_shared<nn::Linear>(33, 3, g, nn::LinearOptions{}, TensorOptions{DType::F64}));
  }
  Tensor loss(const Tensor& x) const {
    return mean_all(square(c->forward(tanh(b->forward(a->forward(x) * nn::compute(gain))))));
  }
};

}  // namespace

TEST_CASE("parameter buffer: decayed first, aligned, bucketed, and the members are views of it") {
  Generator gen(1);
  Net net(gen);
  std::vector<std::vector<double>> before;
  for (const auto& p : net.named_parameters()) before.push_back(p.tensor->to_vector<double>());
  // 200-byte buckets over 2 shards: several buckets, each a multiple of 128 elements.
  nn::ParameterBuffer buffer(net.named_parameters(), {.bucket_bytes = 200, .shards = 2});

  bool in_decay_region = true;
  int64_t decayed_end = 0;
  for (const auto& e : buffer.entries()) {
    CHECK(e.range.begin % 64 == 0);
    if (!e.param.weight_decay) in_decay_region = false;
    CHECK((e.param.weight_decay ? in_decay_region : true));
    if (e.param.weight_decay) decayed_end = e.range.end;
  }
  CHECK(buffer.decay_end() >= decayed_end);
  for (const auto& e : buffer.entries())
    if (!e.param.weight_decay) CHECK(e.range.begin >= buffer.decay_end());

  REQUIRE(buffer.buckets().size() > 2);
  int64_t end = buffer.numel();
  for (const nn::Range& b : buffer.buckets()) {  // last bucket first, tiling the buffer
    CHECK(b.end == end);
    CHECK(b.size() % 128 == 0);
    end = b.begin;
  }
  CHECK(end == 0);

  const auto params = net.named_parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    CHECK(params[i].tensor->to_vector<double>() == before[i]);  // values kept
    CHECK(params[i].tensor->shares_storage(buffer.data()));
    CHECK(params[i].tensor->grad().shares_storage(buffer.grad()));
    const int b = buffer.bucket_of(*params[i].tensor);
    REQUIRE(b >= 0);
    const int64_t offset = params[i].tensor->offset() - buffer.data().offset();
    CHECK(offset >= buffer.buckets()[size_t(b)].begin);
    CHECK(offset + params[i].tensor->numel() <= buffer.buckets()[size_t(b)].end);
  }
  CHECK(buffer.bucket_of(zeros({3})) == -1);
  ops::fill_(buffer.data(), 2.0);  // writes through to the members
  CHECK(net.gain.to_vector<double>() == std::vector<double>(7, 2.0));
  CHECK(buffer.views(buffer.data()).size() == params.size());
}

TEST_CASE("backward reports each leaf once, after its last gradient contribution") {
  Generator gen(2);
  Tensor a = test::leaf({3}, gen), b = test::leaf({3}, gen), unused = test::leaf({3}, gen);
  Tensor y = sum_all(a * b + exp(a));  // a feeds two nodes
  std::vector<std::pair<const void*, std::vector<double>>> reports;
  autograd::backward(y, {}, [&](const Tensor& leaf) {
    reports.push_back({leaf.identity(), leaf.grad().to_vector<double>()});
  });
  REQUIRE(reports.size() == 2);
  for (const auto& [id, grad_then] : reports) {
    const Tensor& leaf = id == a.identity() ? a : b;
    CHECK((id == a.identity() || id == b.identity()));
    CHECK(grad_then == leaf.grad().to_vector<double>());  // final when reported
  }
  CHECK(reports[0].first != reports[1].first);
  CHECK(!unused.grad().defined());
}

// An embedding lookup as nn::LanguageModel does it: from the table's compute copy when the
// scope has one (index_select(compute(w))), else the rows gathered and converted
// (compute(index_select(w))). The same values bit for bit; the gradient up to the rounding of
// the lookup's sums (float32 here, float64 through the cast), summed into the buffer's .grad
// after a plain op's (as the tied head's).
TEST_CASE("compute copies: a lookup from a table's copy equals converting the rows") {
  Generator gen(5);
  Tensor table = normal({9, 3}, 0.0, 1.0, gen, {DType::F64});
  table.set_requires_grad();
  nn::ParameterBuffer buffer({{"table", &table, false}});
  const Tensor ids = from_vector<int32_t>({4, 0, 4, 8, 1, 4}, {2, 3}, {DType::I32});
  const Tensor c = normal({2, 3, 3}, 0.0, 1.0, gen, {DType::F32}), x = normal({3}, 0.0, 1.0, gen, {DType::F32});
  auto run = [&](const nn::ComputeCopies* copies) {
    buffer.zero_grad();
    const Tensor storage = table.grad();
    nn::AutocastScope scope(DType::F32, true, copies);
    CHECK(nn::has_compute_copy(table) == (copies != nullptr));
    const Tensor rows = copies ? index_select(nn::compute(table), 0, ids) : nn::compute(index_select(table, 0, ids));
    const Tensor loss = sum_all(rows * c) + sum_all(matmul(nn::compute(table), reshape(x, {3, 1})));
    autograd::backward(loss);
    CHECK(table.grad().same(storage));
    return std::pair{loss.item(), buffer.grad().to_vector<double>()};
  };
  const auto plain = run(nullptr), cached = run(&buffer.refresh_compute_copies(DType::F32));
  CHECK(cached.first == plain.first);
  REQUIRE(cached.second.size() == plain.second.size());
  for (size_t i = 0; i < plain.second.size(); ++i)
    CHECK(cached.second[i] == doctest::Approx(plain.second[i]).epsilon(1e-6));
}

TEST_CASE("compute copies: one conversion of the buffer, used by compute(), gradients as through a plain cast") {
  Generator gen(4);
  Net net(gen);
  nn::ParameterBuffer buffer(net.named_parameters());
  const Tensor x = normal({4, 5}, 0.0, 1.0, gen, {DType::F64});
  // Mixed precision with float32 as the compute dtype of these float64 parameters.
  auto run = [&](const nn::ComputeCopies* copies) {
    buffer.zero_grad();
    nn::AutocastScope scope(DType::F32, true, copies);
    const Tensor loss = net.loss(x);
    autograd::backward(loss);
    return std::pair{loss.item(), buffer.grad().to_vector<double>()};
  };
  const auto plain = run(nullptr);  // each parameter converted where it is used
  const nn::ComputeCopies& copies = buffer.refresh_compute_copies(DType::F32);
  REQUIRE(copies.size() == net.named_parameters().size());
  for (const auto& p : net.named_parameters()) {
    CAPTURE(p.name);
    const Tensor& copy = copies.at(p.tensor->identity());
    CHECK(copy.shape() == p.tensor->shape());
    CHECK(copy.to_vector<float>() == ops::cast(*p.tensor, DType::F32).to_vector<float>());
  }
  const auto cached = run(&copies);
  CHECK(cached.first == plain.first);  // bit for bit: the same values, the same backward
  CHECK(cached.second == plain.second);
  // compute_copy: the copy's value itself inside a scope that has it, for its dtype only.
  {
    const Tensor& w = net.a->weight;
    nn::AutocastScope scope(DType::F32, true, &copies);
    CHECK(nn::compute_copy(w, DType::F32).identity() == copies.at(w.identity()).identity());
    CHECK(!nn::compute_copy(w, DType::BF16).defined());
    CHECK(!nn::compute_copy(x, DType::F32).defined());
    nn::AutocastScope without(DType::F32, true, nullptr);
    CHECK(!nn::compute_copy(w, DType::F32).defined());
  }

  // A parameter changed in place: the copies are stale until refreshed.
  net.a->weight.data<double>()[0] += 0.5;
  CHECK(run(&copies).first == plain.first);
  const auto changed = run(nullptr);
  CHECK(changed.first != plain.first);
  CHECK(run(&buffer.refresh_compute_copies(DType::F32)).first == changed.first);

  // A member replaced by a tensor outside the buffer is left out and converted where used.
  net.gain = full({7}, 2.0, {DType::F64});
  const nn::ComputeCopies& after = buffer.refresh_compute_copies(DType::F32);
  CHECK(after.count(net.gain.identity()) == 0);
  CHECK(after.size() == net.named_parameters().size() - 1);
  CHECK(run(&after).first == run(nullptr).first);
  sessa::test::check_error([&] { cast(net.gain, DType::F32, zeros({6}, {DType::F32})); },
                           {"cast: the converted value float32[6] on cpu must be float32 shaped [7]"});
}

TEST_CASE("AdamW over the buffer equals the per-parameter update; ZeRO-1 shards compose to it") {
  Generator gen(3);
  Tensor x = normal({4, 5}, 0.0, 1.0, gen, {DType::F64});
  const nn::AdamWOptions opt{.lr = 1e-2, .weight_decay = 0.1};

  // Reference: one fused update per parameter, weight decay on matrices only.
  Net ref_net(gen), whole_net(gen), sharded_net(gen);
  const auto ref_params = ref_net.named_parameters();
  std::vector<Tensor> m, v;
  for (size_t i = 0; i < ref_params.size(); ++i) {  // all three nets start equal
    ops::copy_(*whole_net.named_parameters()[i].tensor, *ref_params[i].tensor);
    ops::copy_(*sharded_net.named_parameters()[i].tensor, *ref_params[i].tensor);
    m.push_back(zeros(ref_params[i].tensor->shape(), {DType::F64}));
    v.push_back(zeros(ref_params[i].tensor->shape(), {DType::F64}));
  }

  nn::ParameterBuffer whole(whole_net.named_parameters(), {.bucket_bytes = 200, .shards = 2});
  nn::AdamW whole_opt(whole, opt);
  nn::ParameterBuffer sharded(sharded_net.named_parameters(), {.bucket_bytes = 200, .shards = 2});
  std::vector<nn::Range> part[2];  // what rank r would own: part r of every bucket
  for (const nn::Range& b : sharded.buckets())
    for (int r = 0; r < 2; ++r) part[r].push_back({b.begin + b.size() / 2 * r, b.begin + b.size() / 2 * (r + 1)});
  nn::AdamW shard0(sharded, opt, part[0]), shard1(sharded, opt, part[1]);

  for (int64_t step = 1; step <= 3; ++step) {
    for (const auto& p : ref_params)
      if (p.tensor->grad().defined()) ops::fill_(p.tensor->grad(), 0.0);
    autograd::backward(ref_net.loss(x));
    for (size_t i = 0; i < ref_params.size(); ++i)
      ops::adamw_step_(
          *ref_params[i].tensor, ref_params[i].tensor->grad(), m[i], v[i],
          {opt.lr, opt.beta1, opt.beta2, opt.eps, ref_params[i].weight_decay ? opt.weight_decay : 0.0, step});
    whole.zero_grad();
    autograd::backward(whole_net.loss(x));
    whole_opt.step(opt.lr);
    sharded.zero_grad();
    autograd::backward(sharded_net.loss(x));
    shard0.step(opt.lr);
    shard1.step(opt.lr);
  }
  const auto whole_params = whole_net.named_parameters(), sharded_params = sharded_net.named_parameters();
  for (size_t i = 0; i < ref_params.size(); ++i) {
    CAPTURE(ref_params[i].name);
    CHECK(max_rel_diff(*whole_params[i].tensor, *ref_params[i].tensor) < 1e-14);
    CHECK(max_rel_diff(*sharded_params[i].tensor, *ref_params[i].tensor) < 1e-14);
  }
  // The moments of the two shards, laid back out like the buffer, are the whole moments.
  Tensor m_full = zeros({sharded.numel()}, {DType::F64});
  int64_t at[2] = {0, 0};
  for (int r = 0; r < 2; ++r)
    for (const nn::Range& range : part[r]) {
      const Tensor& own = r == 0 ? shard0.m() : shard1.m();
      ops::copy_(ops::narrow(m_full, 0, range.begin, range.size()), ops::narrow(own, 0, at[r], range.size()));
      at[r] += range.size();
    }
  CHECK(max_rel_diff(m_full, whole_opt.m()) < 1e-14);
  CHECK(max_rel_diff(whole_opt.m(), zeros({whole.numel()}, {DType::F64})) > 0);
}
