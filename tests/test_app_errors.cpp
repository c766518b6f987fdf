// test_app_errors.cpp - apps::run_app's error path (apps/common/app.h): a std::bad_alloc
// escaping an app becomes "out of host memory while <activity>" with what to reduce
// and exit status 1, never a bare "std::bad_alloc"; a sessa::Error keeps its message.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <new>
#include <string>

#include "apps/common/app.h"
#include "tensor/error.h"

namespace {

// Runs `body` through run_app("demo", ...) and returns {exit status, what it wrote to stderr}.
std::pair<int, std::string> run_capturing_stderr(const std::function<int(sessa::dist::World&)>& body) {
  char path[] = "/tmp/test_app_errors_XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  std::fflush(stderr);
  const int saved = dup(2);
  dup2(fd, 2);
  CLI::App app{"demo"};
  char name[] = "demo";
  char* argv[] = {name, nullptr};
  const int status = sessa::apps::run_app("demo", app, 1, argv, body);
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(fd);
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(path);
  return {status, text};
}

}  // namespace

TEST_CASE("run_app: an escaping std::bad_alloc names the activity and what to reduce") {
  auto [status, text] = run_capturing_stderr([](sessa::dist::World&) -> int {
    sessa::apps::set_activity("making a batch of 8 x 16 random tokens");
    throw std::bad_alloc();
  });
  CHECK(status == 1);
  CHECK(text.find("demo: error: out of host memory while making a batch of 8 x 16 random tokens: reduce --batch") !=
        std::string::npos);
  CHECK(text.find("std::bad_alloc") == std::string::npos);
  sessa::apps::set_activity("");
  auto [status2, text2] = run_capturing_stderr([](sessa::dist::World&) -> int { throw std::bad_alloc(); });
  CHECK(status2 == 1);
  CHECK(text2.find("out of host memory while running demo") != std::string::npos);
}

TEST_CASE("run_app: a sessa::Error keeps its message; success returns the body's status") {
  auto [status, text] =
      run_capturing_stderr([](sessa::dist::World&) -> int { SESSA_FAIL("--flag", "expected this, got that"); });
  CHECK(status == 1);
  CHECK(text == "demo: error: --flag: expected this, got that\n");
  CHECK(run_capturing_stderr([](sessa::dist::World&) { return 0; }).first == 0);
}
