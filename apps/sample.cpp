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
#include <memory>
#include <string>
#include <vector>

#include "apps/common/app.h"
#include "apps/common/flags.h"
#include "apps/common/run_files.h"
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

struct Flags {
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

void add_flags(CLI::App& app, Flags& f) {
  using namespace apps;
  app.add_option("--checkpoint", f.checkpoint,
                 "Checkpoint file (.safetensors), or a run directory meaning its latest.safetensors")
      ->required()
      ->check(existing_path());
  app.add_option("--prompt", f.prompt,
                 "Text to continue (echoed to stdout); generation always starts after an end-of-text token, "
                 "so an empty prompt starts a new document")
      ->capture_default_str();
  app.add_option("--tokenizer", f.tokenizer,
                 "'byte' (vocab 257), or an llm.c GPT-2 tokenizer file for GPT-2 vocabulary models "
                 "(decode only: the prompt must then be empty)")
      ->capture_default_str();
  app.add_option("--max-tokens", f.max_tokens, "Number of tokens to generate")
      ->check(non_negative_int(1 << 24))
      ->capture_default_str();
  app.add_option("--temperature", f.temperature, "Softmax temperature (0 = greedy)")
      ->check(finite_non_negative(1000))
      ->capture_default_str();
  app.add_option("--top-k", f.top_k, "Sample only from the k most likely tokens (0 = off)")
      ->check(non_negative_int(1 << 24))
      ->capture_default_str();
  app.add_option("--top-p", f.top_p, "Nucleus sampling: smallest set of tokens with this mass (1 = off)")
      ->check(positive_fraction())
      ->capture_default_str();
  app.add_option("--seed", f.seed, "Seed of the Philox stream that draws the tokens")
      ->check(seed_number())
      ->capture_default_str();
  app.add_option("--device", f.device, "auto, cpu, cuda or cuda:N (auto: cuda when available)")->capture_default_str();
  app.add_flag("--stop-at-eot,!--no-stop-at-eot", f.stop_at_eot,
               "Stop when the model emits the end-of-text token (default on; --no-stop-at-eot prints it as "
               "<|endoftext|> and goes on)");
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Streams text to stdout; false once the reader has gone away (`sample ... | head`).
bool write_out(const std::string& s) {
  return std::fwrite(s.data(), 1, s.size(), stdout) == s.size() && std::fflush(stdout) == 0;
}

// The checkpoint and a tokenizer that can decode its vocabulary.
struct Loaded {
  nn::Checkpoint ckpt;
  std::unique_ptr<data::Tokenizer> tok;
  size_t sample_vocab = 0;  // ids the tokenizer can decode (e.g. not GPT-2's padding up to 50304)
};

Loaded load(const Flags& f) {
  Loaded l;
  l.ckpt = nn::read_checkpoint(apps::resolve_run_checkpoint(f.checkpoint, "--checkpoint"));
  const int64_t V = l.ckpt.config.vocab_size;
  try {
    l.tok = data::load_tokenizer(f.tokenizer);
  } catch (const std::exception& e) {
    SESSA_FAIL("--tokenizer", e.what());
  }
  SESSA_CHECK(f.tokenizer != "byte" || (V != 50257 && V != 50304), "--tokenizer",
              "the model has a GPT-2 vocabulary ("
                  << V << " tokens) but the tokenizer is 'byte': pass a GPT-2 tokenizer file (llm.c "
                  << "gpt2_tokenizer.bin) with --tokenizer");
  SESSA_CHECK(int64_t(l.tok->vocab_size()) <= V, "--tokenizer",
              "the tokenizer has " << l.tok->vocab_size() << " tokens but the model only " << V << " (" << l.ckpt.path
                                   << "): wrong tokenizer for this model");
  l.sample_vocab = l.tok->vocab_size();
  if (int64_t(l.sample_vocab) < V)
    apps::note("sampling only the tokenizer's %zu of the model's %ld ids", l.sample_vocab, long(V));
  return l;
}

// The prompt's ids after an end-of-text token: documents start after one in the training data.
std::vector<uint32_t> encode_prompt(const Flags& f, data::Tokenizer& tok) {
  std::vector<uint32_t> ids;
  try {
    if (!f.prompt.empty()) ids = tok.encode(f.prompt);
  } catch (const std::exception& e) {
    SESSA_FAIL("--prompt", "cannot encode with this tokenizer (" << e.what() << "); leave --prompt empty");
  }
  ids.insert(ids.begin(), tok.eot());
  return ids;
}

int run(const Flags& f) {
  Device device;
  try {
    device = parse_device(f.device);
  } catch (const std::exception& e) {
    SESSA_FAIL("--device", "'" << f.device << "': " << e.what());
  }
  Loaded l = load(f);
  const std::vector<uint32_t> prompt_ids = encode_prompt(f, *l.tok);

  // ---- model ----
  const auto t_load = Clock::now();
  auto model = sessa::layer::build_model(l.ckpt.config, 0, TensorOptions{DType::F32, device});
  nn::load_parameters(l.ckpt, *model);
  std::fprintf(stderr, "model: %s from %s on %s (loaded in %.3f s)\n", l.ckpt.config.summary().c_str(),
               l.ckpt.path.c_str(), device.str().c_str(), seconds_since(t_load));

  autograd::NoGradGuard no_grad;
  const int64_t max_len = int64_t(prompt_ids.size()) + f.max_tokens;
  auto states = model->new_decode_states(1, max_len);
  auto step = [&](uint32_t id) {
    Tensor ids = from_vector<int32_t>({int32_t(id)}, {1}, TensorOptions{DType::I32, device});
    std::vector<float> logits = model->step(ids, states).to_vector<float>();
    logits.resize(l.sample_vocab);
    return logits;
  };

  // ---- prompt ----
  const auto t_prompt = Clock::now();
  std::vector<float> logits;
  for (uint32_t id : prompt_ids) logits = step(id);
  const double prompt_s = seconds_since(t_prompt);
  bool reader_left = !write_out(f.prompt);

  // ---- generation ----
  nn::SamplingOptions sopt{.temperature = f.temperature, .top_k = f.top_k, .top_p = f.top_p};
  Generator gen(f.seed);
  int64_t generated = 0;
  bool stopped_at_eot = false, ends_with_newline = f.prompt.empty() || f.prompt.back() == '\n';
  const auto t_gen = Clock::now();
  while (generated < f.max_tokens && !reader_left) {
    const double u = philox::uniform(gen.seed(), gen.advance(1));
    const int32_t id = nn::sample_token(logits, sopt, u);
    ++generated;
    if (f.stop_at_eot && uint32_t(id) == l.tok->eot()) {
      stopped_at_eot = true;
      break;
    }
    const std::string text = l.tok->decode(uint32_t(id));
    reader_left = !write_out(text);
    if (!text.empty()) ends_with_newline = text.back() == '\n';
    if (generated < f.max_tokens) logits = step(uint32_t(id));
  }
  const double gen_s = seconds_since(t_gen);
  if (!ends_with_newline && !reader_left) write_out("\n");

  std::fprintf(stderr, "%lld tokens generated%s in %.3f s (%.1f tokens/s); prompt: %zu tokens in %.3f s\n",
               (long long)generated,
               stopped_at_eot ? " (stopped at end-of-text)"
               : reader_left  ? " (stopped: stdout closed)"
                              : "",
               gen_s, gen_s > 0 ? double(generated) / gen_s : 0.0, prompt_ids.size(), prompt_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app{
      "sample: generate text from a checkpoint, streaming it to stdout.\n"
      "Statistics (tokens generated, tokens/s, prompt time) go to stderr."};
  add_flags(app, f);
  return apps::run_app("sample", app, argc, argv, [&](dist::World&) { return run(f); });
}
