// symbolsoup.h - SymbolSoup, the Sessa paper's long-context classification task
// (issue #13, docs/symbolsoup.md): its generator, its vocabulary and tokenizer,
// its TSV files, and padded batches that score only the label position.
//
// An example is two stylised blocks of the letters a..p (a left style and a right
// style) hidden among three noise blocks; the class k = 5 * left + right names
// both styles. Conventions: letters are 0..15 ('a'..'p'); everything is seeded
// from std::mt19937_64 with our own integer/real draws, so the same seed gives the
// same files on every platform. Malformed input throws sessa::Error naming the
// file and line.
#pragma once
#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "data/loader.h"

namespace sessa::data::symbolsoup {

constexpr int kLetters = 16, kLeftStyles = 4, kRightStyles = 5, kClasses = kLeftStyles * kRightStyles;
constexpr double kMotifProbability = 0.3, kSubstitutionProbability = 0.03, kPreferredBoost = 4.0;

// ---- vocabulary: one token per character or special word ----------------------
// 0 <pad>, 1..16 'a'..'p', 17 ' ', 18 '\n', 19 <bos>, 20 <sep1>, 21 <sep2>, 22 <sep>,
// 23 <label>, 24 <eos>, 25 [MASK], 26..45 CLASS_0..CLASS_19.
enum Token : int32_t {
  kPad = 0,
  kFirstLetter = 1,
  kSpace = 17,
  kNewline = 18,
  kBos = 19,
  kSep1 = 20,
  kSep2 = 21,
  kSep = 22,
  kLabel = 23,
  kEos = 24,
  kMask = 25,
  kFirstClass = 26,
  kVocabSize = kFirstClass + kClasses,
};
inline int32_t class_token(int k) { return kFirstClass + k; }
std::string token_text(int32_t token);  // "a", " ", "<sep1>", "CLASS_3", ...
// Text -> tokens; throws naming `where` (e.g. "train.tsv:12") and the offending character.
std::vector<uint8_t> tokenize(const std::string& text, const std::string& where = "text");
std::string class_name(int k);                                         // "CLASS_k"
int parse_class(const std::string& answer, const std::string& where);  // "CLASS_k" -> k, or throws

// ---- random draws (platform independent) -----------------------------------------
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  int64_t uniform_int(int64_t lo, int64_t hi);  // inclusive; lo <= hi
  double uniform();                             // [0, 1), 53 bits
  bool bernoulli(double p) { return uniform() < p; }
  size_t weighted(const double* weights, size_t n);  // index drawn with probability weights[i] / sum
 private:
  std::mt19937_64 engine_;
};

// ---- styles ------------------------------------------------------------------------
// The 39 motifs: every contiguous substring of length 3, 4 or 5 of "abcdefghijklmnop".
struct Motif {
  int first, length;
};
const std::vector<Motif>& motifs();

struct Style {
  std::array<int, kLetters> order{};       // shuffled letters: [0, 4) primaries, [4, 8) secondaries
  std::array<double, kLetters> unigram{};  // 3 primary, 2 secondary, 1 otherwise
  std::array<std::array<bool, kLetters>, kLetters> preferred{};  // preferred[prev][next]
  std::vector<double> motif_weight;                              // per motifs(): 1 + 0.9 #primaries + 0.5 #secondaries
  std::array<std::array<double, kLetters>, kLetters> step_weight{};  // unigram[x] * (4 if preferred)
};
Style make_style(Rng& rng);
// The fixed style families (left: 4 styles, right: 5), each drawn from its own fixed seed:
// the same for every --seed, so every split and every run sees one task.
const std::vector<Style>& left_styles();
const std::vector<Style>& right_styles();

// What a stylised block contained (for tests): motif insertions and Markov steps
// (with the decisions at which a motif could have been inserted), substitutions.
struct BlockStats {
  int64_t motifs = 0, motif_letters = 0, markov_steps = 0, eligible_decisions = 0, substitutions = 0;
};
// L letters: motifs with probability 0.3 while >= 3 letters remain, else Markov steps;
// then each letter becomes a different uniform letter with probability 0.03.
std::vector<int> stylised_block(const Style& style, int64_t length, Rng& rng, BlockStats* stats = nullptr);
std::vector<int> noise_block(int64_t length, Rng& rng);

// ---- examples -------------------------------------------------------------------------
struct Layout {
  int64_t letters = 0;             // M: letters in all five blocks
  std::array<int64_t, 3> noise{};  // n0, n1, n2
  int64_t left = 0, right = 0;     // stylised block lengths
  bool left_first = true;
};
struct Example {
  std::string
      text;  // "<bos>\n" n0 "\n<sep1>\n" first "\n<sep2>\n" n1 "\n<sep1>\n" second "\n<sep2>\n" n2 "\n<sep> <label>"
  int label = 0;    // class k: left style k / 5, right style k % 5
  Layout layout{};  // how it was generated (not stored in files)
};
// One example of class `label` with 2M + 13 tokens in [min_tokens, max_tokens] (M >= 5).
Example generate_example(int label, int64_t min_tokens, int64_t max_tokens, Rng& rng);
// n examples balanced over `classes` (label i mod |classes| before a shuffle).
std::vector<Example> generate_split(int64_t n, int64_t min_tokens, int64_t max_tokens, uint64_t seed,
                                    const std::vector<int>& classes = {});
// The seed of split 0 (train), 1 (val), 2 (test) for a run seed: disjoint streams.
uint64_t split_seed(uint64_t seed, int split);

// ---- TSV files: header "Text<TAB>Answer"; Text double-quoted ("" inside), Answer CLASS_k ----
void write_tsv(const std::string& path, const std::vector<Example>& examples);  // atomic
// Reads our files or anyone's in this format (quoted or unquoted Text, CRLF or LF).
// Every row is checked: two fields, Text tokenizes and ends with <label>, Answer is
// CLASS_0..CLASS_19; errors name the file and the row's first line.
std::vector<Example> read_tsv(const std::string& path);

// ---- batches -------------------------------------------------------------------------
struct TokenizedExample {
  std::vector<uint8_t> ids;  // ends with <label>
  int label = 0;
};
std::vector<TokenizedExample> tokenize_all(const std::vector<Example>& examples);
// Rows `indices`, right-padded with <pad> to the longest: targets are -1 (ignored)
// everywhere but at each row's <label>, whose target is its class token. Attention and
// scans are causal, so the padding after <label> never reaches the scored position.
Batch label_batch(const std::vector<TokenizedExample>& examples, const std::vector<int64_t>& indices);
// The full-sequence language-model targets of a batch's inputs (B, T) (train --lm-weight):
// in each row, position t before the first <label> predicts the next token inputs[t + 1];
// the <label> position itself (scored by the class target), everything after it (padding)
// and a row without <label> (an error) are -1. Tokens up to <label> are all real: padding
// only follows it.
std::vector<int32_t> next_token_targets(const std::vector<int32_t>& inputs, int64_t B, int64_t T);

}  // namespace sessa::data::symbolsoup
