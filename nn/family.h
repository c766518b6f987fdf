// The registry of model families: one row per family with its name (as in flags, in
// checkpoints' config JSON and in docs), a one-line description and the traits that
// configs and FLOP counts need. Everything that lists or tells families apart reads
// this table or switches on `Family`; the block each family builds is in
// sessa/model.cpp (build_block), the one place that sees nn/ and sessa/ layers.
//
// Adding a family: add its enum value and its row in nn/family.cpp, its cases in
// sessa::layer::build_block and block_parameter_count (-Wswitch flags a missing one; the
// block's static count_parameters goes beside its constructor, and tests/test_lm.cpp checks
// it against the built block), and its row in docs/models.md.
#pragma once
#include <string>
#include <vector>

namespace sessa::nn {

enum class Family { sessa, transformer, mamba };

struct FamilyInfo {
  Family id;
  const char* name;
  const char* description;
  // Causal softmax-attention passes over the sequence per layer (FLOP count):
  // Sessa 2 (forward branch, feedback scores and solve), Transformer 1, Mamba 0.
  // A family with none has no attention heads (n_heads and n_kv_heads are ignored).
  int attention_passes;
};

const std::vector<FamilyInfo>& families();  // in the order of the enum
const FamilyInfo& family_info(Family family);
// The family called `name`; an unknown name throws sessa::Error listing the valid ones.
Family family_from_name(const std::string& name);
std::vector<std::string> family_names();  // for flag choices
std::string family_list();                // "sessa, transformer, mamba"
std::string family_help();                // "sessa: ...\ntransformer: ...\n..." for --help

}  // namespace sessa::nn
