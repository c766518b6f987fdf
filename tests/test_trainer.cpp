// The trainer's divergence guard (nn/trainer.h): a step with a non-finite loss or
// gradient norm leaves the weights, the AdamW moments and its step count exactly
// as they were; a good step resets the count; max_bad_steps in a row throw.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "nn/trainer.h"
#include "sessa/model.h"
#include "tests/helpers.h"

using namespace sessa;

namespace {

struct Fixture {
  std::shared_ptr<nn::LanguageModel> model;
  std::unique_ptr<nn::Trainer> trainer;
  Tensor ids, targets;

  Fixture() {
    nn::ModelConfig c = nn::preset("sessa", "tiny", 11);
    c.d_model = 16, c.n_heads = 2;
    model = layer::build_model(c, 3);
    trainer = std::make_unique<nn::Trainer>(model, nn::TrainerOptions{.max_bad_steps = 3});
    std::vector<int32_t> a, b;
    for (int i = 0; i < 12; ++i) a.push_back(i % 11), b.push_back((i * 7 + 3) % 11);
    ids = from_vector(a, {2, 6}, {DType::I32});
    targets = from_vector(b, {2, 6}, {DType::I32});
  }
  nn::StepResult step() { return trainer->step({{ids, targets}}, 1e-2); }
  float& first_weight() { return trainer->parameters().data().data<float>()[0]; }
};

}  // namespace

TEST_CASE("trainer: a non-finite step changes nothing; a good one resets the count; 3 in a row throw") {
  Fixture f;
  REQUIRE_FALSE(f.step().skipped);
  for (float poison : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    CAPTURE(poison);
    const float saved = f.first_weight();
    const std::vector<float> weights = f.trainer->parameters().data().to_vector<float>();
    const std::vector<float> m = f.trainer->optimizer().m().to_vector<float>();
    const std::vector<float> v = f.trainer->optimizer().v().to_vector<float>();
    const int64_t steps = f.trainer->optimizer().steps_taken();
    f.first_weight() = poison;
    const nn::StepResult r = f.step();
    CHECK(r.skipped);
    CHECK_FALSE((std::isfinite(r.loss) && std::isfinite(r.grad_norm)));
    std::vector<float> after = f.trainer->parameters().data().to_vector<float>();
    after[0] = weights[0];
    CHECK(after == weights);  // bit for bit: no update applied
    CHECK(f.trainer->optimizer().m().to_vector<float>() == m);
    CHECK(f.trainer->optimizer().v().to_vector<float>() == v);
    CHECK(f.trainer->optimizer().steps_taken() == steps);
    f.first_weight() = saved;
    CHECK_FALSE(f.step().skipped);  // a good step: the count of bad ones starts again
  }

  f.first_weight() = std::numeric_limits<float>::quiet_NaN();
  CHECK(f.step().skipped);
  CHECK(f.step().skipped);
  sessa::test::check_error([&] { f.step(); }, {"training diverged: 3 steps in a row"});
}

TEST_CASE("all_finite: NaN and inf are caught, large finite values are not") {
  CHECK(nn::all_finite(from_vector<float>({1, -2, 3e38f}, {3})));
  CHECK_FALSE(nn::all_finite(from_vector<float>({1, std::numeric_limits<float>::infinity()}, {2})));
  CHECK_FALSE(nn::all_finite(from_vector<float>({std::numeric_limits<float>::quiet_NaN(), 0}, {2})));
}
