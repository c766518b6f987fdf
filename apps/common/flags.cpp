// flags.cpp - the flag validators of flags.h: parse, check the range, say it in words.
#include "apps/common/flags.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

namespace sessa::apps {

namespace {

std::string trimmed(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

std::string number_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string real_range_words(double min, double max, bool min_open, bool max_open) {
  if (min_open && max_open) return "strictly between " + number_text(min) + " and " + number_text(max);
  if (min_open) return "greater than " + number_text(min) + " and at most " + number_text(max);
  if (max_open) return "at least " + number_text(min) + " and below " + number_text(max);
  return "from " + number_text(min) + " to " + number_text(max);
}

}  // namespace

CLI::Validator whole_number(int64_t min, int64_t max) {
  const std::string words = "a whole number from " + std::to_string(min) + " to " + std::to_string(max);
  return CLI::Validator(
      [=](std::string& value) -> std::string {
        const std::string text = trimmed(value);
        const char* first = text.data() + (!text.empty() && text[0] == '+' ? 1 : 0);
        const char* last = text.data() + text.size();
        int64_t v = 0;
        const auto [end, ec] = std::from_chars(first, last, v);
        if (ec == std::errc::result_out_of_range) return "expected " + words + ", got '" + value + "' (too large)";
        if (ec != std::errc() || end != last || first == last) return "expected " + words + ", got '" + value + "'";
        if (v < min || v > max) return "expected " + words + ", got " + std::to_string(v);
        value = std::to_string(v);
        return std::string();
      },
      "INT in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
}

CLI::Validator seed_number() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        const std::string text = trimmed(value);
        uint64_t v = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (ec != std::errc() || end != text.data() + text.size() || text.empty())
          return "expected a whole number from 0 to 18446744073709551615, got '" + value + "'";
        value = std::to_string(v);
        return std::string();
      },
      "UINT64");
}

CLI::Validator real_number(double min, double max, bool min_open, bool max_open) {
  const std::string words = "a finite number " + real_range_words(min, max, min_open, max_open);
  return CLI::Validator(
      [=](std::string& value) -> std::string {
        const std::string text = trimmed(value);
        char* end = nullptr;
        errno = 0;
        const double v = text.empty() ? NAN : std::strtod(text.c_str(), &end);
        if (text.empty() || end != text.c_str() + text.size()) return "expected " + words + ", got '" + value + "'";
        if (!std::isfinite(v) || errno == ERANGE) return "expected " + words + ", got '" + value + "' (not finite)";
        if (v < min || v > max || (min_open && v == min) || (max_open && v == max))
          return "expected " + words + ", got " + text;
        return std::string();
      },
      std::string("REAL in ") + (min_open ? "(" : "[") + number_text(min) + ", " + number_text(max) +
          (max_open ? ")" : "]"));
}

CLI::Validator existing_path() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        std::error_code ec;
        if (std::filesystem::exists(value, ec)) return std::string();
        if (std::filesystem::is_symlink(value, ec))
          return "'" + value + "' is a link to '" + std::filesystem::read_symlink(value, ec).string() +
                 "', which does not exist";
        return "'" + value + "' does not exist";
      },
      "PATH (existing)");
}

int machine_cores() { return std::max(1, int(std::thread::hardware_concurrency())); }

CLI::Validator thread_count() {
  // Up to 4 threads per core: oversubscription is allowed for experiments, but not
  // the hundreds of thousands that crash the OpenMP runtime.
  const int most = 4 * machine_cores();
  CLI::Validator v = whole_number(0, most);
  const std::string words = "a whole number from 0 (all cores) to " + std::to_string(most) + " (4 x this machine's " +
                            std::to_string(machine_cores()) + " cores)";
  return CLI::Validator(
      [v, words](std::string& value) -> std::string {
        return v(value).empty() ? std::string() : "expected " + words + ", got '" + value + "'";
      },
      "INT in [0, " + std::to_string(most) + "]");
}

void use_app_failure_message(CLI::App& app, const std::string& app_name) {
  app.failure_message([app_name](const CLI::App*, const CLI::Error& e) {
    return app_name + ": error: " + e.what() + "\nRun with --help for the flags and their ranges.\n";
  });
}

}  // namespace sessa::apps
