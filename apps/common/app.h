// app.h - The one shape of every app's main(): the process set-up, the flag parse
// and the error path are here, so train, prepare, sample and bench behave alike.
//
//   int main(int argc, char** argv) {
//     Flags f;
//     CLI::App app{"..."};
//     add_flags(app, f);
//     return apps::run_app("train", app, argc, argv, [&](dist::World& world) { return run(f, world); });
//   }
//
// Output style: results and progress go to stdout (printf), notes and errors to
// stderr as "<app>: note: ..." / "<app>: error: ...". A bad flag exits with status
// 2, any other error with 1 (an app may return its own codes, e.g. 130 when
// stopped by a signal); under mpirun only rank 0 prints and an error on any rank
// ends the job. Host memory running out (std::bad_alloc) is reported as "out of host
// memory while <activity>" with what to reduce, never as a bare std::bad_alloc.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "dist/world.h"

namespace sessa::apps {

// Sets up the process (SIGPIPE ignored, OpenMP wait policy; see cpu.h), starts the
// World, parses `app` (bad flags: "<name>: error: --flag: ..." on rank 0), then runs
// `body` through dist::run_reporting_errors. Returns main's exit status.
int run_app(const char* name, CLI::App& app, int argc, char** argv, const std::function<int(dist::World&)>& body);

// What the app is doing now, for the out-of-host-memory message: "while <what>"
// (default "running <app>"). Set it before each step that allocates a lot.
void set_activity(std::string what);

// "<app>: note: <text>" on stderr (the app name is the one given to run_app).
void note(const char* format, ...) __attribute__((format(printf, 1, 2)));

// True when `flag` was given on the command line (not only defaulted).
bool given(const CLI::App& app, const char* flag);

}  // namespace sessa::apps
