// data/json_fields.h - JSON through nlohmann-json (objects keep insertion order),
// with every failure turned into a sessa::Error that names where the JSON came
// from and which key is at fault: parse_json() for text, dump_json() for writing,
// JsonFields for typed, range-checked reads of an object's members.
//
//   JsonFields training(json, "checkpoint runs/x/latest.safetensors: metadata 'training'");
//   training.integer("step", 0);  // "... metadata 'training' key 'step' missing (expected an integer)"
//
// No nlohmann exception leaves these functions.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace sessa::data {

using Json = nlohmann::ordered_json;

// Parses a complete JSON text. Syntax errors, invalid UTF-8, numbers out of range
// and duplicate object keys throw "<where>: invalid JSON: ...".
Json parse_json(std::string_view text, const std::string& where);

// Compact text of `value`; NaN and infinities become null. A string that is not
// valid UTF-8 throws "<where>: cannot write JSON: ...".
std::string dump_json(const Json& value, const std::string& where);

// Typed reads of the members of one JSON object. `where` names the source
// ("checkpoint X: metadata 'config'"); nested objects carry a dotted key prefix.
class JsonFields {
 public:
  // Throws "<where> must be a JSON object, got <type>" for anything else.
  JsonFields(const Json& object, std::string where, std::string prefix = "");

  bool has(const std::string& key) const;
  // An integer (not a float) in [min, max].
  int64_t integer(const std::string& key, int64_t min = std::numeric_limits<int64_t>::min(),
                  int64_t max = std::numeric_limits<int64_t>::max()) const;
  // A finite number (integer or float) >= min; `exclusive`: > min.
  double number(const std::string& key, double min = std::numeric_limits<double>::lowest(),
                bool exclusive = false) const;
  bool boolean(const std::string& key) const;
  std::string string(const std::string& key) const;
  const Json& array(const std::string& key) const;
  JsonFields object(const std::string& key) const;

  // "<where> key '<prefix><key>'": for messages about a value read through this object.
  std::string label(const std::string& key) const;
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;

 private:
  const Json& member(const std::string& key, const char* expected) const;

  const Json* object_;
  std::string where_, prefix_;
};

// An element of a JSON array as an integer in [min, max]; `what` names it in errors
// ("safetensors X: tensor 'w' key 'shape' element 1").
int64_t json_integer(const Json& value, const std::string& what, int64_t min = std::numeric_limits<int64_t>::min(),
                     int64_t max = std::numeric_limits<int64_t>::max());

}  // namespace sessa::data
