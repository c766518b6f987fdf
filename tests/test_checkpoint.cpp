// tests/test_checkpoint.cpp - checkpoint loading validates everything it reads:
// tensor dtypes and shapes, finite weights and Adam moments, v >= 0, and the
// config and training metadata; each error names the file and the tensor or key.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>

#include "data/safetensors.h"
#include "nn/checkpoint.h"
#include "nn/trainer.h"
#include "sessa/model.h"
#include "tensor/error.h"

using namespace sessa;
namespace fs = std::filesystem;

namespace {

// Message of the sessa::Error `f` throws (any other exception fails the test).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("expected sessa::Error");
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

nn::ModelConfig tiny_config() {
  nn::ModelConfig c = nn::preset("sessa", "tiny", 11);
  c.d_model = 16;
  c.n_heads = 2;
  return c;
}

data::Json training_state() {
  data::Json flags = {{"data", "runs/data/train.bin"},
                      {"val_data", ""},
                      {"batch", 2},
                      {"seq_len", 6},
                      {"steps", 10},
                      {"warmup", 1},
                      {"accum", 1},
                      {"lr", 1e-2},
                      {"weight_decay", 0.1},
                      {"grad_clip", 1.0},
                      {"seed", 7}};
  return {{"step", 1}, {"data_epoch", 0}, {"data_position", 1}, {"data_world", 1}, {"flags", flags}};
}

// A checkpoint of a tiny Sessa model after one AdamW step, and ways to corrupt copies of it.
struct Fixture {
  fs::path dir = fs::temp_directory_path() / ("sessa_checkpoint_test_" + std::to_string(::getpid()));
  std::string good = (dir / "good.safetensors").string(), bad = (dir / "bad.safetensors").string();
  nn::ModelConfig config = tiny_config();
  std::shared_ptr<nn::LanguageModel> model = layer::build_model(config, 3);

  Fixture() {
    fs::create_directories(dir);
    nn::Trainer trainer(model, {});
    Tensor ids = from_vector<int32_t>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1}, {2, 6}, {DType::I32});
    trainer.step({{ids, ids}}, 1e-2);
    nn::OptimizerState state = trainer.optimizer_state();
    nn::save_checkpoint(good, *model, config, &state, training_state());
  }
  ~Fixture() { fs::remove_all(dir); }

  // Writes `bad` as `good` changed by `edit`.
  void corrupt(const std::function<void(data::StFile&)>& edit) const {
    data::StFile file = data::read_safetensors(good);
    edit(file);
    data::write_safetensors(bad, file.entries, file.metadata);
  }
  void set_metadata(const std::string& key, const std::string& value) const {
    corrupt([&](data::StFile& file) {
      for (auto& [k, v] : file.metadata)
        if (k == key) v = value;
    });
  }
  void set_training(const std::function<void(data::Json&)>& edit) const {
    data::Json training = nn::read_checkpoint(good).training;
    edit(training);
    set_metadata("training", training.dump());
  }
  // Sets element 0 of a stored float32 tensor.
  void set_value(const std::string& name, float value) const {
    corrupt([&](data::StFile& file) {
      for (auto& e : file.entries)
        if (e.name == name) std::memcpy(e.bytes.data(), &value, sizeof value);
    });
  }
  std::string load_error() const {
    return error_of([&] {
      nn::Checkpoint ckpt = nn::read_checkpoint(bad);
      auto fresh = layer::build_model(ckpt.config, 1);
      nn::load_parameters(ckpt, *fresh);
      nn::Trainer trainer(fresh, {});
      trainer.load_optimizer_state(ckpt);
    });
  }
};

const std::string kWeight = "embedding.weight";

}  // namespace

TEST_CASE("checkpoint: a good checkpoint loads with its training state") {
  Fixture fx;
  nn::Checkpoint ckpt = nn::read_checkpoint(fx.good);
  CHECK(ckpt.config.to_json() == fx.config.to_json());
  CHECK(ckpt.training_fields().integer("optimizer_steps") == 1);
  CHECK(ckpt.training_fields().object("flags").number("lr") == 1e-2);
  auto fresh = layer::build_model(ckpt.config, 1);
  nn::load_parameters(ckpt, *fresh);
  CHECK(fresh->embedding.to_vector<float>() == fx.model->embedding.to_vector<float>());
  // A missing training key is named when it is asked for.
  CHECK(error_of([&] { ckpt.training_fields().integer("absent_key", 0); }) ==
        "checkpoint " + fx.good + ": metadata 'training' key 'absent_key' missing (expected an integer)");
}

TEST_CASE("checkpoint: tensors of the wrong dtype, shape or name are refused") {
  Fixture fx;
  SUBCASE("int32 where float32 belongs (same byte size)") {
    fx.corrupt([](data::StFile& file) {
      for (auto& e : file.entries)
        if (e.name == kWeight) e.dtype = "I32";
    });
    const std::string msg = fx.load_error();
    CHECK(contains(msg, "checkpoint " + fx.bad + ": tensor '" + kWeight + "' is stored as I32, expected F32"));
  }
  SUBCASE("shape") {
    fx.corrupt([](data::StFile& file) {
      for (auto& e : file.entries)
        if (e.name == kWeight) e.shape = {e.shape[1], e.shape[0]};
    });
    CHECK(contains(fx.load_error(), "tensor '" + kWeight + "' has shape [16, 11], the model expects [11, 16]"));
  }
  SUBCASE("missing and unexpected tensors") {
    fx.corrupt([](data::StFile& file) { file.entries.back().name = "stray.weight"; });
    CHECK(contains(fx.load_error(), fx.bad));
    fx.corrupt([](data::StFile& file) { file.entries.push_back({"stray.weight", "F32", {1}, {0, 0, 0, 0}}); });
    CHECK(contains(fx.load_error(), "tensor 'stray.weight' is not a parameter"));
  }
}

TEST_CASE("checkpoint: non-finite weights and Adam moments, and negative v, are refused") {
  Fixture fx;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  fx.set_value(kWeight, nan);
  CHECK(contains(fx.load_error(), "checkpoint " + fx.bad + ": tensor '" + kWeight + "' holds nan at element 0"));
  fx.set_value("optimizer.m." + kWeight, -inf);
  CHECK(contains(fx.load_error(), "tensor 'optimizer.m." + kWeight + "' holds -inf at element 0"));
  fx.set_value("optimizer.v." + kWeight, -1e-3f);
  CHECK(contains(fx.load_error(), "tensor 'optimizer.v." + kWeight + "' holds -0.001 at element 0"));
  CHECK(contains(fx.load_error(), "second moment is never negative"));
}

TEST_CASE("checkpoint: training metadata is checked on read, naming the file and key") {
  Fixture fx;
  const std::string at = "checkpoint " + fx.bad + ": metadata 'training' key ";
  auto training_error = [&](const std::function<void(data::Json&)>& edit) {
    fx.set_training(edit);
    return error_of([&] { nn::read_checkpoint(fx.bad); });
  };
  CHECK(training_error([](data::Json& t) { t["step"] = -1; }) == at + "'step' is -1, expected an integer >= 0");
  CHECK(contains(training_error([](data::Json& t) { t["optimizer_steps"] = 5; }),
                 at + "'optimizer_steps' is 5, more than 'step' 1"));
  CHECK(contains(training_error([](data::Json& t) { t["data_epoch"] = -3; }), at + "'data_epoch' is -3"));
  CHECK(contains(training_error([](data::Json& t) { t["data_position"] = 1.5; }), at + "'data_position' is 1.5"));
  CHECK(contains(training_error([](data::Json& t) { t["data_world"] = 0; }),
                 at + "'data_world' is 0, expected an integer >= 1"));
  CHECK(contains(training_error([](data::Json& t) { t["flags"]["lr"] = std::nan(""); }),
                 at + "'flags.lr' is null, expected a finite number > 0"));
  CHECK(contains(training_error([](data::Json& t) { t["flags"]["lr"] = 0; }), at + "'flags.lr' is 0"));
  CHECK(contains(training_error([](data::Json& t) { t["flags"]["batch"] = 0; }), at + "'flags.batch' is 0"));
  CHECK(contains(training_error([](data::Json& t) { t["flags"]["grad_clip"] = -1; }), at + "'flags.grad_clip' is -1"));
  CHECK(contains(training_error([](data::Json& t) { t["flags"] = "fast"; }), at + "'flags' is a string"));
  fx.set_metadata("training", "{\"step\": ");
  CHECK(contains(error_of([&] { nn::read_checkpoint(fx.bad); }),
                 "checkpoint " + fx.bad + ": metadata 'training': invalid JSON"));
  fx.set_metadata("training", "[]");
  CHECK(contains(error_of([&] { nn::read_checkpoint(fx.bad); }), "metadata 'training': expected a JSON object"));
  // Weights only: reading the optimizer state says so.
  fx.set_training([](data::Json& t) { t.erase("optimizer_steps"); });
  CHECK(contains(fx.load_error(), "checkpoint " + fx.bad + ": no optimizer state"));
}

TEST_CASE("checkpoint: the model config and format are checked on read") {
  Fixture fx;
  data::Json config = fx.config.to_json();
  config.erase("d_model");
  fx.set_metadata("config", config.dump());
  CHECK(error_of([&] { nn::read_checkpoint(fx.bad); }) ==
        "checkpoint " + fx.bad + ": metadata 'config' key 'd_model' missing (expected an integer)");
  config = fx.config.to_json();
  config["n_heads"] = 3;  // does not divide d_model
  fx.set_metadata("config", config.dump());
  CHECK(contains(error_of([&] { nn::read_checkpoint(fx.bad); }), "checkpoint " + fx.bad + ": metadata 'config': "));
  fx.set_metadata("format", "pytorch");
  CHECK(contains(error_of([&] { nn::read_checkpoint(fx.bad); }), "not a sessa-engine checkpoint"));
}
