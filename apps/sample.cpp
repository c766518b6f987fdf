// apps/sample.cpp - generate text from a trained checkpoint.
//
// Loads the model config and weights from a checkpoint (or a run directory's
// latest.safetensors), feeds the prompt through the model's incremental decoder
// one token at a time, then samples new tokens (temperature, top-k, top-p; see
// nn/sampling.h) with a seeded Philox stream and streams their text to stdout.
//
//   sample --checkpoint runs/fortunes --prompt "The best" --max-tokens 300
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "data/tokenizer.h"
#include "nn/checkpoint.h"
#include "nn/sampling.h"
#include "sessa/model.h"
#include "tensor/error.h"
#include "tensor/philox.h"
#include "tensor/random.h"

using namespace sessa;

namespace {

[[noreturn]] void fail(const std::string& msg) { throw sessa::Error(msg); }

struct Options {
  std::string checkpoint;
  std::string prompt;
  std::string tokenizer = "byte";
  int64_t max_tokens = 200;
  double temperature = 0.8;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 1234;
  std::string device = "auto";
  bool stop_at_eot = true;
};

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void write_out(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

int run(const Options& opt) {
  // ---- flag values ----
  if (!std::isfinite(opt.temperature) || opt.temperature < 0)
    fail("--temperature must be >= 0 (0 = greedy), got " + num(opt.temperature));
  if (opt.top_k < 0) fail("--top-k must be >= 0 (0 = off), got " + std::to_string(opt.top_k));
  if (!(opt.top_p > 0 && opt.top_p <= 1)) fail("--top-p must be in (0, 1] (1 = off), got " + num(opt.top_p));
  if (opt.max_tokens < 0) fail("--max-tokens must be >= 0, got " + std::to_string(opt.max_tokens));
  Device device;
  try {
    device = parse_device(opt.device);
  } catch (const std::exception& e) {
    fail(std::string("--device '") + opt.device + "': " + e.what());
  }

  // ---- checkpoint and tokenizer ----
  nn::Checkpoint ckpt;
  try {
    ckpt = nn::read_checkpoint(nn::resolve_checkpoint(opt.checkpoint));
  } catch (const std::exception& e) {
    fail(std::string("--checkpoint: ") + e.what());
  }
  const nn::ModelConfig& config = ckpt.config;
  const int64_t V = config.vocab_size;
  std::unique_ptr<data::Tokenizer> tok;
  try {
    tok = data::load_tokenizer(opt.tokenizer);
  } catch (const std::exception& e) {
    fail(std::string("--tokenizer: ") + e.what());
  }
  const bool byte_tok = opt.tokenizer == "byte";
  if (byte_tok && (V == 50257 || V == 50304))
    fail("--tokenizer: the model has a GPT-2 vocabulary (" + std::to_string(V) +
         " tokens) but the tokenizer is 'byte': pass a GPT-2 tokenizer file (llm.c gpt2_tokenizer.bin) with "
         "--tokenizer");
  if (int64_t(tok->vocab_size()) > V)
    fail("--tokenizer: the tokenizer has " + std::to_string(tok->vocab_size()) + " tokens but the model only " +
         std::to_string(V) + " (" + ckpt.path + "): wrong tokenizer for this model");
  // Ids the tokenizer cannot decode (e.g. GPT-2's padding up to 50304) are never sampled.
  const size_t sample_vocab = tok->vocab_size();
  if (int64_t(sample_vocab) < V)
    std::cerr << "note: sampling only the tokenizer's " << sample_vocab << " of the model's " << V << " ids\n";

  std::vector<uint32_t> prompt_ids;
  try {
    if (!opt.prompt.empty()) prompt_ids = tok->encode(opt.prompt);
  } catch (const std::exception& e) {
    fail(std::string("--prompt: cannot encode with this tokenizer (") + e.what() + "); leave --prompt empty");
  }
  // Documents start after an end-of-text token in the training data; so does the prompt.
  prompt_ids.insert(prompt_ids.begin(), tok->eot());

  // ---- model ----
  auto t_load = Clock::now();
  auto model = sessa::build_model(config, 0, TensorOptions{DType::F32, device});
  nn::load_parameters(ckpt, *model);
  std::cerr << "model: " << config.summary() << " from " << ckpt.path << " on " << device.str() << " (loaded in "
            << num(std::round(seconds_since(t_load) * 1000) / 1000) << " s)\n";

  autograd::NoGradGuard no_grad;
  const int64_t max_len = int64_t(prompt_ids.size()) + opt.max_tokens;
  auto states = model->new_decode_states(1, max_len);
  auto step = [&](uint32_t id) {
    Tensor ids = from_vector<int32_t>({int32_t(id)}, {1}, TensorOptions{DType::I32, device});
    std::vector<float> logits = model->step(ids, states).to_vector<float>();
    logits.resize(sample_vocab);
    return logits;
  };

  // ---- prompt ----
  auto t_prompt = Clock::now();
  std::vector<float> logits;
  for (uint32_t id : prompt_ids) logits = step(id);
  const double prompt_s = seconds_since(t_prompt);
  write_out(opt.prompt);

  // ---- generation ----
  nn::SamplingOptions sopt{.temperature = opt.temperature, .top_k = opt.top_k, .top_p = opt.top_p};
  Generator gen(opt.seed);
  int64_t generated = 0;
  bool stopped_at_eot = false, ends_with_newline = opt.prompt.empty() || opt.prompt.back() == '\n';
  auto t_gen = Clock::now();
  while (generated < opt.max_tokens) {
    double u = philox::uniform(gen.seed(), gen.advance(1));
    int32_t id = nn::sample_token(logits, sopt, u);
    ++generated;
    if (opt.stop_at_eot && uint32_t(id) == tok->eot()) {
      stopped_at_eot = true;
      break;
    }
    std::string text = tok->decode(uint32_t(id));
    write_out(text);
    if (!text.empty()) ends_with_newline = text.back() == '\n';
    if (generated < opt.max_tokens) logits = step(uint32_t(id));
  }
  const double gen_s = seconds_since(t_gen);
  if (!ends_with_newline) write_out("\n");

  std::fprintf(stderr, "%lld tokens generated%s in %.3f s (%.1f tokens/s); prompt: %zu tokens in %.3f s\n",
               (long long)generated, stopped_at_eot ? " (stopped at end-of-text)" : "", gen_s,
               gen_s > 0 ? double(generated) / gen_s : 0.0, prompt_ids.size(), prompt_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "sample: generate text from a checkpoint, streaming it to stdout.\n"
      "Statistics (tokens generated, tokens/s, prompt time) go to stderr."};
  Options opt;
  app.add_option("--checkpoint", opt.checkpoint,
                 "Checkpoint file (.safetensors), or a run directory meaning its latest.safetensors")
      ->required();
  app.add_option("--prompt", opt.prompt,
                 "Text to continue (echoed to stdout); generation always starts after an end-of-text token, "
                 "so an empty prompt starts a new document")
      ->capture_default_str();
  app.add_option("--tokenizer", opt.tokenizer,
                 "'byte' (vocab 257), or an llm.c GPT-2 tokenizer file for GPT-2 vocabulary models "
                 "(decode only: the prompt must then be empty)")
      ->capture_default_str();
  app.add_option("--max-tokens", opt.max_tokens, "Number of tokens to generate (>= 0)")->capture_default_str();
  app.add_option("--temperature", opt.temperature, "Softmax temperature (>= 0; 0 = greedy)")->capture_default_str();
  app.add_option("--top-k", opt.top_k, "Sample only from the k most likely tokens (0 = off)")->capture_default_str();
  app.add_option("--top-p", opt.top_p, "Nucleus sampling: smallest set of tokens with this mass, in (0, 1] (1 = off)")
      ->capture_default_str();
  app.add_option("--seed", opt.seed, "Seed of the Philox stream that draws the tokens")->capture_default_str();
  app.add_option("--device", opt.device, "auto, cpu, cuda or cuda:N (auto: cuda when available)")
      ->capture_default_str();
  app.add_flag("--stop-at-eot,!--no-stop-at-eot", opt.stop_at_eot,
               "Stop when the model emits the end-of-text token (default on; --no-stop-at-eot prints it as "
               "<|endoftext|> and goes on)");
  CLI11_PARSE(app, argc, argv);

  try {
    return run(opt);
  } catch (const std::exception& e) {
    std::cerr << "sample: error: " << e.what() << "\n";
    return 1;
  }
}
