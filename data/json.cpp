// json.cpp - Json value accessors, RFC 8259 recursive-descent parser and writer.
#include "data/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <unordered_set>

namespace sessa::data {

namespace {

constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
constexpr double kInt64Limit = 9223372036854775808.0;    // 2^63
constexpr int kMaxNestingDepth = 512;

std::string quote_key(std::string_view key) { return "'" + std::string(key) + "'"; }

[[noreturn]] void throw_type_mismatch(Json::Type expected, Json::Type actual) {
  throw std::runtime_error(std::string("Json: expected ") + Json::type_name(expected) + ", got " +
                           Json::type_name(actual));
}

// Appends `code_point` (<= 0x10FFFF, not a surrogate) to `out` as UTF-8.
void append_utf8(std::string& out, uint32_t code_point) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Json parse_document() {
    skip_whitespace();
    Json value = parse_value(0);
    skip_whitespace();
    if (!at_end()) fail_expected("end of input");
    return value;
  }

 private:
  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }

  [[noreturn]] void fail(const std::string& message) const {
    throw std::runtime_error("JSON parse error at byte " + std::to_string(pos_) + ": " + message);
  }

  [[noreturn]] void fail_expected(const std::string& expected) const {
    fail("expected " + expected + ", found " + describe_current());
  }

  std::string describe_current() const {
    if (at_end()) return "end of input";
    const auto byte = static_cast<unsigned char>(text_[pos_]);
    if (byte >= 0x20 && byte < 0x7F) return std::string("'") + text_[pos_] + "'";
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02X", byte);
    return std::string("byte ") + hex;
  }

  void skip_whitespace() {
    while (!at_end()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
      ++pos_;
    }
  }

  void expect(char c, const char* what) {
    if (peek() != c) fail_expected(what);
    ++pos_;
  }

  Json parse_value(int depth) {
    if (depth > kMaxNestingDepth) fail("nesting deeper than 512 levels");
    switch (peek()) {
      case '{':
        return parse_object(depth);
      case '[':
        return parse_array(depth);
      case '"':
        return Json(parse_string());
      case 't':
        return parse_literal("true", Json(true));
      case 'f':
        return parse_literal("false", Json(false));
      case 'n':
        return parse_literal("null", Json());
      default:
        break;
    }
    if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
    fail_expected("a value");
  }

  Json parse_literal(std::string_view word, Json value) {
    if (text_.substr(pos_, word.size()) != word) fail_expected("'" + std::string(word) + "'");
    pos_ += word.size();
    return value;
  }

  Json parse_object(int depth) {
    ++pos_;  // '{'
    Json::Object members;
    std::unordered_set<std::string> seen_keys;
    skip_whitespace();
    if (peek() == '}') {
      ++pos_;
      return Json(std::move(members));
    }
    while (true) {
      skip_whitespace();
      if (peek() != '"') fail_expected("a string key");
      const size_t key_offset = pos_;
      std::string key = parse_string();
      if (!seen_keys.insert(key).second) {
        pos_ = key_offset;
        fail("duplicate object key " + quote_key(key));
      }
      skip_whitespace();
      expect(':', "':' after object key");
      skip_whitespace();
      Json value = parse_value(depth + 1);
      members.emplace_back(std::move(key), std::move(value));
      skip_whitespace();
      if (peek() == '}') break;
      expect(',', "',' or '}' in object");
    }
    ++pos_;  // '}'
    return Json(std::move(members));
  }

  Json parse_array(int depth) {
    ++pos_;  // '['
    Json::Array elements;
    skip_whitespace();
    if (peek() == ']') {
      ++pos_;
      return Json(std::move(elements));
    }
    while (true) {
      skip_whitespace();
      elements.push_back(parse_value(depth + 1));
      skip_whitespace();
      if (peek() == ']') break;
      expect(',', "',' or ']' in array");
    }
    ++pos_;  // ']'
    return Json(std::move(elements));
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (at_end()) fail_expected("closing '\"' of string");
      const char c = text_[pos_];
      if (c == '"') break;
      if (static_cast<unsigned char>(c) < 0x20) fail("unescaped control character in string");
      if (c == '\\') {
        parse_escape(out);
      } else {
        out += c;
        ++pos_;
      }
    }
    ++pos_;  // closing quote
    return out;
  }

  void parse_escape(std::string& out) {
    ++pos_;  // backslash
    const char c = peek();
    switch (c) {
      case '"':
        out += '"';
        break;
      case '\\':
        out += '\\';
        break;
      case '/':
        out += '/';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u':
        append_utf8(out, parse_unicode_escape());
        return;
      default:
        fail_expected("escape character (one of \"\\/bfnrtu)");
    }
    ++pos_;
  }

  // Parses the part after "\": 'u' XXXX, plus a following \uXXXX low
  // surrogate when the first one is a high surrogate.
  uint32_t parse_unicode_escape() {
    const size_t escape_offset = pos_ - 1;
    ++pos_;  // 'u'
    const uint32_t first = parse_hex4();
    if (first >= 0xDC00 && first <= 0xDFFF) {
      pos_ = escape_offset;
      fail("unpaired low surrogate in \\u escape");
    }
    if (first < 0xD800 || first > 0xDBFF) return first;
    if (text_.substr(pos_, 2) != "\\u") fail_expected("\\u low surrogate after high surrogate");
    pos_ += 2;
    const uint32_t second = parse_hex4();
    if (second < 0xDC00 || second > 0xDFFF) {
      pos_ -= 6;
      fail("high surrogate not followed by a low surrogate");
    }
    return 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
  }

  uint32_t parse_hex4() {
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = peek();
      uint32_t digit = 0;
      if (c >= '0' && c <= '9')
        digit = c - '0';
      else if (c >= 'a' && c <= 'f')
        digit = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        digit = c - 'A' + 10;
      else
        fail_expected("hex digit in \\u escape");
      value = value * 16 + digit;
      ++pos_;
    }
    return value;
  }

  void skip_digits() {
    while (peek() >= '0' && peek() <= '9') ++pos_;
  }

  void expect_digits(const char* what) {
    if (peek() < '0' || peek() > '9') fail_expected(what);
    skip_digits();
  }

  Json parse_number() {
    const size_t start = pos_;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
    } else {
      expect_digits("digit");
    }
    if (peek() == '.') {
      ++pos_;
      expect_digits("digit after decimal point");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      expect_digits("digit in exponent");
    }
    double value = 0;
    const auto [end, error] = std::from_chars(text_.data() + start, text_.data() + pos_, value);
    if (error != std::errc() || end != text_.data() + pos_) {
      pos_ = start;
      fail("number out of double range");
    }
    return Json(value);
  }

  std::string_view text_;
  size_t pos_ = 0;
};

void append_escaped_string(std::string& out, std::string_view text) {
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escape[8];
          std::snprintf(escape, sizeof escape, "\\u%04X", static_cast<unsigned>(c));
          out += escape;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void append_number(std::string& out, double value) {
  if (!std::isfinite(value)) {
    out += "null";
    return;
  }
  if (value == 0 && std::signbit(value)) {
    out += "-0";
    return;
  }
  char buffer[40];
  std::to_chars_result result;
  if (value == std::trunc(value) && std::fabs(value) <= kMaxExactInteger) {
    result = std::to_chars(buffer, buffer + sizeof buffer, static_cast<int64_t>(value));
  } else {
    result = std::to_chars(buffer, buffer + sizeof buffer, value);
  }
  out.append(buffer, result.ptr);
}

void append_json(std::string& out, const Json& value) {
  switch (value.type()) {
    case Json::Type::Null:
      out += "null";
      break;
    case Json::Type::Bool:
      out += value.as_bool() ? "true" : "false";
      break;
    case Json::Type::Number:
      append_number(out, value.as_double());
      break;
    case Json::Type::String:
      append_escaped_string(out, value.as_string());
      break;
    case Json::Type::Array: {
      out += '[';
      bool first = true;
      for (const Json& element : value.as_array()) {
        if (!first) out += ',';
        first = false;
        append_json(out, element);
      }
      out += ']';
      break;
    }
    case Json::Type::Object: {
      out += '{';
      bool first = true;
      for (const auto& [key, member] : value.as_object()) {
        if (!first) out += ',';
        first = false;
        append_escaped_string(out, key);
        out += ':';
        append_json(out, member);
      }
      out += '}';
      break;
    }
  }
}

}  // namespace

Json Json::parse(std::string_view text) { return Parser(text).parse_document(); }

std::string Json::dump() const {
  std::string out;
  append_json(out, *this);
  return out;
}

Json::Type Json::type() const { return static_cast<Type>(value_.index()); }

const char* Json::type_name(Type type) {
  switch (type) {
    case Type::Null:
      return "null";
    case Type::Bool:
      return "bool";
    case Type::Number:
      return "number";
    case Type::String:
      return "string";
    case Type::Array:
      return "array";
    case Type::Object:
      return "object";
  }
  return "unknown";
}

template <class T>
const T& Json::get(Type expected) const {
  const T* value = std::get_if<T>(&value_);
  if (value == nullptr) throw_type_mismatch(expected, type());
  return *value;
}

bool Json::as_bool() const { return get<bool>(Type::Bool); }
double Json::as_double() const { return get<double>(Type::Number); }

int64_t Json::as_int() const {
  const double value = as_double();
  if (value != std::trunc(value) || value < -kInt64Limit || value >= kInt64Limit) {
    char text[40];
    std::snprintf(text, sizeof text, "%.17g", value);
    throw std::runtime_error(std::string("Json: expected integer, got ") + text);
  }
  return static_cast<int64_t>(value);
}

const std::string& Json::as_string() const { return get<std::string>(Type::String); }
const Json::Array& Json::as_array() const { return get<Array>(Type::Array); }
Json::Array& Json::as_array() { return const_cast<Array&>(get<Array>(Type::Array)); }
const Json::Object& Json::as_object() const { return get<Object>(Type::Object); }
Json::Object& Json::as_object() { return const_cast<Object&>(get<Object>(Type::Object)); }

Json& Json::operator[](std::string_view key) {
  if (is_null()) value_ = Object{};
  Object& members = as_object();
  for (auto& [name, member] : members) {
    if (name == key) return member;
  }
  members.emplace_back(std::string(key), Json());
  return members.back().second;
}

const Json* Json::find(std::string_view key) const {
  for (const auto& [name, member] : as_object()) {
    if (name == key) return &member;
  }
  return nullptr;
}

const Json& Json::at(std::string_view key) const {
  const Json* member = find(key);
  if (member == nullptr) throw std::runtime_error("Json: missing key " + quote_key(key));
  return *member;
}

const Json& Json::at(size_t index) const {
  const Array& elements = as_array();
  if (index >= elements.size()) {
    throw std::runtime_error("Json: index " + std::to_string(index) + " out of range for array of size " +
                             std::to_string(elements.size()));
  }
  return elements[index];
}

void Json::push_back(Json value) {
  if (is_null()) value_ = Array{};
  as_array().push_back(std::move(value));
}

size_t Json::size() const {
  if (is_array()) return as_array().size();
  if (is_object()) return as_object().size();
  throw std::runtime_error(std::string("Json: size() needs an array or object, got ") + type_name(type()));
}

}  // namespace sessa::data
