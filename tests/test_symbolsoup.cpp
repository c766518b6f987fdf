// SymbolSoup (data/symbolsoup.h, apps/common/label_classifier.h): the generator's
// statistics match the distribution, TSV files round-trip and malformed ones
// fail naming file and line, batches score only <label>, the optional next-token targets
// are exactly the next real tokens, and a tiny model learns an easy variant well above chance.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "apps/common/label_classifier.h"
#include "data/symbolsoup.h"
#include "nn/functional.h"
#include "nn/trainer.h"
#include "sessa/model.h"
#include "tests/helpers.h"

using namespace sessa;
namespace soup = sessa::data::symbolsoup;
using sessa::test::check_error;

namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() / ("sessa_soup_" + std::to_string(getpid()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string file(const std::string& name, const std::string& content = "") const {
    const std::string p = (path / name).string();
    if (!content.empty()) std::ofstream(p, std::ios::binary) << content;
    return p;
  }
};

// The letters (0..15) of the text between the k-th "<sep1>\n" and the following "\n<sep2>".
std::vector<int> stylised_letters(const std::string& text, int k) {
  size_t at = 0;
  for (int i = 0; i <= k; ++i) at = text.find("<sep1>\n", at) + 7;
  const size_t end = text.find("\n<sep2>", at);
  std::vector<int> out;
  for (size_t i = at; i < end; ++i)
    if (text[i] != ' ') out.push_back(text[i] - 'a');
  return out;
}

// Letters of the example's left-style block.
std::vector<int> left_block(const soup::Example& e) { return stylised_letters(e.text, e.layout.left_first ? 0 : 1); }

}  // namespace

TEST_CASE("an example has 2M + 13 tokens within the bounds, and its layout adds up") {
  soup::Rng rng(7);
  for (auto bounds : std::vector<std::pair<int64_t, int64_t>>{{400, 600}, {1800, 2048}, {20, 40}, {1, 2}}) {
    const int64_t lo = bounds.first, hi = bounds.second;  // not a structured binding: clang 14 cannot CAPTURE one
    CAPTURE(lo);
    for (int i = 0; i < 200; ++i) {
      const soup::Example e = soup::generate_example(i % soup::kClasses, lo, hi, rng);
      const soup::Layout& l = e.layout;
      const auto ids = soup::tokenize(e.text);
      REQUIRE(int64_t(ids.size()) == 2 * l.letters + 13);
      if (lo >= 23) CHECK((int64_t(ids.size()) >= lo && int64_t(ids.size()) <= hi));
      CHECK(l.letters >= 5);
      const int64_t noise = l.noise[0] + l.noise[1] + l.noise[2];
      CHECK((noise >= 3 && noise <= l.letters - 2));
      CHECK((l.noise[0] >= 1 && l.noise[1] >= 1 && l.noise[2] >= 1 && l.left >= 1 && l.right >= 1));
      CHECK(noise + l.left + l.right == l.letters);
      CHECK(int64_t(left_block(e).size()) == l.left);
      CHECK(e.text.compare(0, 6, "<bos>\n") == 0);
      CHECK(e.text.size() >= 14);
      CHECK(e.text.substr(e.text.size() - 14) == "\n<sep> <label>");
    }
  }
}

TEST_CASE("splits are balanced over the classes, shuffled, and deterministic in the seed") {
  const auto a = soup::generate_split(400, 60, 80, 11), b = soup::generate_split(400, 60, 80, 11),
             c = soup::generate_split(400, 60, 80, 12);
  std::map<int, int> count;
  int in_cycle = 0, same_as_c = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ++count[a[i].label];
    in_cycle += a[i].label == int(i % 20);
    CHECK(a[i].text == b[i].text);
    same_as_c += a[i].text == c[i].text;
  }
  CHECK(count.size() == 20);
  for (auto [k, n] : count) CHECK(n == 20);
  CHECK(in_cycle < 100);  // shuffled, not label = i mod 20
  CHECK(same_as_c == 0);
  CHECK(soup::split_seed(1, 0) != soup::split_seed(1, 1));
  CHECK(soup::split_seed(1, 0) != soup::split_seed(2, 0));
  // A subset of classes, still balanced.
  std::map<int, int> two;
  for (const auto& e : soup::generate_split(10, 60, 80, 3, {0, 19})) ++two[e.label];
  CHECK(two == std::map<int, int>{{0, 5}, {19, 5}});
}

TEST_CASE("styles: 4 primaries (3), 4 secondaries (2), 8 others (1); preferred bigrams; motif weights") {
  CHECK(soup::motifs().size() == 39);
  CHECK(soup::left_styles().size() == 4);
  CHECK(soup::right_styles().size() == 5);
  CHECK(soup::left_styles()[0].order != soup::left_styles()[1].order);
  CHECK(soup::left_styles()[0].order != soup::right_styles()[0].order);
  for (const auto& s : soup::left_styles()) {
    int threes = 0, twos = 0, ones = 0, preferred = 0;
    for (double w : s.unigram) threes += w == 3, twos += w == 2, ones += w == 1;
    CHECK((threes == 4 && twos == 4 && ones == 8));
    for (const auto& row : s.preferred)
      for (bool p : row) preferred += p;
    CHECK(preferred == 4 + 4 + 4 + 8);  // p->p+1, p->p, s->s, p<->s
    const int p0 = s.order[0], p1 = s.order[1], s0 = s.order[4];
    CHECK((s.preferred[p0][p1] && s.preferred[p0][p0] && s.preferred[s0][s0] && s.preferred[p0][s0] &&
           s.preferred[s0][p0] && !s.preferred[p1][p0]));
    CHECK(s.step_weight[p0][p1] == 12.0);
    for (size_t m = 0; m < soup::motifs().size(); ++m) {
      double want = 1;
      for (int l = soup::motifs()[m].first; l < soup::motifs()[m].first + soup::motifs()[m].length; ++l)
        want += s.unigram[l] == 3 ? 0.9 : s.unigram[l] == 2 ? 0.5 : 0;
      CHECK(s.motif_weight[m] == doctest::Approx(want));
    }
  }
}

TEST_CASE("per-style letter frequencies and bigram preferences are visible in generated examples") {
  // 2000 examples of classes 0, 5, 10, 15 (left styles 0..3): the left blocks of each.
  const auto examples = soup::generate_split(2000, 400, 600, 5, {0, 5, 10, 15});
  for (int style = 0; style < soup::kLeftStyles; ++style) {
    CAPTURE(style);
    const soup::Style& s = soup::left_styles()[size_t(style)];
    std::array<double, 16> freq{};
    std::array<std::array<double, 16>, 16> pairs{};
    double letters = 0;
    for (const auto& e : examples) {
      if (e.label / 5 != style) continue;
      const auto block = left_block(e);
      for (size_t i = 0; i < block.size(); ++i) {
        freq[size_t(block[i])] += 1, letters += 1;
        if (i > 0) pairs[size_t(block[i - 1])][size_t(block[i])] += 1;
      }
    }
    REQUIRE(letters > 20000);
    double primary = 0, secondary = 0, other = 0;
    for (int l = 0; l < 16; ++l) (s.unigram[l] == 3 ? primary : s.unigram[l] == 2 ? secondary : other) += freq[l];
    primary /= 4 * letters, secondary /= 4 * letters, other /= 8 * letters;
    MESSAGE("style " << style << ": primary " << primary << " secondary " << secondary << " other " << other);
    // Unigram weights 3 : 2 : 1, diluted by motifs (contiguous runs of the alphabet, about 60% of the
    // letters) and substitutions; noise would give every letter 1/16.
    CHECK(primary > 1.25 / 16);
    CHECK(other < 0.85 / 16);
    CHECK(primary > secondary);
    CHECK(secondary > 1.15 * other);
    // Bigram lift count(x, y) / expected under independence, over pairs that are not a motif's
    // continuation (y = x + 1): the style's preferred pairs against all other pairs.
    double lift_pref = 0, lift_plain = 0, n_pref = 0, n_plain = 0, bigrams = 0;
    for (const auto& row : pairs)
      for (double c : row) bigrams += c;
    for (int x = 0; x < 16; ++x)
      for (int y = 0; y < 16; ++y) {
        if (y == x + 1) continue;
        const double lift = pairs[x][y] * letters * letters / (bigrams * freq[x] * freq[y]);
        (s.preferred[x][y] ? lift_pref : lift_plain) += lift;
        (s.preferred[x][y] ? n_pref : n_plain) += 1;
      }
    lift_pref /= n_pref, lift_plain /= n_plain;
    MESSAGE("style " << style << ": bigram lift preferred " << lift_pref << ", others " << lift_plain);
    CHECK(lift_pref > 2 * lift_plain);
  }
  // Noise blocks are uniform: the first noise block of every example.
  std::array<double, 16> noise{};
  double n = 0;
  for (const auto& e : examples) {
    const size_t at = 6, end = e.text.find("\n<sep1>");
    for (size_t i = at; i < end; i += 2) noise[size_t(e.text[i] - 'a')] += 1, n += 1;
  }
  for (double c : noise) CHECK(c / n == doctest::Approx(1.0 / 16).epsilon(0.15));
}

TEST_CASE("motifs are inserted at 30% of the decisions and letters substituted at 3%") {
  soup::Rng rng(3);
  soup::BlockStats st;
  int64_t letters = 0;
  for (int i = 0; i < 4000; ++i) {
    const auto block = soup::stylised_block(soup::right_styles()[size_t(i % 5)], 50, rng, &st);
    REQUIRE(block.size() == 50);
    letters += 50;
  }
  const double motif_rate = double(st.motifs) / double(st.eligible_decisions);
  MESSAGE("motif rate " << motif_rate << ", substitution rate " << double(st.substitutions) / double(letters));
  CHECK(motif_rate == doctest::Approx(0.3).epsilon(0.03));
  CHECK(double(st.substitutions) / double(letters) == doctest::Approx(0.03).epsilon(0.08));
  CHECK(st.motif_letters + st.markov_steps == letters);
  // Visible in the letters: runs of 3 consecutive alphabet letters are far more common
  // in stylised blocks than in uniform noise (where the chance is 1/256 per position).
  auto runs_of_three = [](const std::vector<int>& b) {
    int64_t r = 0;
    for (size_t i = 2; i < b.size(); ++i) r += b[i - 1] == b[i - 2] + 1 && b[i] == b[i - 1] + 1;
    return r;
  };
  int64_t stylised_runs = 0, noise_runs = 0;
  for (int i = 0; i < 1000; ++i) {
    stylised_runs += runs_of_three(soup::stylised_block(soup::left_styles()[size_t(i % 4)], 50, rng));
    noise_runs += runs_of_three(soup::noise_block(50, rng));
  }
  MESSAGE("runs of three: stylised " << stylised_runs << ", noise " << noise_runs);
  CHECK(stylised_runs > 10 * noise_runs);
}

TEST_CASE("tokenizer: every character and special word is one token; unknown characters are errors") {
  const auto ids = soup::tokenize("<bos>\na b\n<sep1>\n<sep2>\n<sep> <label><eos>[MASK]p");
  const std::vector<uint8_t> want{soup::kBos,
                                  soup::kNewline,
                                  1,
                                  soup::kSpace,
                                  2,
                                  soup::kNewline,
                                  soup::kSep1,
                                  soup::kNewline,
                                  soup::kSep2,
                                  soup::kNewline,
                                  soup::kSep,
                                  soup::kSpace,
                                  soup::kLabel,
                                  soup::kEos,
                                  soup::kMask,
                                  16};
  CHECK(ids == want);
  std::string round;
  for (uint8_t id : ids) round += soup::token_text(id);
  CHECK(round == "<bos>\na b\n<sep1>\n<sep2>\n<sep> <label><eos>[MASK]p");
  CHECK(soup::token_text(soup::class_token(19)) == "CLASS_19");
  CHECK(soup::kVocabSize == 46);
  check_error([] { soup::tokenize("a q", "x.tsv:3"); }, {"x.tsv:3", "'q'", "character 2"});
  check_error([] { soup::tokenize("<sep3>", "x.tsv:3"); }, {"x.tsv:3", "'<'"});
  check_error([] { soup::parse_class("CLASS_20", "f:2"); }, {"f:2", "CLASS_20", "CLASS_19"});
  check_error([] { soup::parse_class("cat", "f:2"); }, {"f:2", "'cat'"});
  CHECK(soup::parse_class("CLASS_7", "f") == 7);
}

TEST_CASE("TSV files round-trip, and other writers' variants are read") {
  TempDir dir;
  const auto examples = soup::generate_split(60, 30, 90, 9);
  const std::string path = dir.file("split.tsv");
  soup::write_tsv(path, examples);
  std::ifstream in(path);
  std::string header;
  std::getline(in, header);
  CHECK(header == "Text\tAnswer");
  const auto back = soup::read_tsv(path);
  REQUIRE(back.size() == examples.size());
  for (size_t i = 0; i < back.size(); ++i) {
    CHECK(back[i].text == examples[i].text);
    CHECK(back[i].label == examples[i].label);
  }
  // CRLF line ends (also inside the quoted field), an unquoted one-line Text, a blank line, no final newline.
  const std::string other = dir.file(
      "other.tsv", "Text\tAnswer\r\n\"<bos>\r\na b\r\n<sep> <label>\"\tCLASS_3\r\n\r\n<bos> c <sep> <label>\tCLASS_12");
  const auto read = soup::read_tsv(other);
  REQUIRE(read.size() == 2);
  CHECK(read[0].text == "<bos>\na b\n<sep> <label>");
  CHECK(read[0].label == 3);
  CHECK(read[1].text == "<bos> c <sep> <label>");
  CHECK(read[1].label == 12);
}

TEST_CASE("malformed TSV rows fail naming the file and the line") {
  TempDir dir;
  const std::string good = "\"<bos>\na\n<sep> <label>\"\tCLASS_1\n";
  auto expect = [&](const std::string& name, const std::string& content, std::vector<std::string> fragments) {
    CAPTURE(name);
    const std::string path = dir.file(name, content);
    fragments.insert(fragments.begin(), path);
    check_error([&] { soup::read_tsv(path); }, fragments);
  };
  check_error([&] { soup::read_tsv((dir.path / "missing.tsv").string()); }, {"missing.tsv", "cannot open"});
  expect("header.tsv", "text\tlabel\n" + good, {":1", "header Text<TAB>Answer"});
  expect("fields.tsv", "Text\tAnswer\n" + good + "\"<bos> <label>\"\tCLASS_1\textra\n", {":5", "2 tab-separated"});
  expect("class.tsv", "Text\tAnswer\n" + good + good + "\"a <label>\"\tCLASS_20\n", {":8", "CLASS_20"});
  expect("char.tsv", "Text\tAnswer\n" + good + "\"<bos>\nx <label>\"\tCLASS_0\n", {":5", "'x'"});
  expect("label.tsv", "Text\tAnswer\n\"<bos>\na b\"\tCLASS_0\n", {":2", "end with <label>"});
  expect("quote.tsv", "Text\tAnswer\n" + good + "\"<bos>\na <label>\tCLASS_0\n", {":5", "never closed"});
  expect("after.tsv", "Text\tAnswer\n\"a <label>\"x\tCLASS_0\n", {":2", "after a quoted field"});
  expect("empty.tsv", "Text\tAnswer\n", {"no examples"});
}

TEST_CASE("label batches pad on the right and score only the <label> position") {
  std::vector<soup::TokenizedExample> ex(2);
  ex[0].ids = soup::tokenize("<bos> a <label>"), ex[0].label = 4;
  ex[1].ids = soup::tokenize("<bos> a b c <label>"), ex[1].label = 17;
  const data::Batch b = soup::label_batch(ex, {1, 0});
  REQUIRE((b.B == 2 && b.T == 9));
  CHECK(b.inputs[8] == soup::kLabel);
  CHECK(b.targets[8] == soup::class_token(17));
  CHECK(b.inputs[9 + 4] == soup::kLabel);
  CHECK(b.targets[9 + 4] == soup::class_token(4));
  for (int t = 9 + 5; t < 18; ++t) CHECK(b.inputs[size_t(t)] == soup::kPad);
  int scored = 0;
  for (int32_t t : b.targets) scored += t != -1;
  CHECK(scored == 2);
}

TEST_CASE("next-token targets: the next token before <label>, ignored at <label>, after it, and in padding") {
  std::vector<soup::TokenizedExample> ex(2);
  ex[0].ids = soup::tokenize("<bos> a <label>"), ex[0].label = 4;
  ex[1].ids = soup::tokenize("<bos> a b c <label>"), ex[1].label = 17;
  const data::Batch b = soup::label_batch(ex, {1, 0});
  REQUIRE((b.B == 2 && b.T == 9));
  const std::vector<int32_t> next = soup::next_token_targets(b.inputs, b.B, b.T);
  REQUIRE(next.size() == b.inputs.size());
  const int64_t length[2] = {9, 5};  // row 0 is example 1 (no padding), row 1 example 0
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t t = 0; t < b.T; ++t) {
      const size_t i = size_t(r * b.T + t);
      CAPTURE(r);
      CAPTURE(t);
      CHECK(next[i] == (t + 1 < length[r] ? b.inputs[i + 1] : -1));
    }
  CHECK(next[7] == soup::kLabel);  // the token before <label> predicts it
  // Nothing after a row's first <label> is scored, even if tokens other than padding follow.
  std::vector<int32_t> odd = {soup::kBos, soup::kLabel, soup::kFirstLetter, soup::kLabel};
  CHECK(soup::next_token_targets(odd, 1, 4) == std::vector<int32_t>{soup::kLabel, -1, -1, -1});
  check_error([] { soup::next_token_targets({soup::kBos, soup::kPad}, 1, 2); }, {"next_token_targets", "no <label>"});
  check_error([] { soup::next_token_targets({soup::kLabel}, 1, 2); }, {"next_token_targets", "B * T"});
}

TEST_CASE("label_loss: weight 0 is the label loss bit for bit; weight W adds W x the next-token loss") {
  nn::ModelConfig c = nn::preset("transformer", "tiny", soup::kVocabSize);
  c.d_model = 16, c.n_heads = 2, c.n_layers = 1;
  auto model = layer::build_model(c, 3);
  std::vector<soup::TokenizedExample> ex(2);
  ex[0].ids = soup::tokenize("<bos>\na b\n<sep> <label>"), ex[0].label = 4;
  ex[1].ids = soup::tokenize("<bos>\nc d e f\n<sep> <label>"), ex[1].label = 17;
  const data::Batch host = soup::label_batch(ex, {0, 1});
  const nn::TokenBatch b = nn::to_device(host, model->device());
  autograd::NoGradGuard no_grad;
  const Tensor logits = model->forward(b.ids);
  const double label = nn::cross_entropy(logits, b.targets, -1).item();  // the loss before --lm-weight existed
  const double lm =
      nn::cross_entropy(
          logits, from_vector(soup::next_token_targets(host.inputs, host.B, host.T), {host.B, host.T}, {DType::I32}),
          -1)
          .item();
  CHECK(apps::label_loss(nullptr)(*model, b).item() == label);  // bitwise
  CHECK(apps::label_loss(nullptr, {}, 0.0)(*model, b).item() == label);
  apps::LossTerms terms;
  const double total = apps::label_loss(nullptr, {}, 0.25, &terms)(*model, b).item();
  CHECK(total == doctest::Approx(label + 0.25 * lm).epsilon(1e-6));
  CHECK(terms.batches == 1);
  CHECK(terms.label == label);
  CHECK(terms.lm == doctest::Approx(lm).epsilon(1e-6));
  CHECK(lm > 1.0);  // an untrained model: about ln 46 per token, not 0 (the targets are real tokens)
  check_error([] { apps::label_loss(nullptr, {}, -1.0); }, {"label_loss", "lm_weight", "-1"});
  check_error([] { apps::label_loss(nullptr, {}, std::nan("")); }, {"label_loss", "lm_weight"});
}

TEST_CASE("label hits take the argmax over the class tokens only") {
  // Rows: (B 1, T 2, V 46); position 1 is scored with target CLASS_2.
  std::vector<float> logits(2 * soup::kVocabSize, 0.f);
  logits[soup::kVocabSize + 0] = 9.f;                             // a non-class token wins overall...
  logits[soup::kVocabSize + size_t(soup::class_token(2))] = 1.f;  // ...but CLASS_2 wins among classes
  const Tensor l = from_vector(logits, {1, 2, soup::kVocabSize});
  const Tensor t = from_vector(std::vector<int32_t>{-1, soup::class_token(2)}, {1, 2}, {DType::I32});
  apps::LabelHits hits;
  apps::count_label_hits(l, t, {}, hits);
  CHECK((hits.correct == 1 && hits.total == 1));
  apps::count_label_hits(l, from_vector(std::vector<int32_t>{-1, soup::class_token(3)}, {1, 2}, {DType::I32}), {},
                         hits);
  CHECK((hits.correct == 1 && hits.total == 2));
}

TEST_CASE("a tiny model learns an easy SymbolSoup variant well above chance") {
  // The easy variant: one stylised block of 40 letters, no noise, left style 0 or 3
  // (classes 0 and 15): the class is the block's style. Chance is 0.5. Models sit on a
  // plateau at ln 2 before they find the letter statistics (docs/symbolsoup.md), so the
  // learning rate is high. Measured when written: test accuracy 0.90, loss 0.21.
  auto make = [](int64_t n, uint64_t seed) {
    soup::Rng rng(seed);
    std::vector<soup::Example> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      soup::Example& e = out[size_t(i)];
      e.label = i % 2 == 0 ? 0 : 15;
      e.text = "<bos>\n<sep1>\n";
      const auto block = soup::stylised_block(soup::left_styles()[size_t(e.label / 5)], 40, rng);
      for (size_t j = 0; j < block.size(); ++j) e.text += std::string(j ? " " : "") + char('a' + block[j]);
      e.text += "\n<sep2>\n<sep> <label>";
    }
    return soup::tokenize_all(out);
  };
  const auto train_set = make(2000, 21), test_set = make(200, 22);
  nn::ModelConfig c = nn::preset("transformer", "tiny", soup::kVocabSize);
  c.d_model = 32, c.n_heads = 2, c.n_layers = 1;
  auto model = layer::build_model(c, 1);
  apps::LabelHits hits;
  nn::Trainer trainer(model, {.adamw = {.lr = 5e-3, .weight_decay = 0.0}, .loss = apps::label_loss(&hits)});
  soup::Rng rng(5);
  const int64_t steps = 300, batch = 32;
  for (int64_t step = 0; step < steps; ++step) {
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < batch; ++i) rows.push_back(rng.uniform_int(0, int64_t(train_set.size()) - 1));
    trainer.step({nn::to_device(soup::label_batch(train_set, rows), model->device())},
                 nn::cosine_lr(step, 10, steps, 5e-3));
  }
  CHECK(hits.total == steps * batch);  // the loss hook saw one scored position per row
  const apps::LabelEval eval = apps::evaluate_labels(*model, test_set, 50);
  MESSAGE("test accuracy " << eval.hits.accuracy() << ", loss " << eval.loss);
  CHECK(eval.hits.total == 200);
  CHECK(eval.loss < 0.5);  // ln 2 = 0.69 is the prior
  CHECK(eval.hits.accuracy() > 0.75);
}
