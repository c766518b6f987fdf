// data/json_fields.cpp - parse_json, dump_json and JsonFields over nlohmann-json.
#include "data/json_fields.h"

#include <cmath>
#include <sstream>
#include <unordered_set>
#include <vector>

#include "tensor/error.h"

namespace sessa::data {

namespace {

// nlohmann messages start with "[json.exception.parse_error.101] "; keep the rest.
std::string without_exception_id(const char* what) {
  std::string text = what;
  const size_t end = text.find("] ");
  return text.rfind("[json.exception.", 0) == 0 && end != std::string::npos ? text.substr(end + 2) : text;
}

// How a value reads in a message: scalars by value, containers by kind.
std::string describe(const Json& value) {
  switch (value.type()) {
    case Json::value_t::string:
      return "a string";
    case Json::value_t::array:
      return "an array";
    case Json::value_t::object:
      return "an object";
    default:
      return value.dump();
  }
}

std::string bounds_text(int64_t min, int64_t max) {
  constexpr int64_t lowest = std::numeric_limits<int64_t>::min(), highest = std::numeric_limits<int64_t>::max();
  if (max == highest) return ">= " + std::to_string(min);
  if (min == lowest) return "<= " + std::to_string(max);
  return "in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
}

std::string number_text(double value) {
  std::ostringstream os;
  os << value;
  return os.str();
}

}  // namespace

Json parse_json(std::string_view text, const std::string& where) {
  // The parser keeps the last of duplicate keys silently; a callback sees every key.
  std::vector<std::unordered_set<std::string>> open_objects;
  std::string duplicate;
  const Json::parser_callback_t watch_keys = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      open_objects.pop_back();
    } else if (event == Json::parse_event_t::key && !open_objects.back().insert(parsed.get<std::string>()).second &&
               duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  Json value;
  try {
    value = Json::parse(text.begin(), text.end(), watch_keys);
  } catch (const Json::exception& error) {
    SESSA_FAIL(where, "invalid JSON: " << without_exception_id(error.what()));
  }
  SESSA_CHECK(duplicate.empty(), where, "invalid JSON: duplicate object key '" << duplicate << "'");
  return value;
}

std::string dump_json(const Json& value, const std::string& where) {
  try {
    return value.dump();
  } catch (const Json::exception& error) {
    SESSA_FAIL(where, "cannot write JSON: " << without_exception_id(error.what()));
  }
}

int64_t json_integer(const Json& value, const std::string& what, int64_t min, int64_t max) {
  auto fail = [&](const std::string& actual) -> int64_t {
    throw Error(what + " is " + actual + ", expected an integer" +
                (value.is_number_integer() ? " " + bounds_text(min, max) : ""));
  };
  if (!value.is_number_integer()) return fail(describe(value));
  if (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    return fail(std::to_string(value.get<uint64_t>()));
  const int64_t result = value.get<int64_t>();
  return result >= min && result <= max ? result : fail(std::to_string(result));
}

JsonFields::JsonFields(const Json& object, std::string where, std::string prefix)
    : object_(&object), where_(std::move(where)), prefix_(std::move(prefix)) {
  SESSA_CHECK(object.is_object(),
              where_ + (prefix_.empty() ? "" : " key '" + prefix_.substr(0, prefix_.size() - 1) + "'"),
              "expected a JSON object, got " << describe(object));
}

std::string JsonFields::label(const std::string& key) const { return where_ + " key '" + prefix_ + key + "'"; }

void JsonFields::fail(const std::string& key, const std::string& what) const { throw Error(label(key) + " " + what); }

bool JsonFields::has(const std::string& key) const { return object_->contains(key); }

const Json& JsonFields::member(const std::string& key, const char* expected) const {
  const auto found = object_->find(key);
  if (found == object_->end()) fail(key, std::string("missing (expected ") + expected + ")");
  return *found;
}

int64_t JsonFields::integer(const std::string& key, int64_t min, int64_t max) const {
  return json_integer(member(key, "an integer"), label(key), min, max);
}

double JsonFields::number(const std::string& key, double min, bool exclusive) const {
  const Json& value = member(key, "a number");
  const std::string wanted =
      "a finite number" +
      (min == std::numeric_limits<double>::lowest() ? std::string() : (exclusive ? " > " : " >= ") + number_text(min));
  if (!value.is_number()) fail(key, "is " + describe(value) + ", expected " + wanted);
  const double result = value.get<double>();
  if (!std::isfinite(result) || result < min || (exclusive && result == min))
    fail(key, "is " + number_text(result) + ", expected " + wanted);
  return result;
}

bool JsonFields::boolean(const std::string& key) const {
  const Json& value = member(key, "true or false");
  if (!value.is_boolean()) fail(key, "is " + describe(value) + ", expected true or false");
  return value.get<bool>();
}

std::string JsonFields::string(const std::string& key) const {
  const Json& value = member(key, "a string");
  if (!value.is_string()) fail(key, "is " + describe(value) + ", expected a string");
  return value.get<std::string>();
}

const Json& JsonFields::array(const std::string& key) const {
  const Json& value = member(key, "an array");
  if (!value.is_array()) fail(key, "is " + describe(value) + ", expected an array");
  return value;
}

JsonFields JsonFields::object(const std::string& key) const {
  const Json& value = member(key, "an object");
  if (!value.is_object()) fail(key, "is " + describe(value) + ", expected an object");
  return JsonFields(value, where_, prefix_ + key + ".");
}

}  // namespace sessa::data
