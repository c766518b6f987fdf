// flags.h - One CLI11 validator per kind of flag value, shared by every app.
//
// Each validator parses the text itself (so "abc", "nan", "1e999" and values past
// the integer type never reach CLI11's own conversion) and, when it refuses a value,
// says in words what is accepted: "--steps: expected a whole number from 1 to
// 1000000000000, got '0'". Limits are sanity bounds (a flag far past them is a typo
// or would exhaust memory), not tuning advice.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace sessa::apps {

// Whole numbers in [min, max] (decimal digits, optional sign; no fraction, no exponent).
CLI::Validator whole_number(int64_t min, int64_t max);
inline CLI::Validator positive_int(int64_t max) { return whole_number(1, max); }
inline CLI::Validator non_negative_int(int64_t max) { return whole_number(0, max); }
// A seed: any whole number from 0 to 2^64 - 1.
CLI::Validator seed_number();

// Finite real numbers in a range; `*_open` excludes that end.
CLI::Validator real_number(double min, double max, bool min_open, bool max_open);
inline CLI::Validator finite_positive(double max) { return real_number(0, max, true, false); }
inline CLI::Validator finite_non_negative(double max) { return real_number(0, max, false, false); }
inline CLI::Validator open_fraction() { return real_number(0, 1, true, true); }       // (0, 1)
inline CLI::Validator positive_fraction() { return real_number(0, 1, true, false); }  // (0, 1]

// A path that must exist (file or directory).
CLI::Validator existing_path();

// --threads: 0 (all cores) up to 4 threads per core of this machine.
CLI::Validator thread_count();
int machine_cores();

// One look for every app's flag errors: "<app>: error: --flag: ..." and a hint at --help.
void use_app_failure_message(CLI::App& app, const std::string& app_name);

}  // namespace sessa::apps
