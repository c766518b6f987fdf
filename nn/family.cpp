#include "nn/family.h"

#include "tensor/error.h"

namespace sessa::nn {

const std::vector<FamilyInfo>& families() {
  static const std::vector<FamilyInfo> table{
      {Family::sessa, "sessa", "attention inside a recurrent feedback path (docs/sessa.md)", 2},
      {Family::transformer, "transformer", "pre-LayerNorm GPT block: attention, then a 4D GELU MLP", 1},
      {Family::mamba, "mamba", "selective state-space model (Gu & Dao 2023), no attention", 0},
  };
  return table;
}

const FamilyInfo& family_info(Family family) {
  for (const auto& f : families())
    if (f.id == family) return f;
  SESSA_FAIL("model family", "no registry row for family value " << int(family));
}

Family family_from_name(const std::string& name) {
  for (const auto& f : families())
    if (name == f.name) return f.id;
  SESSA_FAIL("model family", "unknown model family '" << name << "' (expected one of: " << family_list() << ")");
}

std::vector<std::string> family_names() {
  std::vector<std::string> names;
  for (const auto& f : families()) names.push_back(f.name);
  return names;
}

std::string family_list() {
  std::string out;
  for (const auto& f : families()) out += (out.empty() ? "" : ", ") + std::string(f.name);
  return out;
}

std::string family_help() {
  std::string out;
  for (const auto& f : families()) out += std::string(out.empty() ? "" : "\n") + f.name + ": " + f.description;
  return out;
}

}  // namespace sessa::nn
