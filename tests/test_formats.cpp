// test_formats.cpp - Tests for data/json, data/safetensors, apps/common/svg_plot and
// data/file_util.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "apps/common/svg_plot.h"
#include "data/file_util.h"
#include "data/json.h"
#include "data/safetensors.h"

using sessa::data::Json;
namespace fs = std::filesystem;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

size_t count_occurrences(const std::string& text, const std::string& part) {
  size_t count = 0;
  for (size_t pos = text.find(part); pos != std::string::npos; pos = text.find(part, pos + 1)) {
    ++count;
  }
  return count;
}

// Message of the exception thrown by `action`, or "" if nothing was thrown.
template <class Action>
std::string error_message(Action action) {
  try {
    action();
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "";
}

std::string parse_error(const std::string& text) {
  return error_message([&] { Json::parse(text); });
}

// A fresh directory under the system temp directory, removed on destruction.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device random;
    path = fs::temp_directory_path() / ("sessa_formats_test_" + std::to_string(random()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

uint64_t header_length(const std::vector<uint8_t>& file) {
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= static_cast<uint64_t>(file[i]) << (8 * i);
  return length;
}

void set_header_length(std::vector<uint8_t>& file, uint64_t length) {
  for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(length >> (8 * i));
}

// Writes a safetensors file with a hand-written header and `data_size` zero bytes.
void write_raw_safetensors(const std::string& path, const std::string& header, size_t data_size) {
  std::vector<uint8_t> file(8);
  set_header_length(file, header.size());
  file.insert(file.end(), header.begin(), header.end());
  file.resize(file.size() + data_size, 0);
  write_bytes(path, file);
}

std::vector<uint8_t> sequential_bytes(size_t count, uint8_t start) {
  std::vector<uint8_t> bytes(count);
  for (size_t i = 0; i < count; ++i) bytes[i] = static_cast<uint8_t>(start + i);
  return bytes;
}

std::vector<sessa::data::StEntry> sample_entries() {
  return {
      {"layer.weight", "F32", {2, 3}, sequential_bytes(24, 1)},
      {"layer.bias", "BF16", {4}, sequential_bytes(8, 100)},
      {"step", "I64", {}, sequential_bytes(8, 200)},
      {"empty", "U8", {0}, {}},
      {"alpha", "F64", {1, 1, 2}, sequential_bytes(16, 50)},
  };
}

const std::vector<std::pair<std::string, std::string>> kSampleMetadata = {{"format", "pt"},
                                                                          {"note", "quote \" and \\ slash"}};

std::string read_st_error(const std::string& path) {
  return error_message([&] { sessa::data::read_safetensors(path); });
}

}  // namespace

// ---------------------------------------------------------------- JSON

TEST_CASE("json: compact round trip keeps insertion order") {
  const std::string text = R"({"z":1,"a":[true,false,null],"m":"x","n":{"e":-2.5,"f":[]},"o":{}})";
  CHECK(Json::parse(text).dump() == text);
  CHECK(Json::parse(" \t\r\n{ \"a\" : [ 1 , 2 ] }\n ").dump() == R"({"a":[1,2]})");
}

TEST_CASE("json: building values") {
  Json value;
  value["name"] = "sessa";
  value["layers"] = 12;
  value["list"].push_back(1.5);
  value["list"].push_back(Json());
  value["name"] = std::string("renamed");
  CHECK(value.dump() == R"({"name":"renamed","layers":12,"list":[1.5,null]})");
  CHECK(value.at("layers").as_int() == 12);
  CHECK(value.find("absent") == nullptr);
  CHECK(value.size() == 3);
  CHECK(value.at("list").at(1).is_null());
  CHECK(Json::parse(value.dump()) == value);
}

TEST_CASE("json: string escapes and unicode") {
  const Json parsed = Json::parse(R"("q\" b\\ s\/ \b\f\n\r\t")");
  CHECK(parsed.as_string() == "q\" b\\ s/ \b\f\n\r\t");
  CHECK(parsed.dump() == R"("q\" b\\ s/ \b\f\n\r\t")");
  CHECK(Json::parse(R"("\u00e9\u20AC\ud83d\ude00")").as_string() == "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  CHECK(Json::parse("\"raw \xC3\xA9\"").as_string() == "raw \xC3\xA9");
  CHECK(Json(std::string("\x01\x1f")).dump() == R"("\u0001\u001F")");
  CHECK(Json(std::string("\xF0\x9F\x98\x80")).dump() == "\"\xF0\x9F\x98\x80\"");
  CHECK(contains(parse_error(R"("\ud83d")"), "low surrogate"));
  CHECK(contains(parse_error(R"("\ud83d\u0041")"), "low surrogate"));
  CHECK(contains(parse_error(R"("\ude00")"), "unpaired low surrogate"));
  CHECK(contains(parse_error(R"("\x")"), "escape"));
  CHECK(contains(parse_error(R"("\u12G4")"), "hex digit"));
  CHECK(contains(parse_error("\"tab\there\""), "control character"));
}

TEST_CASE("json: integers are exact and printed without a decimal point") {
  CHECK(Json::parse("9007199254740991").as_int() == 9007199254740991LL);
  CHECK(Json::parse("-9007199254740991").as_int() == -9007199254740991LL);
  CHECK(Json::parse("9007199254740991").dump() == "9007199254740991");
  CHECK(Json(int64_t{9007199254740992LL}).dump() == "9007199254740992");
  CHECK(Json(1000000).dump() == "1000000");
  CHECK(Json(-42).dump() == "-42");
  CHECK(Json(3.0).dump() == "3");
  CHECK(Json::parse("1e3").as_int() == 1000);
  CHECK(Json(1.5).dump() == "1.5");
  CHECK(contains(error_message([] { Json(1.5).as_int(); }), "expected integer"));
  CHECK(contains(error_message([] { Json(1e30).as_int(); }), "expected integer"));
}

TEST_CASE("json: doubles round-trip bit-exactly") {
  std::vector<double> values = {0.1,
                                1.0 / 3.0,
                                -2.5e-7,
                                1e-300,
                                5e-324,
                                2.2250738585072014e-308,
                                1.7976931348623157e308,
                                123456.789,
                                3.141592653589793,
                                -0.0,
                                1e21,
                                9007199254740993.0,
                                0.0};
  std::mt19937_64 random(1234);
  while (values.size() < 2000) {
    const double value = std::bit_cast<double>(random());
    if (std::isfinite(value)) values.push_back(value);
  }
  for (const double value : values) {
    const std::string text = Json(value).dump();
    const double parsed = Json::parse(text).as_double();
    INFO("text: " << text);
    CHECK(std::bit_cast<uint64_t>(parsed) == std::bit_cast<uint64_t>(value));
  }
  CHECK(Json(std::numeric_limits<double>::quiet_NaN()).dump() == "null");
}

TEST_CASE("json: malformed input reports the byte offset") {
  const std::vector<std::string> malformed = {
      "",      "{",        "[1,]",    R"({"a" 1})", "01",          "1.",    ".5", "-",   "1e",       "1e+",
      "tru",   "nul",      R"("abc)", "[1 2]",      R"({"a":1,})", "1 2",   "+1", "NaN", "Infinity", R"({"a":1,"a":2})",
      "1e400", R"({1:2})", "[",       "]",          "'a'",         "[1,,2]"};
  for (const std::string& text : malformed) {
    INFO("input: " << text);
    CHECK(contains(parse_error(text), "at byte"));
  }
  CHECK(contains(parse_error("[1,]"), "at byte 3: expected a value, found ']'"));
  CHECK(contains(parse_error(R"({"a" 1})"), "at byte 5: expected ':'"));
  CHECK(contains(parse_error("[1 2]"), "at byte 3: expected ',' or ']'"));
  CHECK(contains(parse_error("{"), "at byte 1: expected a string key, found end of input"));
  CHECK(contains(parse_error(R"({"a":1,"a":2})"), "duplicate object key 'a'"));
  CHECK(contains(parse_error("1e400"), "out of double range"));
  CHECK(contains(parse_error(std::string(100000, '[')), "nesting"));
}

TEST_CASE("json: type mismatches name expected and actual types") {
  CHECK(contains(error_message([] { Json(1).as_string(); }), "expected string, got number"));
  CHECK(contains(error_message([] { Json("x").as_double(); }), "expected number, got string"));
  CHECK(contains(error_message([] { Json().as_bool(); }), "expected bool, got null"));
  CHECK(contains(error_message([] { Json(true).as_array(); }), "expected array, got bool"));
  CHECK(contains(error_message([] { Json(Json::Array{}).as_object(); }), "expected object, got array"));
  CHECK(contains(error_message([] { Json::parse(R"({"a":1})").at("learning_rate"); }), "missing key 'learning_rate'"));
  CHECK(contains(error_message([] { Json::parse("[1]").at(3); }), "out of range"));
  CHECK(contains(error_message([] { Json(2).size(); }), "size()"));
}

// ---------------------------------------------------------------- safetensors

TEST_CASE("safetensors: write then read returns identical entries and metadata") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const auto entries = sample_entries();
  sessa::data::write_safetensors(path, entries, kSampleMetadata);
  const sessa::data::StFile file = sessa::data::read_safetensors(path);

  REQUIRE(file.entries.size() == entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    CHECK(file.entries[i].name == entries[i].name);
    CHECK(file.entries[i].dtype == entries[i].dtype);
    CHECK(file.entries[i].shape == entries[i].shape);
    CHECK(file.entries[i].bytes == entries[i].bytes);
  }
  CHECK(file.metadata == kSampleMetadata);
  REQUIRE(file.find("layer.bias") != nullptr);
  CHECK(file.find("layer.bias")->dtype == "BF16");
  CHECK(file.find("missing") == nullptr);

  sessa::data::write_safetensors(path, {}, {});
  const sessa::data::StFile empty = sessa::data::read_safetensors(path);
  CHECK(empty.entries.empty());
  CHECK(empty.metadata.empty());
}

TEST_CASE("safetensors: file layout follows the specification") {
  TempDir dir;
  const std::string path = dir.file("layout.safetensors");
  const auto entries = sample_entries();
  sessa::data::write_safetensors(path, entries, kSampleMetadata);
  const std::vector<uint8_t> file = read_bytes(path);

  REQUIRE(file.size() >= 8);
  const uint64_t length = header_length(file);
  CHECK(length % 8 == 0);
  REQUIRE(8 + length <= file.size());
  const std::string header_text(file.begin() + 8, file.begin() + 8 + static_cast<long>(length));
  CHECK(header_text.front() == '{');
  const Json header = Json::parse(header_text);
  CHECK(header.at("__metadata__").at("format").as_string() == "pt");

  size_t data_size = 0;
  for (const auto& entry : entries) {
    const Json& info = header.at(entry.name);
    CHECK(info.at("dtype").as_string() == entry.dtype);
    REQUIRE(info.at("shape").size() == entry.shape.size());
    for (size_t d = 0; d < entry.shape.size(); ++d) {
      CHECK(info.at("shape").at(d).as_int() == entry.shape[d]);
    }
    const auto begin = static_cast<size_t>(info.at("data_offsets").at(0).as_int());
    const auto end = static_cast<size_t>(info.at("data_offsets").at(1).as_int());
    CHECK(begin == data_size);
    CHECK(end - begin == entry.bytes.size());
    const auto data = file.begin() + 8 + static_cast<long>(length);
    const std::vector<uint8_t> stored(data + static_cast<long>(begin), data + static_cast<long>(end));
    CHECK(stored == entry.bytes);
    data_size = end;
  }
  CHECK(file.size() == 8 + length + data_size);
}

TEST_CASE("safetensors: corrupted files are rejected naming file and tensor") {
  TempDir dir;
  const std::string good = dir.file("good.safetensors");
  sessa::data::write_safetensors(good, sample_entries(), kSampleMetadata);
  const std::vector<uint8_t> original = read_bytes(good);
  const std::string bad = dir.file("bad.safetensors");

  SUBCASE("truncated data") {
    write_bytes(bad, {original.begin(), original.end() - 4});
    const std::string message = read_st_error(bad);
    CHECK(contains(message, bad));
    CHECK(contains(message, "alpha"));
    CHECK(contains(message, "exceed"));
  }
  SUBCASE("header length larger than the file") {
    auto bytes = original;
    set_header_length(bytes, original.size());
    write_bytes(bad, bytes);
    const std::string message = read_st_error(bad);
    CHECK(contains(message, bad));
    CHECK(contains(message, "header length"));
  }
  SUBCASE("file shorter than the length field") {
    write_bytes(bad, {1, 2, 3});
    CHECK(contains(read_st_error(bad), bad));
  }
  SUBCASE("invalid JSON header") {
    write_raw_safetensors(bad, R"({"w": )", 0);
    const std::string message = read_st_error(bad);
    CHECK(contains(message, bad));
    CHECK(contains(message, "at byte"));
  }
  SUBCASE("offsets out of range") {
    write_raw_safetensors(bad, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 16);
    const std::string message = read_st_error(bad);
    CHECK(contains(message, bad));
    CHECK(contains(message, "tensor 'w'"));
    CHECK(contains(message, "exceed"));
  }
  SUBCASE("shape does not match the byte size") {
    write_raw_safetensors(bad, R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16);
    const std::string message = read_st_error(bad);
    CHECK(contains(message, bad));
    CHECK(contains(message, "tensor 'w'"));
    CHECK(contains(message, "needs 12"));
  }
  SUBCASE("unknown dtype") {
    write_raw_safetensors(bad, R"({"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}})", 4);
    const std::string message = read_st_error(bad);
    CHECK(contains(message, bad));
    CHECK(contains(message, "tensor 'w'"));
    CHECK(contains(message, "unknown safetensors dtype 'Q4'"));
  }
  SUBCASE("overlapping tensors") {
    write_raw_safetensors(bad,
                          R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                          8);
    const std::string message = read_st_error(bad);
    CHECK(contains(message, bad));
    CHECK(contains(message, "overlap"));
  }
  SUBCASE("missing field and non-string metadata") {
    write_raw_safetensors(bad, R"({"w":{"dtype":"U8","data_offsets":[0,0]}})", 0);
    CHECK(contains(read_st_error(bad), "missing key 'shape'"));
    write_raw_safetensors(bad, R"({"__metadata__":{"epoch":3}})", 0);
    CHECK(contains(read_st_error(bad), "__metadata__"));
  }
  SUBCASE("missing file or a directory") {
    CHECK(contains(read_st_error(dir.file("absent.safetensors")), "absent.safetensors"));
    CHECK(contains(read_st_error(dir.path.string()), "not a regular file"));
  }
}

TEST_CASE("safetensors: failed writes throw and leave the destination untouched") {
  TempDir dir;
  const std::string missing_dir_path = dir.file("no_such_dir/model.safetensors");
  CHECK(contains(error_message([&] { sessa::data::write_safetensors(missing_dir_path, sample_entries(), {}); }),
                 missing_dir_path));

  const std::string path = dir.file("model.safetensors");
  sessa::data::write_safetensors(path, sample_entries(), kSampleMetadata);
  const std::vector<uint8_t> before = read_bytes(path);

  auto mismatched = sample_entries();
  mismatched[0].bytes.pop_back();
  const std::string mismatch_error = error_message([&] { sessa::data::write_safetensors(path, mismatched, {}); });
  CHECK(contains(mismatch_error, path));
  CHECK(contains(mismatch_error, "layer.weight"));

  auto unknown = sample_entries();
  unknown[1].dtype = "F7";
  CHECK(contains(error_message([&] { sessa::data::write_safetensors(path, unknown, {}); }), "F7"));

  auto duplicated = sample_entries();
  duplicated.push_back(duplicated[0]);
  CHECK(contains(error_message([&] { sessa::data::write_safetensors(path, duplicated, {}); }), "duplicate"));
  CHECK(read_bytes(path) == before);

  // Renaming over a directory fails after the data was written.
  const std::string directory_path = dir.file("occupied");
  fs::create_directories(fs::path(directory_path) / "child");
  CHECK(contains(error_message([&] { sessa::data::write_safetensors(directory_path, sample_entries(), {}); }),
                 directory_path));
  CHECK(fs::is_directory(fs::path(directory_path) / "child"));

  size_t file_count = 0;
  for ([[maybe_unused]] const auto& item : fs::directory_iterator(dir.path)) ++file_count;
  CHECK(file_count == 2);  // model.safetensors and occupied/: no temporary files left
}

TEST_CASE("safetensors: dtype sizes") {
  CHECK(sessa::data::safetensors_dtype_size("F32") == 4);
  CHECK(sessa::data::safetensors_dtype_size("F64") == 8);
  CHECK(sessa::data::safetensors_dtype_size("BF16") == 2);
  CHECK(sessa::data::safetensors_dtype_size("F16") == 2);
  CHECK(sessa::data::safetensors_dtype_size("I32") == 4);
  CHECK(sessa::data::safetensors_dtype_size("U16") == 2);
  CHECK(sessa::data::safetensors_dtype_size("I64") == 8);
  CHECK(sessa::data::safetensors_dtype_size("U8") == 1);
  CHECK(contains(error_message([] { sessa::data::safetensors_dtype_size("f32"); }), "'f32'"));
}

TEST_CASE("file_util: atomic text write creates and replaces") {
  TempDir dir;
  const std::string path = dir.file("log.txt");
  sessa::data::write_text_file_atomic(path, "first");
  sessa::data::write_text_file_atomic(path, "second\n");
  const std::vector<uint8_t> bytes = read_bytes(path);
  CHECK(std::string(bytes.begin(), bytes.end()) == "second\n");
  CHECK_THROWS_AS(sessa::data::write_text_file_atomic(dir.file("none/x.txt"), "x"), std::runtime_error);
}

// ---------------------------------------------------------------- SVG

namespace {

// The concatenated "points" attributes of all polylines.
std::string polyline_points(const std::string& svg) {
  std::string points;
  for (size_t pos = svg.find("points=\""); pos != std::string::npos; pos = svg.find("points=\"", pos + 1)) {
    const size_t start = pos + 8;
    points += svg.substr(start, svg.find('"', start) - start) + " ";
  }
  return points;
}

}  // namespace

TEST_CASE("svg: series, legend and escaping") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<sessa::apps::Series> series = {
      {"train", "", {{0, 2.5}, {50, 1.25}, {100, 0.5}, {120, nan}, {inf, 1}, {1, -1e308}}},
      {"val <best>", "#ff0000", {{100, 0.75}}},
      {"empty", "", {}},
      {"eval", "green", {{0, 2.0}, {100, 1.0}}},
  };
  const std::string svg = sessa::apps::svg_line_plot(series, "loss a<b & c", "step", "loss", false);
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(contains(svg, "</svg>"));
  CHECK(count_occurrences(svg, "<polyline") == 2);
  CHECK(count_occurrences(svg, "<circle") == 1);
  CHECK(contains(svg, ">train<"));
  CHECK(contains(svg, ">val &lt;best&gt;<"));
  CHECK(contains(svg, ">empty<"));
  CHECK(contains(svg, "loss a&lt;b &amp; c"));
  CHECK_FALSE(contains(svg, "a<b"));
  CHECK(contains(svg, ">0<"));
  CHECK(contains(svg, ">100<"));
  const std::string points = polyline_points(svg);
  CHECK_FALSE(contains(points, "nan"));
  CHECK_FALSE(contains(points, "inf"));
  CHECK(count_occurrences(points, ",") == 5);
}

TEST_CASE("svg: empty input, constant values and log scale") {
  for (const bool log_y : {false, true}) {
    const std::string empty = sessa::apps::svg_line_plot({}, "", "", "", log_y);
    CHECK(empty.rfind("<svg", 0) == 0);
    CHECK(contains(empty, "no data"));
    CHECK_FALSE(contains(empty, "<polyline"));
    CHECK_FALSE(contains(empty, "nan"));
  }

  const std::string constant =
      sessa::apps::svg_line_plot({{"flat", "", {{0, 5}, {1, 5}, {2, 5}}}}, "t", "x", "y", false);
  CHECK(count_occurrences(constant, "<polyline") == 1);
  CHECK_FALSE(contains(constant, "nan"));
  CHECK_FALSE(contains(constant, "inf"));

  std::vector<std::pair<double, double>> decay;
  for (int step = 0; step <= 300; ++step) decay.emplace_back(step, 10.0 * std::pow(0.977, step));
  decay.emplace_back(301, 0.0);  // not drawable on a log axis
  const std::string log_plot = sessa::apps::svg_line_plot({{"loss", "", decay}}, "decay", "step", "loss", true);
  CHECK(count_occurrences(log_plot, "<polyline") == 1);
  CHECK(contains(log_plot, ">0.01<"));
  CHECK(contains(log_plot, ">0.1<"));
  CHECK(contains(log_plot, ">1<"));
  CHECK(contains(log_plot, ">10<"));
  CHECK(count_occurrences(polyline_points(log_plot), ",") == 301);

  const std::string narrow_log = sessa::apps::svg_line_plot({{"l", "", {{0, 0.3}, {1, 0.9}}}}, "", "", "", true);
  CHECK(contains(narrow_log, ">0.2<"));
  CHECK(contains(narrow_log, ">0.5<"));
}

TEST_CASE("svg: log-log axes draw a power law as a straight line") {
  std::vector<std::pair<double, double>> power;
  power.emplace_back(0.0, 1.0);  // not drawable on a log x axis
  for (int x = 1; x <= 1000; x *= 2) power.emplace_back(x, std::pow(double(x), -0.5));
  const std::string svg = sessa::apps::svg_line_plot({{"tail", "", power}}, "", "lag", "influence", true, true);
  for (const char* tick : {">1<", ">10<", ">100<", ">1000<", ">0.01<", ">0.1<"}) CHECK(contains(svg, tick));
  std::istringstream points(polyline_points(svg));
  std::vector<std::pair<double, double>> pixels;
  for (std::string pair; points >> pair;) {
    const size_t comma = pair.find(',');
    pixels.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
  }
  REQUIRE(pixels.size() == 10);  // x = 0 skipped
  // Equal steps in log x (factor 2) give equal pixel steps on both axes.
  for (size_t k = 2; k < pixels.size(); ++k) {
    CHECK(pixels[k].first - pixels[k - 1].first == doctest::Approx(pixels[1].first - pixels[0].first).epsilon(0.01));
    CHECK(pixels[k].second - pixels[k - 1].second ==
          doctest::Approx(pixels[1].second - pixels[0].second).epsilon(0.02));
  }
  // The default (log_x = false) keeps a linear x axis: the same call without it differs.
  CHECK(sessa::apps::svg_line_plot({{"tail", "", power}}, "", "lag", "influence", true) != svg);
}
