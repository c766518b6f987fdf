// Errors: every failure is a sessa::Error whose message starts with the op's name.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace sessa {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace sessa

// SESSA_FAIL("matmul", "inner dims differ: " << a << " vs " << b);
#define SESSA_FAIL(op, msg)                     \
  do {                                          \
    std::ostringstream sessa_fail_os_;          \
    sessa_fail_os_ << op << ": " << msg;        \
    throw ::sessa::Error(sessa_fail_os_.str()); \
  } while (0)

#define SESSA_CHECK(cond, op, msg)    \
  do {                                \
    if (!(cond)) SESSA_FAIL(op, msg); \
  } while (0)
