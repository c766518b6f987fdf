// app.cpp - run_app: the set-up, flag parse and error path every app shares (app.h).
#include "apps/common/app.h"

#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>
#include <utility>

#include "apps/common/flags.h"
#include "tensor/error.h"

namespace sessa::apps {

namespace {
std::string g_app_name = "app";
std::string g_activity;  // set_activity's; empty: "running <app>"

// OpenMP threads that spin at barriers (libgomp's default) keep a core busy while
// the thread they wait for is descheduled: with one of two cores taken by another
// process, a demo step went from 0.6 s to 6-26 s. Passive waiting sleeps instead
// (docs/performance.md has the numbers). libgomp reads its environment in a
// library constructor, before main(), so the default is set from the executable's
// preinit array, which runs before any library's constructors. An explicit
// OMP_WAIT_POLICY or GOMP_SPINCOUNT is left alone.
void default_to_passive_wait(int, char**, char**) {
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
}
__attribute__((section(".preinit_array"), used)) void (*const g_preinit_wait_policy)(int, char**,
                                                                                     char**) = default_to_passive_wait;
}  // namespace

void note(const char* format, ...) {
  std::fprintf(stderr, "%s: note: ", g_app_name.c_str());
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\n', stderr);
}

void set_activity(std::string what) { g_activity = std::move(what); }

bool given(const CLI::App& app, const char* flag) { return app.count(flag) > 0; }

int run_app(const char* name, CLI::App& app, int argc, char** argv, const std::function<int(dist::World&)>& body) {
  g_app_name = name;
  std::signal(SIGPIPE, SIG_IGN);  // a closed stdout fails writes instead of killing the process
  std::signal(SIGXFSZ, SIG_IGN);  // a file past `ulimit -f` fails its write (an error naming it) instead
  std::optional<dist::World> world;
  try {
    world.emplace(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", name, e.what());
    return 1;
  }
  // Only rank 0 reports: the other ranks' standard output is discarded (their
  // errors still reach stderr, naming the rank).
  if (world->rank() != 0 && !std::freopen("/dev/null", "w", stdout)) return 1;
  use_app_failure_message(app, name);
  for (CLI::Option* option : app.get_options())  // a repeated single-value flag: the last one wins
    if (option->get_expected_max() <= 1) option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (world->rank() != 0) return e.get_exit_code() == 0 ? 0 : 2;
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  return dist::run_reporting_errors(*world, name, [&] {
    try {
      return body(*world);
    } catch (const std::bad_alloc&) {  // what() is only "std::bad_alloc": say what ran out and what to do
      SESSA_FAIL("out of host memory while " << (g_activity.empty() ? "running " + g_app_name : g_activity),
                 "reduce --batch, --seq-len or the model size (--d-model, --layers, --preset), "
                 "or free memory taken by other processes");
    }
  });
}

}  // namespace sessa::apps
