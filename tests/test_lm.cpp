// Language models of every family: parameter names and counts, whole-model
// gradchecks, decode-equals-forward, learning a copy task, checkpoint round trip
// and exact resume.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "nn/checkpoint.h"
#include "nn/functional.h"
#include "nn/head_loss.h"
#include "nn/trainer.h"
#include "sessa/model.h"
#include "tests/helpers.h"

using namespace sessa;
using namespace sessa::layer;  // sessa/: build_model, SessaLayer, the feedback solve, influence, memory
using sessa::test::check_error;
using sessa::test::max_rel_diff;

namespace {

const std::vector<std::string> kFamilies = nn::family_names();  // every row of nn/family.h

nn::ModelConfig tiny(const std::string& family, int64_t vocab = 11) {
  nn::ModelConfig c = nn::preset(family, "tiny", vocab);
  c.d_model = 16;
  c.n_heads = 2;
  c.mamba_d_state = 4;
  return c;
}

Tensor random_ids(int64_t B, int64_t T, int64_t vocab, Generator& gen) {
  Tensor u = uniform({B, T}, 0, double(vocab) - 1e-9, gen, {DType::F64});
  std::vector<int32_t> ids;
  for (double v : u.to_vector<double>()) ids.push_back(int32_t(v));
  return from_vector(ids, {B, T}, {DType::I32});
}

// Larger weights than the init so gradients are far from zero in every path.
void scale_up(nn::Module& m, Generator& gen) {
  for (auto& p : m.named_parameters())
    ops::add_(*p.tensor, normal(p.tensor->shape(), 0, 0.2, gen, p.tensor->options()));
}

}  // namespace

TEST_CASE("parameter names follow the module structure; counts match parameter_count") {
  for (const auto& family : kFamilies) {
    CAPTURE(family);
    nn::ModelConfig c = tiny(family);
    auto model = build_model(c, 1);
    std::vector<std::string> names;
    for (auto& p : model->named_parameters()) names.push_back(p.name);
    CHECK(names.front() == "embedding.weight");
    CHECK(names.back() == "norm_f.bias");
    CHECK(model->parameter_count() == parameter_count(c));
    auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
    if (family == "sessa") {
      CHECK(has("layers.1.mixer.proj_fb.weight"));
      CHECK(has("layers.0.mixer.attn.out_proj.weight"));
      CHECK(has("layers.0.mixer.gamma_bias"));
    }
    if (family == "transformer") CHECK(has("layers.1.mlp.fc_out.bias"));
    if (family == "mamba") CHECK(has("layers.1.mixer.A_log"));
  }
  // GPT-2-small scale presets, and families matched by parameter count.
  nn::ModelConfig small = nn::preset("transformer", "small", 50304);
  CHECK(small.n_layers == 12);
  CHECK(small.d_model == 768);
  int64_t target = parameter_count(small);
  CHECK(target == 123689472);  // docs/models.md's table
  CHECK(parameter_count(nn::preset("sessa", "small", 50304)) == 102437388);
  CHECK(parameter_count(nn::preset("mamba", "small", 50304)) == 83904000);
  const std::map<std::string, int64_t> matched_layers{{"sessa", 16}, {"mamba", 23}};  // as docs/models.md says
  for (const auto& match : matched_layers) {  // a named pair: clang 14 cannot CAPTURE a structured binding
    const std::string& family = match.first;
    CAPTURE(family);
    nn::ModelConfig m = match_parameters(nn::preset(family, "small", 50304), target);
    CHECK(m.n_layers == match.second);
    CHECK(std::abs(double(parameter_count(m) - target)) / double(target) < 0.05);
  }
}

TEST_CASE("an unknown model family is refused, listing the valid ones") {
  check_error([] { nn::preset("rnn", "tiny", 11); }, {"unknown model family 'rnn'", "sessa, transformer, mamba"});
  data::Json j = tiny("sessa").to_json();
  j["family"] = "lstm";
  check_error([&] { nn::ModelConfig::from_json(j); }, {"'lstm'", "sessa, transformer, mamba"});
  for (const auto& f : nn::families()) CHECK(nn::family_from_name(f.name) == f.id);
}

TEST_CASE("gradcheck: each whole tiny LM in float64") {
  for (const auto& family : kFamilies) {
    CAPTURE(family);
    nn::ModelConfig c = tiny(family);
    c.n_layers = 1;
    Generator gen(2);
    auto model = build_model(c, 2, {DType::F64});
    scale_up(*model, gen);
    Tensor ids = random_ids(2, 5, c.vocab_size, gen), targets = random_ids(2, 5, c.vocab_size, gen);
    autograd::GradcheckOptions opt;
    opt.max_checks_per_input = 6;
    auto r = autograd::gradcheck([&](const std::vector<Tensor>&) { return model->loss(ids, targets); },
                                 model->parameters(), opt);
    CHECK_MESSAGE(r.ok, r.report);
  }
}

TEST_CASE("decode equals forward for every family (float64)") {
  for (const auto& family : kFamilies) {
    CAPTURE(family);
    nn::ModelConfig c = tiny(family);
    Generator gen(3);
    auto model = build_model(c, 3, {DType::F64});
    scale_up(*model, gen);
    const int64_t B = 2, T = 8;
    Tensor ids = random_ids(B, T, c.vocab_size, gen);
    autograd::NoGradGuard no_grad;
    Tensor logits = model->forward(ids);
    auto states = model->new_decode_states(B, T);
    for (int64_t t = 0; t < T; ++t) {
      Tensor step = model->step(ops::reshape(ops::contiguous(ops::narrow(ids, 1, t, 1)), {B}), states);
      CHECK(max_rel_diff(step, ops::reshape(ops::narrow(logits, 1, t, 1), {B, c.vocab_size})) < 1e-10);
    }
  }
}

namespace {
// The copy task: `len` random symbols, a separator, the same symbols again. Only the
// copied half is scored (other targets are ignore_index -1).
struct CopyBatch {
  Tensor ids, targets;
};
CopyBatch copy_batch(int64_t B, int64_t len, int64_t symbols, Generator& gen) {
  Tensor sym = random_ids(B, len, symbols, gen);
  auto s = sym.to_vector<int32_t>();
  const int64_t T = 2 * len + 1, sep = symbols;
  std::vector<int32_t> ids, targets;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int32_t> row;
    for (int64_t i = 0; i < len; ++i) row.push_back(s[size_t(b * len + i)]);
    row.push_back(int32_t(sep));
    for (int64_t i = 0; i < len; ++i) row.push_back(s[size_t(b * len + i)]);
    for (int64_t t = 0; t < T - 1; ++t) {
      ids.push_back(row[size_t(t)]);
      targets.push_back(t >= len ? row[size_t(t + 1)] : -1);
    }
  }
  return {from_vector(ids, {B, T - 1}, {DType::I32}), from_vector(targets, {B, T - 1}, {DType::I32})};
}

double copy_accuracy(nn::LanguageModel& model, const CopyBatch& batch) {
  autograd::NoGradGuard no_grad;
  auto pred = ops::argmax(model.forward(batch.ids), -1).to_vector<int32_t>();
  auto tgt = batch.targets.to_vector<int32_t>();
  int64_t right = 0, total = 0;
  for (size_t i = 0; i < tgt.size(); ++i)
    if (tgt[i] >= 0) total += 1, right += pred[i] == tgt[i];
  return double(right) / double(total);
}
}  // namespace

TEST_CASE("learning: each family's tiny LM learns to copy") {
  // Stated target: >= 90% of copied tokens right on fresh sequences. Measured when
  // written: Sessa and Transformer 100% after 300 steps; Mamba 35% after 300, 80%
  // after 600 and 100% after 1000 steps (copying is known to be harder for SSMs).
  const std::map<std::string, int64_t> budget{{"sessa", 300}, {"transformer", 300}, {"mamba", 1000}};
  for (const auto& family : kFamilies) {
    CAPTURE(family);
    const int64_t symbols = 8, len = 6, steps = budget.at(family);
    nn::ModelConfig c = nn::preset(family, "tiny", symbols + 1);
    c.d_model = 32;
    c.n_heads = 2;
    auto model = build_model(c, 4);
    nn::Trainer trainer(model, {.adamw = {.lr = 3e-3, .weight_decay = 0.0}, .grad_clip = 1.0});
    Generator gen(4);
    for (int64_t s = 0; s < steps; ++s) {
      CopyBatch batch = copy_batch(32, len, symbols, gen);
      trainer.step({{batch.ids, batch.targets}}, nn::cosine_lr(s, 20, steps, 3e-3));
    }
    double acc = copy_accuracy(*model, copy_batch(64, len, symbols, gen));
    MESSAGE(family << " copy accuracy after " << steps << " steps: " << acc);
    CHECK(acc >= 0.9);
  }
}

TEST_CASE("checkpoint: round trip gives identical outputs; resume gives the same next loss") {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("sessa_ckpt_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const auto& family : kFamilies) {
    CAPTURE(family);
    nn::ModelConfig c = tiny(family);
    Generator gen(5);
    Tensor ids = random_ids(2, 6, c.vocab_size, gen), targets = random_ids(2, 6, c.vocab_size, gen);
    auto train_steps = [&](nn::Trainer& trainer, int64_t n) {
      double last = 0;
      for (int64_t s = 0; s < n; ++s) last = trainer.step({{ids, targets}}, 1e-2).loss;
      return last;
    };
    // Uninterrupted: 4 steps. Interrupted: 2 steps, save, load into a fresh model, 2 more.
    nn::Trainer ref(build_model(c, 6), {.grad_clip = 0});
    train_steps(ref, 3);
    double ref_loss = train_steps(ref, 1);

    auto first = build_model(c, 6);
    nn::Trainer first_trainer(first, {.grad_clip = 0});
    train_steps(first_trainer, 2);
    std::string path = (dir / (family + ".safetensors")).string();
    data::Json training = data::Json::object();
    training["step"] = 2;
    nn::OptimizerState state = first_trainer.optimizer_state();
    nn::save_checkpoint(path, *first, c, &state, training);

    nn::Checkpoint ckpt = nn::read_checkpoint(path);
    CHECK(ckpt.config.to_json() == c.to_json());
    CHECK(ckpt.training_fields().integer("step") == 2);
    auto second = build_model(ckpt.config, 99);  // different init, overwritten by the load
    nn::load_parameters(ckpt, *second);
    {
      autograd::NoGradGuard no_grad;
      CHECK(second->forward(ids).to_vector<float>() == first->forward(ids).to_vector<float>());
    }
    nn::Trainer second_trainer(second, {.grad_clip = 0});
    second_trainer.load_optimizer_state(ckpt);
    train_steps(second_trainer, 1);
    CHECK(train_steps(second_trainer, 1) == ref_loss);
  }
  // A checkpoint of another shape is refused, naming the file and the tensor.
  nn::ModelConfig other = tiny("sessa");
  other.d_model = 32;
  auto model = build_model(other, 1);
  check_error([&] { nn::load_parameters(nn::read_checkpoint((dir / "sessa.safetensors").string()), *model); },
              {"sessa.safetensors", "embedding.weight", "[11, 16]"});
  fs::remove_all(dir);
}

TEST_CASE("gradient accumulation: two half batches equal one full batch") {
  nn::ModelConfig c = tiny("sessa");
  Generator gen(7);
  Tensor ids = random_ids(4, 6, c.vocab_size, gen), targets = random_ids(4, 6, c.vocab_size, gen);
  auto full = build_model(c, 8), accum = build_model(c, 8);
  autograd::backward(full->loss(ids, targets));
  for (int64_t half = 0; half < 2; ++half) {  // each micro-batch's loss scaled by 1 / micro-steps
    Tensor part_ids = ops::narrow(ids, 0, 2 * half, 2), part_targets = ops::narrow(targets, 0, 2 * half, 2);
    autograd::backward(accum->loss(part_ids, part_targets) * 0.5);
  }
  auto pf = full->parameters(), pa = accum->parameters();
  for (size_t i = 0; i < pf.size(); ++i) CHECK(max_rel_diff(pa[i].grad(), pf[i].grad()) < 1e-5);
}

TEST_CASE("the fused chunked head loss equals cross_entropy(forward(ids)), loss and every gradient") {
  // Chunks of 3 rows over B * T = 10 (the last chunk short), with ignored targets, one chunk of
  // all 10 rows and the default; float64 to 1e-12 and float32 to 1e-5.
  for (const auto& family : kFamilies) {
    for (DType dtype : {DType::F64, DType::F32}) {
      for (int64_t chunk : {int64_t(3), int64_t(10), nn::kHeadLossChunkRows}) {
        CAPTURE(family);
        CAPTURE(dtype_name(dtype));
        CAPTURE(chunk);
        nn::ModelConfig c = tiny(family);
        c.n_layers = 1;
        Generator gen(11);
        auto fused = build_model(c, 5, {dtype}), plain = build_model(c, 5, {dtype});
        scale_up(*fused, gen);
        for (size_t i = 0; i < fused->parameters().size(); ++i)
          ops::copy_(plain->parameters()[i], fused->parameters()[i]);
        fused->loss_chunk_rows = chunk;
        Tensor ids = random_ids(2, 5, c.vocab_size, gen), targets = random_ids(2, 5, c.vocab_size, gen);
        std::vector<int32_t> t = targets.to_vector<int32_t>();
        t[1] = t[2] = t[3] = t[7] = -100;  // the second chunk of 3 wholly ignored
        targets = from_vector(t, {2, 5}, {DType::I32});
        Tensor a = fused->loss(ids, targets, -100);
        Tensor b = nn::cross_entropy(plain->forward(ids), targets, -100);
        const double tol = dtype == DType::F64 ? 1e-12 : 1e-5;
        CHECK(max_rel_diff(a, b) < tol);
        autograd::backward(a * 0.75);  // a scaled upstream gradient
        autograd::backward(b * 0.75);
        auto pf = fused->parameters(), pp = plain->parameters();
        for (size_t i = 0; i < pf.size(); ++i) {
          CAPTURE(i);
          REQUIRE(pf[i].grad().defined());
          CHECK(max_rel_diff(pf[i].grad(), pp[i].grad()) < tol);
        }
      }
    }
  }
}

TEST_CASE("head_cross_entropy: errors name the op and the shape at fault") {
  Tensor h = zeros({4, 3}), w = zeros({5, 3}), t = zeros({4}, {DType::I32});
  check_error([&] { nn::head_cross_entropy(h, zeros({5, 2}), t); }, {"head_cross_entropy", "[4, 3]", "[5, 2]"});
  check_error([&] { nn::head_cross_entropy(h, w, zeros({3}, {DType::I32})); }, {"head_cross_entropy", "int32", "[3]"});
  check_error([&] { nn::head_cross_entropy(h, w.to(DType::F64), t); }, {"head_cross_entropy", "dtype"});
  check_error([&] { nn::head_cross_entropy(h, w, t, -1, 0); }, {"head_cross_entropy", "chunk_rows"});
  check_error(
      [&] {
        nn::head_cross_entropy(h, w, from_vector<int32_t>({0, 1, 5, 2}, {4}, {DType::I32}));
      },
      {"head_cross_entropy", "target 5", "row 2", "[0, 5)"});
  // Every target ignored: loss 0 and zero gradients, like nn::cross_entropy.
  Tensor hx = ones({4, 3}), wx = ones({5, 3});
  hx.set_requires_grad(), wx.set_requires_grad();
  Tensor loss = nn::head_cross_entropy(hx, wx, from_vector<int32_t>({-1, -1, -1, -1}, {4}, {DType::I32}), -1, 3);
  CHECK(loss.item() == 0.0);
  autograd::backward(loss);
  CHECK(ops::sum_of_squares(hx.grad()).item() == 0.0);
  CHECK(ops::sum_of_squares(wx.grad()).item() == 0.0);
}

TEST_CASE("head_cross_entropy's pieces: the sum reduction and 1/count, 0 when every target is ignored") {
  Tensor some = from_vector<int32_t>({0, -1, 4, -1, 2, 3, 3, -1}, {2, 4}, {DType::I32});
  for (DType dtype : {DType::F32, DType::F64}) {
    CAPTURE(dtype_name(dtype));
    Tensor inv = ops::inverse_target_count(some, -1, dtype);
    CHECK(inv.dtype() == dtype);
    CHECK(inv.dim() == 0);
    CHECK(inv.item() == (dtype == DType::F32 ? double(0.2f) : 0.2));  // 5 counted targets (any shape)
    CHECK(ops::inverse_target_count(full({4}, -1, {DType::I32}), -1, dtype).item() == 0.0);
    CHECK(ops::inverse_target_count(Tensor::empty({0}, {DType::I32}), -1, dtype).item() == 0.0);
  }
  check_error([&] { ops::inverse_target_count(some, -1, DType::BF16); }, {"inverse_target_count", "bfloat16"});
  check_error([&] { ops::inverse_target_count(zeros({3}), -1, DType::F32); }, {"inverse_target_count", "int32"});
  // Sum = count * mean, and the sum of an all-ignored batch is 0 (so 0 * 1/count stays 0).
  Generator gen(3);
  Tensor x = normal({8, 5}, 0, 1, gen, {DType::F64}), flat = ops::reshape(some, {8});
  const auto mean = ops::cross_entropy(x, flat, -1), sum = ops::cross_entropy(x, flat, -1, ops::LossReduction::Sum);
  CHECK(mean.count == 5);
  CHECK(sum.loss.item() == doctest::Approx(5 * mean.loss.item()).epsilon(1e-14));
  CHECK(ops::cross_entropy(x, full({8}, -1, {DType::I32}), -1, ops::LossReduction::Sum).loss.item() == 0.0);

  // The two in one pass: the gradient (scaled) over the logits, the sum added to loss_sum.
  Tensor logits = ops::clone(x), loss_sum = scalar(0.5, {DType::F64});
  ops::cross_entropy_and_grad_(logits, flat, -1, scalar(0.2, {DType::F64}), loss_sum);
  CHECK(loss_sum.item() == doctest::Approx(0.5 + sum.loss.item()).epsilon(1e-14));
  test::expect_close(logits, ops::cross_entropy_backward(scalar(1.0), x, flat, mean.lse, -1, 5), 1e-14, "dlogits");
  check_error([&] { ops::cross_entropy_and_grad_(logits, flat, -1, scalar(0.2), loss_sum); },
              {"cross_entropy_and_grad_", "0-d float64"});
  check_error([&] { ops::cross_entropy_and_grad_(ops::transpose(logits, 0, 1), flat, -1, scalar(0.2), loss_sum); },
              {"cross_entropy_and_grad_", "logits (N, V)"});
}

TEST_CASE("parameter counts from shapes equal the built models' for every family") {
  // Several shapes per family: one head (Sessa without out_proj), grouped kv heads, odd widths
  // (Mamba's dt rank ceil(D / 16) = 1, 2, 3), expand / d_state / d_conv off their defaults.
  struct ShapeCase {
    int64_t d_model, heads, kv_heads, layers, vocab, expand, d_state, d_conv;
  };
  const std::vector<ShapeCase> shapes{{8, 1, 0, 1, 5, 1, 1, 2},    {16, 2, 1, 2, 11, 2, 4, 4},
                                      {24, 4, 2, 3, 300, 3, 5, 3}, {40, 4, 0, 1, 7, 2, 16, 4},
                                      {34, 1, 0, 2, 9, 1, 3, 2},   {48, 8, 4, 1, 3, 2, 2, 5}};
  for (const auto& family : kFamilies) {
    for (const ShapeCase& s : shapes) {
      CAPTURE(family);
      CAPTURE(s.d_model);
      nn::ModelConfig c = nn::preset(family, "tiny", s.vocab);
      c.d_model = s.d_model, c.n_heads = s.heads, c.n_kv_heads = s.kv_heads, c.n_layers = s.layers;
      c.mamba_expand = s.expand, c.mamba_d_state = s.d_state, c.mamba_d_conv = s.d_conv;
      auto model = build_model(c, 1);
      for (const auto& block : model->layers) CHECK(block->parameter_count() == block_parameter_count(c));
      CHECK(model->parameter_count() == parameter_count(c));
    }
  }
  // Nothing is built to count: a model far larger than this machine is counted at once.
  // A Transformer block has 12 D^2 + 13 D parameters (Q, K, V, O with biases, the 4D MLP, two norms).
  nn::ModelConfig huge = nn::preset("transformer", "tiny", 50304);
  huge.d_model = 65536, huge.n_heads = 1, huge.n_layers = 4096;
  const int64_t D = huge.d_model;
  CHECK(parameter_count(huge) == 50304 * D + 2 * D + 4096 * (12 * D * D + 13 * D));
}
