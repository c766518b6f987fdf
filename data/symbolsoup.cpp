// symbolsoup.cpp - the SymbolSoup generator, tokenizer, TSV reader/writer and batches
// (distribution: docs/symbolsoup.md, issue #13).
#include "data/symbolsoup.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>

#include "data/file_util.h"
#include "tensor/error.h"

namespace sessa::data::symbolsoup {

namespace {

// The fixed seeds of the two style families (any fixed values define the task; these are ours).
constexpr uint64_t kLeftFamilySeed = 0x5eed'1ef7, kRightFamilySeed = 0x5eed'7197;

const char* const kSpecials[] = {"<bos>", "<sep1>", "<sep2>", "<sep>", "<label>", "<eos>", "[MASK]"};

}  // namespace

// ---- vocabulary ------------------------------------------------------------------------

std::string token_text(int32_t token) {
  if (token == kPad) return "<pad>";
  if (token >= kFirstLetter && token < kFirstLetter + kLetters) return std::string(1, char('a' + token - kFirstLetter));
  if (token == kSpace) return " ";
  if (token == kNewline) return "\n";
  if (token >= kBos && token <= kMask) return kSpecials[token - kBos];
  if (token >= kFirstClass && token < kVocabSize) return class_name(token - kFirstClass);
  SESSA_FAIL("symbolsoup", "token id " << token << " is outside the vocabulary [0, " << int(kVocabSize) << ")");
}

std::vector<uint8_t> tokenize(const std::string& text, const std::string& where) {
  std::vector<uint8_t> ids;
  ids.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (c >= 'a' && c < 'a' + kLetters) {
      ids.push_back(uint8_t(kFirstLetter + (c - 'a'))), ++i;
    } else if (c == ' ') {
      ids.push_back(kSpace), ++i;
    } else if (c == '\n') {
      ids.push_back(kNewline), ++i;
    } else {
      int32_t found = -1;
      for (int32_t s = 0; s < int32_t(std::size(kSpecials)) && found < 0; ++s)
        if (text.compare(i, std::char_traits<char>::length(kSpecials[s]), kSpecials[s]) == 0) found = kBos + s;
      if (found < 0) {
        const std::string shown = c == '\r' ? "\\r" : c == '\t' ? "\\t" : std::string(1, c);
        SESSA_FAIL(where, "unexpected '" << shown << "' at character " << i
                                         << " of the text (expected the letters a-p, space, newline or one of "
                                            "<bos> <sep1> <sep2> <sep> <label> <eos> [MASK])");
      }
      ids.push_back(uint8_t(found));
      i += std::char_traits<char>::length(kSpecials[found - kBos]);
    }
  }
  return ids;
}

std::string class_name(int k) { return "CLASS_" + std::to_string(k); }

int parse_class(const std::string& answer, const std::string& where) {
  const std::string prefix = "CLASS_";
  const std::string digits = answer.compare(0, prefix.size(), prefix) == 0 ? answer.substr(prefix.size()) : "";
  const bool numeric = !digits.empty() && digits.size() <= 3 &&
                       std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
  const int k = numeric ? std::stoi(digits) : -1;
  SESSA_CHECK(k >= 0 && k < kClasses, where,
              "Answer '" << answer << "' is not a class (expected CLASS_0 .. CLASS_" << kClasses - 1 << ")");
  return k;
}

// ---- random draws ------------------------------------------------------------------------

int64_t Rng::uniform_int(int64_t lo, int64_t hi) {
  SESSA_CHECK(lo <= hi, "symbolsoup::Rng", "empty range [" << lo << ", " << hi << "]");
  const uint64_t range = uint64_t(hi - lo) + 1;
  if (range == 0) return int64_t(engine_());  // the full 64-bit range
  // Rejection sampling: only the largest multiple of `range` below 2^64 is used.
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % range;
  uint64_t x;
  do x = engine_();
  while (x >= limit);
  return lo + int64_t(x % range);
}

double Rng::uniform() { return double(engine_() >> 11) * 0x1.0p-53; }

size_t Rng::weighted(const double* weights, size_t n) {
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += weights[i];
  double u = uniform() * total;
  for (size_t i = 0; i < n; ++i) {
    if (u < weights[i]) return i;
    u -= weights[i];
  }
  for (size_t i = n; i-- > 0;)  // rounding left u at the end: the last positive weight
    if (weights[i] > 0) return i;
  SESSA_FAIL("symbolsoup::Rng", "all weights are zero");
}

// ---- styles ------------------------------------------------------------------------------

const std::vector<Motif>& motifs() {
  static const std::vector<Motif> all = [] {
    std::vector<Motif> m;
    for (int length = 3; length <= 5; ++length)
      for (int first = 0; first + length <= kLetters; ++first) m.push_back({first, length});
    return m;
  }();
  return all;
}

Style make_style(Rng& rng) {
  Style s;
  std::iota(s.order.begin(), s.order.end(), 0);
  for (int i = kLetters - 1; i > 0; --i) std::swap(s.order[size_t(i)], s.order[size_t(rng.uniform_int(0, i))]);
  const auto& o = s.order;
  for (int i = 0; i < kLetters; ++i) s.unigram[size_t(o[size_t(i)])] = i < 4 ? 3.0 : i < 8 ? 2.0 : 1.0;
  for (int i = 0; i < 4; ++i) {
    const int p = o[size_t(i)], p_next = o[size_t((i + 1) % 4)], sec = o[size_t(4 + i)];
    s.preferred[size_t(p)][size_t(p_next)] = true;  // p_i -> p_(i+1 mod 4)
    s.preferred[size_t(p)][size_t(p)] = true;       // p_i -> p_i
    s.preferred[size_t(sec)][size_t(sec)] = true;   // s_i -> s_i
    s.preferred[size_t(p)][size_t(sec)] = true;     // p_i -> s_i
    s.preferred[size_t(sec)][size_t(p)] = true;     // s_i -> p_i
  }
  for (int prev = 0; prev < kLetters; ++prev)
    for (int next = 0; next < kLetters; ++next)
      s.step_weight[size_t(prev)][size_t(next)] =
          s.unigram[size_t(next)] * (s.preferred[size_t(prev)][size_t(next)] ? kPreferredBoost : 1.0);
  for (const Motif& m : motifs()) {
    int primaries = 0, secondaries = 0;
    for (int letter = m.first; letter < m.first + m.length; ++letter) {
      primaries += s.unigram[size_t(letter)] == 3.0;
      secondaries += s.unigram[size_t(letter)] == 2.0;
    }
    s.motif_weight.push_back(1.0 + 0.9 * primaries + 0.5 * secondaries);
  }
  return s;
}

namespace {
std::vector<Style> style_family(uint64_t seed, int count) {
  Rng rng(seed);
  std::vector<Style> styles;
  for (int i = 0; i < count; ++i) styles.push_back(make_style(rng));
  return styles;
}
}  // namespace

const std::vector<Style>& left_styles() {
  static const std::vector<Style> styles = style_family(kLeftFamilySeed, kLeftStyles);
  return styles;
}

const std::vector<Style>& right_styles() {
  static const std::vector<Style> styles = style_family(kRightFamilySeed, kRightStyles);
  return styles;
}

std::vector<int> stylised_block(const Style& style, int64_t length, Rng& rng, BlockStats* stats) {
  BlockStats local;
  BlockStats& st = stats ? *stats : local;
  const std::vector<Motif>& all = motifs();
  std::vector<int> out;
  out.reserve(size_t(length));
  std::vector<double> fit_weight(all.size());
  while (int64_t(out.size()) < length) {
    const int64_t remaining = length - int64_t(out.size());
    if (remaining >= 3) ++st.eligible_decisions;
    if (remaining >= 3 && rng.bernoulli(kMotifProbability)) {
      for (size_t m = 0; m < all.size(); ++m) fit_weight[m] = all[m].length <= remaining ? style.motif_weight[m] : 0.0;
      const Motif& m = all[rng.weighted(fit_weight.data(), fit_weight.size())];
      for (int letter = m.first; letter < m.first + m.length; ++letter) out.push_back(letter);
      ++st.motifs, st.motif_letters += m.length;
    } else {
      const double* w = out.empty() ? style.unigram.data() : style.step_weight[size_t(out.back())].data();
      out.push_back(int(rng.weighted(w, kLetters)));
      ++st.markov_steps;
    }
  }
  for (int& letter : out)
    if (rng.bernoulli(kSubstitutionProbability)) {
      const int other = int(rng.uniform_int(0, kLetters - 2));  // uniform over the 15 other letters
      letter = other >= letter ? other + 1 : other;
      ++st.substitutions;
    }
  return out;
}

std::vector<int> noise_block(int64_t length, Rng& rng) {
  std::vector<int> out(static_cast<size_t>(length));
  for (int& letter : out) letter = int(rng.uniform_int(0, kLetters - 1));
  return out;
}

// ---- examples --------------------------------------------------------------------------------

namespace {
void append_block(std::string& text, const std::vector<int>& letters) {
  for (size_t i = 0; i < letters.size(); ++i) {
    if (i > 0) text += ' ';
    text += char('a' + letters[i]);
  }
}
}  // namespace

Example generate_example(int label, int64_t min_tokens, int64_t max_tokens, Rng& rng) {
  SESSA_CHECK(label >= 0 && label < kClasses, "symbolsoup", "class " << label << " outside [0, " << kClasses << ")");
  SESSA_CHECK(min_tokens <= max_tokens, "symbolsoup",
              "--min-tokens " << min_tokens << " exceeds --max-tokens " << max_tokens);
  auto ceil_half = [](int64_t x) { return x >= 0 ? (x + 1) / 2 : -((-x) / 2); };
  auto floor_half = [](int64_t x) { return x >= 0 ? x / 2 : -((-x + 1) / 2); };
  Layout l;
  const int64_t m_lo = std::max<int64_t>(5, ceil_half(min_tokens - 13));
  const int64_t m_hi = std::max<int64_t>(5, floor_half(max_tokens - 13));
  SESSA_CHECK(m_lo <= m_hi, "symbolsoup",
              "no example length 2M + 13 lies in [" << min_tokens << ", " << max_tokens
                                                    << "] (widen --min-tokens/--max-tokens)");
  const int64_t M = l.letters = rng.uniform_int(m_lo, m_hi);
  const int64_t n_lo = std::max<int64_t>(3, int64_t(0.3 * double(M)));
  const int64_t n_hi = std::max<int64_t>(n_lo, int64_t(0.6 * double(M)));
  const int64_t noise = std::clamp<int64_t>(rng.uniform_int(n_lo, n_hi), 3, M - 2);
  const int64_t main = M - noise;  // >= 2
  l.left = rng.uniform_int(1, main - 1);
  l.right = main - l.left;
  l.noise[0] = rng.uniform_int(1, noise - 2);
  l.noise[1] = rng.uniform_int(1, noise - l.noise[0] - 1);
  l.noise[2] = noise - l.noise[0] - l.noise[1];
  l.left_first = rng.bernoulli(0.5);

  const std::vector<int> left = stylised_block(left_styles()[size_t(label / kRightStyles)], l.left, rng);
  const std::vector<int> right = stylised_block(right_styles()[size_t(label % kRightStyles)], l.right, rng);
  const std::vector<int> n0 = noise_block(l.noise[0], rng), n1 = noise_block(l.noise[1], rng),
                         n2 = noise_block(l.noise[2], rng);
  Example e;
  e.label = label;
  e.layout = l;
  std::string& t = e.text;
  t.reserve(size_t(4 * M + 64));
  t += "<bos>\n";
  append_block(t, n0);
  t += "\n<sep1>\n";
  append_block(t, l.left_first ? left : right);
  t += "\n<sep2>\n";
  append_block(t, n1);
  t += "\n<sep1>\n";
  append_block(t, l.left_first ? right : left);
  t += "\n<sep2>\n";
  append_block(t, n2);
  t += "\n<sep> <label>";
  return e;
}

uint64_t split_seed(uint64_t seed, int split) {
  // splitmix64 of (seed, split): well-separated streams for nearby seeds.
  uint64_t z = seed * 0x9e3779b97f4a7c15ULL + uint64_t(split + 1) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::vector<Example> generate_split(int64_t n, int64_t min_tokens, int64_t max_tokens, uint64_t seed,
                                    const std::vector<int>& classes) {
  std::vector<int> use = classes;
  if (use.empty()) {
    use.resize(kClasses);
    std::iota(use.begin(), use.end(), 0);
  }
  Rng rng(seed);
  std::vector<int> labels(size_t(std::max<int64_t>(n, 0)));
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = use[i % use.size()];
  for (size_t i = labels.size(); i-- > 1;) std::swap(labels[i], labels[size_t(rng.uniform_int(0, int64_t(i)))]);
  std::vector<Example> out;
  out.reserve(labels.size());
  for (int label : labels) out.push_back(generate_example(label, min_tokens, max_tokens, rng));
  return out;
}

// ---- TSV ------------------------------------------------------------------------------------

void write_tsv(const std::string& path, const std::vector<Example>& examples) {
  AtomicFileWriter out(path);
  std::string row = "Text\tAnswer\n";
  out.write(row.data(), row.size());
  for (const Example& e : examples) {
    row.clear();
    row += '"';
    for (char c : e.text) {
      if (c == '"') row += '"';
      row += c;
    }
    row += "\"\t" + class_name(e.label) + '\n';
    out.write(row.data(), row.size());
  }
  out.commit();
}

namespace {

// Splits a TSV file into records of fields: fields may be double-quoted (holding tabs,
// newlines and "" for a quote); CRLF line ends are accepted. Tracks line numbers.
class TsvParser {
 public:
  TsvParser(std::string text, std::string path) : s_(std::move(text)), path_(std::move(path)) {
    if (s_.compare(0, 3, "\xEF\xBB\xBF") == 0) pos_ = 3;  // UTF-8 byte-order mark
  }
  bool done() const { return pos_ >= s_.size(); }
  int64_t line() const { return line_; }
  std::string where(int64_t line) const { return path_ + ":" + std::to_string(line); }

  // The next record's fields (empty for a blank line).
  std::vector<std::string> record() {
    std::vector<std::string> fields;
    if (at_line_end()) {
      skip_line_end();
      return fields;
    }
    const int64_t start = line_;
    while (true) {
      fields.push_back(field(start));
      if (pos_ < s_.size() && s_[pos_] == '\t') {
        ++pos_;
        continue;
      }
      SESSA_CHECK(done() || at_line_end(), where(line_),
                  "unexpected '" << s_[pos_] << "' after a quoted field (expected a tab or the end of the line)");
      skip_line_end();
      return fields;
    }
  }

 private:
  bool at_line_end() const {
    return pos_ >= s_.size() || s_[pos_] == '\n' || (s_[pos_] == '\r' && pos_ + 1 < s_.size() && s_[pos_ + 1] == '\n');
  }
  void skip_line_end() {
    if (pos_ < s_.size() && s_[pos_] == '\r') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '\n') ++pos_, ++line_;
  }
  std::string field(int64_t record_line) {
    std::string f;
    if (pos_ < s_.size() && s_[pos_] == '"') {
      ++pos_;
      while (true) {
        SESSA_CHECK(pos_ < s_.size(), where(record_line),
                    "the quoted Text field opened on this line is never closed (missing '\"')");
        const char c = s_[pos_++];
        if (c == '"') {
          if (pos_ < s_.size() && s_[pos_] == '"') {
            f += '"', ++pos_;
            continue;
          }
          return f;
        }
        if (c == '\r' && pos_ < s_.size() && s_[pos_] == '\n') continue;  // CRLF inside a field: LF
        if (c == '\n') ++line_;
        f += c;
      }
    }
    while (pos_ < s_.size() && s_[pos_] != '\t' && !at_line_end()) f += s_[pos_++];
    return f;
  }

  std::string s_, path_;
  size_t pos_ = 0;
  int64_t line_ = 1;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SESSA_CHECK(in, path, "cannot open the TSV file");
  std::ostringstream ss;
  ss << in.rdbuf();
  SESSA_CHECK(!in.bad(), path, "read error");
  return ss.str();
}

}  // namespace

std::vector<Example> read_tsv(const std::string& path) {
  TsvParser p(read_file(path), path);
  SESSA_CHECK(!p.done(), path, "the file is empty (expected the header Text<TAB>Answer)");
  const std::vector<std::string> header = p.record();
  SESSA_CHECK(header.size() == 2 && header[0] == "Text" && header[1] == "Answer", p.where(1),
              "expected the header Text<TAB>Answer, got " << header.size() << " field(s) starting '"
                                                          << (header.empty() ? "" : header[0].substr(0, 40)) << "'");
  std::vector<Example> out;
  while (!p.done()) {
    const int64_t line = p.line();
    std::vector<std::string> fields = p.record();
    if (fields.empty()) continue;  // blank line
    const std::string where = p.where(line);
    SESSA_CHECK(fields.size() == 2, where, "expected 2 tab-separated fields (Text, Answer), got " << fields.size());
    Example e;
    e.label = parse_class(fields[1], where);
    const std::vector<uint8_t> ids = tokenize(fields[0], where);
    SESSA_CHECK(!ids.empty() && ids.back() == kLabel, where,
                "the Text must end with <label> (the position where the class is predicted)");
    e.text = std::move(fields[0]);
    out.push_back(std::move(e));
  }
  SESSA_CHECK(!out.empty(), path, "no examples after the header");
  return out;
}

// ---- batches ------------------------------------------------------------------------------------

std::vector<TokenizedExample> tokenize_all(const std::vector<Example>& examples) {
  std::vector<TokenizedExample> out(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    out[i].ids = tokenize(examples[i].text, "example " + std::to_string(i));
    out[i].label = examples[i].label;
    SESSA_CHECK(!out[i].ids.empty() && out[i].ids.back() == kLabel, "symbolsoup",
                "example " << i << " does not end with <label>");
  }
  return out;
}

Batch label_batch(const std::vector<TokenizedExample>& examples, const std::vector<int64_t>& indices) {
  Batch b;
  b.B = int64_t(indices.size());
  for (int64_t i : indices) b.T = std::max<int64_t>(b.T, int64_t(examples.at(size_t(i)).ids.size()));
  b.inputs.assign(size_t(b.B * b.T), kPad);
  b.targets.assign(size_t(b.B * b.T), -1);
  for (int64_t r = 0; r < b.B; ++r) {
    const TokenizedExample& e = examples[size_t(indices[size_t(r)])];
    std::copy(e.ids.begin(), e.ids.end(), b.inputs.begin() + r * b.T);
    b.targets[size_t(r * b.T + int64_t(e.ids.size()) - 1)] = class_token(e.label);
  }
  return b;
}

std::vector<int32_t> next_token_targets(const std::vector<int32_t>& inputs, int64_t B, int64_t T) {
  SESSA_CHECK(B >= 0 && T >= 0 && int64_t(inputs.size()) == B * T, "next_token_targets",
              "inputs hold " << inputs.size() << " tokens, expected B * T = " << B << " * " << T);
  std::vector<int32_t> targets(inputs.size(), -1);
  for (int64_t r = 0; r < B; ++r) {
    const int32_t* row = inputs.data() + r * T;
    const int64_t label = std::find(row, row + T, int32_t(kLabel)) - row;
    SESSA_CHECK(label < T, "next_token_targets", "row " << r << " of the batch has no <label> token");
    std::copy(row + 1, row + label + 1, targets.begin() + r * T);  // t < label predicts row[t + 1]
  }
  return targets;
}

}  // namespace sessa::data::symbolsoup
