// test_formats.cpp - Tests for data/json_fields, data/safetensors, apps/common/svg_plot and
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
#include "data/json_fields.h"
#include "data/safetensors.h"
#include "tensor/error.h"

using sessa::data::Json;
using sessa::data::JsonFields;
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

// Message of the sessa::Error thrown by `action`, or "" if nothing was thrown (any
// other exception type fails the test).
template <class Action>
std::string error_message(Action action) {
  try {
    action();
  } catch (const sessa::Error& error) {
    return error.what();
  }
  return "";
}

std::string parse_error(const std::string& text) {
  return error_message([&] { sessa::data::parse_json(text, "config.json"); });
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

TEST_CASE("json: objects keep insertion order through dump and parse") {
  const std::string text = R"({"z":1,"a":[true,false,null],"m":"x","n":{"e":-2.5,"f":[]},"o":{}})";
  CHECK(sessa::data::dump_json(sessa::data::parse_json(text, "t"), "t") == text);
  CHECK(sessa::data::dump_json(sessa::data::parse_json(" \t\r\n{ \"a\" : [ 1 , 2 ] }\n ", "t"), "t") ==
        R"({"a":[1,2]})");
}

TEST_CASE("json: malformed text, duplicate keys and bad UTF-8 are errors naming the source") {
  const std::vector<std::string> malformed = {
      "",       "{",        "[1,]",        R"({"a" 1})",   "01",       "1.",    ".5",          "-",
      "1e",     "1e+",      "tru",         "nul",          R"("abc)",  "[1 2]", R"({"a":1,})", "1 2",
      "+1",     "NaN",      "Infinity",    "1e400",        R"({1:2})", "[",     "]",           "'a'",
      "[1,,2]", "\"\xff\"", R"("\ud83d")", "\"tab\there\""};
  for (const std::string& text : malformed) {
    INFO("input: " << text);
    CHECK(contains(parse_error(text), "config.json: invalid JSON"));
  }
  CHECK(contains(parse_error("[1,]"), "column 4"));
  CHECK(contains(parse_error(R"({"a":1,"a":2})"), "config.json: invalid JSON: duplicate object key 'a'"));
  CHECK(contains(parse_error(R"({"n":{"b":1,"b":1}})"), "duplicate object key 'b'"));
  CHECK(parse_error(R"({"a":{"b":1},"c":{"b":2}})").empty());  // the same key in two objects is fine
  CHECK(
      contains(error_message([] { sessa::data::dump_json(Json("\xff"), "metadata"); }), "metadata: cannot write JSON"));
}

TEST_CASE("json: int64 and doubles round-trip exactly; NaN is written as null") {
  CHECK(sessa::data::parse_json("9223372036854775807", "t").get<int64_t>() == INT64_MAX);
  CHECK(sessa::data::dump_json(Json(int64_t{-9007199254740993LL}), "t") == "-9007199254740993");
  CHECK(sessa::data::dump_json(Json(3.0), "t") == "3.0");
  std::vector<double> values = {0.1, 1.0 / 3.0, -2.5e-7, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 3e-3};
  std::mt19937_64 random(1234);
  while (values.size() < 500) {
    const double value = std::bit_cast<double>(random());
    if (std::isfinite(value)) values.push_back(value);
  }
  for (const double value : values) {
    const std::string text = sessa::data::dump_json(Json(value), "t");
    INFO("text: " << text);
    const double parsed = sessa::data::parse_json(text, "t").get<double>();
    CHECK(std::bit_cast<uint64_t>(parsed) == std::bit_cast<uint64_t>(value));
  }
  CHECK(sessa::data::dump_json(Json(std::numeric_limits<double>::quiet_NaN()), "t") == "null");
}

TEST_CASE("json: JsonFields reads typed values and names the source and key on failure") {
  const Json json = sessa::data::parse_json(
      R"({"step":12,"lr":0.003,"name":"run","on":true,"big":18446744073709551615,"half":1.5,"neg":-2,"nan":null,)"
      R"("flags":{"batch":0,"seq_len":64},"list":[1,2]})",
      "t");
  const JsonFields fields(json, "checkpoint x.safetensors: metadata 'training'");
  CHECK(fields.integer("step", 0) == 12);
  CHECK(fields.number("lr", 0, true) == 0.003);
  CHECK(fields.number("step") == 12.0);
  CHECK(fields.string("name") == "run");
  CHECK(fields.boolean("on"));
  CHECK(fields.array("list").size() == 2);
  CHECK(fields.object("flags").integer("seq_len", 1) == 64);
  CHECK(fields.has("neg"));
  CHECK_FALSE(fields.has("absent"));
  auto error = [&](auto read) { return error_message([&] { read(fields); }); };
  CHECK(error([](const JsonFields& f) { f.integer("absent"); }) ==
        "checkpoint x.safetensors: metadata 'training' key 'absent' missing (expected an integer)");
  CHECK(error([](const JsonFields& f) { f.integer("neg", 0); }) ==
        "checkpoint x.safetensors: metadata 'training' key 'neg' is -2, expected an integer >= 0");
  CHECK(contains(error([](const JsonFields& f) { f.integer("half"); }), "key 'half' is 1.5, expected an integer"));
  CHECK(contains(error([](const JsonFields& f) { f.integer("big"); }), "key 'big' is 18446744073709551615"));
  CHECK(contains(error([](const JsonFields& f) { f.integer("name"); }), "key 'name' is a string, expected an integer"));
  CHECK(contains(error([](const JsonFields& f) { f.number("nan", 0, true); }),
                 "key 'nan' is null, expected a finite number > 0"));
  CHECK(contains(error([](const JsonFields& f) { f.number("neg", 0); }),
                 "key 'neg' is -2, expected a finite number >= 0"));
  CHECK(contains(error([](const JsonFields& f) { f.string("step"); }), "key 'step' is 12, expected a string"));
  CHECK(contains(error([](const JsonFields& f) { f.boolean("step"); }), "key 'step' is 12, expected true or false"));
  CHECK(contains(error([](const JsonFields& f) { f.object("list"); }), "key 'list' is an array, expected an object"));
  CHECK(contains(error([](const JsonFields& f) { f.array("on"); }), "key 'on' is true, expected an array"));
  CHECK(contains(error([](const JsonFields& f) { f.object("flags").integer("batch", 1); }),
                 "metadata 'training' key 'flags.batch' is 0, expected an integer >= 1"));
  CHECK(contains(error_message([] { JsonFields(Json::array(), "checkpoint y: metadata 'config'"); }),
                 "checkpoint y: metadata 'config': expected a JSON object, got an array"));
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
  const Json header = sessa::data::parse_json(header_text, path);
  CHECK(header.at("__metadata__").at("format") == "pt");
  CHECK(header.begin().key() == "__metadata__");  // then the tensors in the given order
  std::vector<std::string> names;
  for (const auto& [key, value] : header.items()) names.push_back(key);
  CHECK(names == std::vector<std::string>{"__metadata__", "layer.weight", "layer.bias", "step", "empty", "alpha"});

  size_t data_size = 0;
  for (const auto& entry : entries) {
    const Json& info = header.at(entry.name);
    CHECK(info.at("dtype") == entry.dtype);
    CHECK(info.at("shape").get<std::vector<int64_t>>() == entry.shape);
    const auto begin = info.at("data_offsets").at(0).get<size_t>();
    const auto end = info.at("data_offsets").at(1).get<size_t>();
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
    CHECK(contains(message, "safetensors " + bad + ": header: invalid JSON"));
    CHECK(contains(message, "column 7"));
  }
  SUBCASE("header that is not an object") {
    write_raw_safetensors(bad, "[1, 2]", 0);
    CHECK(contains(read_st_error(bad), "header must be a JSON object, got array"));
  }
  SUBCASE("duplicate tensor names") {
    write_raw_safetensors(bad,
                          R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                          R"("w":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                          8);
    CHECK(contains(read_st_error(bad), "duplicate object key 'w'"));
  }
  SUBCASE("negative dimension, bad offsets, non-integers") {
    write_raw_safetensors(bad, R"({"w":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", 4);
    CHECK(contains(read_st_error(bad), "tensor 'w' key 'shape' element 0 is -4, expected an integer >= 0"));
    write_raw_safetensors(bad, R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}})", 4);
    CHECK(contains(read_st_error(bad), "tensor 'w' key 'data_offsets' end is 0, expected an integer >= 4"));
    write_raw_safetensors(bad, R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4,8]}})", 8);
    CHECK(contains(read_st_error(bad), "key 'data_offsets' has 3 elements, expected 2"));
    write_raw_safetensors(bad, R"({"w":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}})", 2);
    CHECK(contains(read_st_error(bad), "element 0 is 2.0, expected an integer"));
    write_raw_safetensors(bad, R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[-1,3]}})", 4);
    CHECK(contains(read_st_error(bad), "key 'data_offsets' begin is -1"));
    write_raw_safetensors(bad, R"({"w":[1]})", 0);
    CHECK(contains(read_st_error(bad), "tensor 'w': expected a JSON object, got an array"));
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
    CHECK(contains(read_st_error(bad), "safetensors " + bad + ": tensor 'w' key 'shape' missing (expected an array)"));
    write_raw_safetensors(bad, R"({"__metadata__":{"epoch":3}})", 0);
    CHECK(contains(read_st_error(bad), "header '__metadata__' key 'epoch' is 3, expected a string"));
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
  CHECK_THROWS_AS(sessa::data::write_text_file_atomic(dir.file("none/x.txt"), "x"), sessa::Error);
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
