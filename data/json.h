// json.h - A small JSON value type with an RFC 8259 parser and a compact writer.
//
// Numbers are stored as double: integers are exact up to 2^53 and are printed
// without a decimal point; other doubles are printed in their shortest
// round-trip form. Objects keep their keys in insertion order.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace sessa::data {

class Json {
 public:
  using Array = std::vector<Json>;
  using Object = std::vector<std::pair<std::string, Json>>;
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;
  Json(std::nullptr_t) {}
  Json(bool value) : value_(std::in_place_type<bool>, value) {}
  template <std::integral T>
  requires(!std::same_as<T, bool>) Json(T value) : value_(std::in_place_type<double>, static_cast<double>(value)) {}
  template <std::floating_point T>
  Json(T value) : value_(std::in_place_type<double>, static_cast<double>(value)) {}
  Json(const char* value) : value_(std::in_place_type<std::string>, value) {}
  Json(std::string_view value) : value_(std::in_place_type<std::string>, value) {}
  Json(std::string value) : value_(std::in_place_type<std::string>, std::move(value)) {}
  Json(Array value) : value_(std::in_place_type<Array>, std::move(value)) {}
  Json(Object value) : value_(std::in_place_type<Object>, std::move(value)) {}

  // Parses a complete JSON text (surrounding whitespace allowed). Throws
  // std::runtime_error naming the byte offset and what was expected.
  static Json parse(std::string_view text);
  // Compact serialization. NaN and infinities are written as null.
  std::string dump() const;

  Type type() const;
  static const char* type_name(Type type);
  bool is_null() const { return type() == Type::Null; }
  bool is_bool() const { return type() == Type::Bool; }
  bool is_number() const { return type() == Type::Number; }
  bool is_string() const { return type() == Type::String; }
  bool is_array() const { return type() == Type::Array; }
  bool is_object() const { return type() == Type::Object; }

  // Typed accessors; throw std::runtime_error naming expected and actual type.
  bool as_bool() const;
  double as_double() const;
  int64_t as_int() const;  // also throws if the number is not an exact integer
  const std::string& as_string() const;
  const Array& as_array() const;
  Array& as_array();
  const Object& as_object() const;
  Object& as_object();

  // Object access. operator[] turns a null value into an empty object and
  // inserts a null member when the key is missing.
  Json& operator[](std::string_view key);
  const Json& at(std::string_view key) const;    // throws naming the missing key
  const Json* find(std::string_view key) const;  // nullptr when missing
  bool contains(std::string_view key) const { return find(key) != nullptr; }

  // Array access. push_back turns a null value into an empty array.
  const Json& at(size_t index) const;  // throws when out of range
  void push_back(Json value);

  size_t size() const;  // element or member count; throws for scalars

  bool operator==(const Json& other) const = default;

 private:
  template <class T>
  const T& get(Type expected) const;

  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> value_;
};

}  // namespace sessa::data
