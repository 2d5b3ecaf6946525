// Error types and invariant checks shared by every Stride library.
//
// Policy (see docs/errors.md): exceptions carry the context a user needs to act (file, field, rank, peer);
// invariants use STRIDE_CHECK*, whose messages print the values that disagreed. All functions here are
// thread-safe (they only build strings and throw).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace stride {

// Anything that went wrong at run time; the CLI maps it to exit code 1.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The user asked for something invalid (bad flag, bad config value, unknown model); exit code 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

// Concatenates its arguments with operator<<.
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

namespace detail {
[[noreturn]] void check_failed(const char* file, int line, const char* condition, const std::string& message);
}  // namespace detail

}  // namespace stride

// STRIDE_CHECK(cond, "context ", value, ...) throws stride::Error naming the condition and the context.
#define STRIDE_CHECK(cond, ...)                                                                            \
  do {                                                                                                     \
    if (!(cond)) ::stride::detail::check_failed(__FILE__, __LINE__, #cond, ::stride::concat(__VA_ARGS__)); \
  } while (0)

// STRIDE_CHECK_OP variants print both operands.
#define STRIDE_CHECK_OP(a, op, b, ...)                                                                          \
  do {                                                                                                          \
    const auto& stride_a_ = (a);                                                                                \
    const auto& stride_b_ = (b);                                                                                \
    if (!(stride_a_ op stride_b_))                                                                              \
      ::stride::detail::check_failed(__FILE__, __LINE__, #a " " #op " " #b,                                     \
                                     ::stride::concat("(", stride_a_, " vs ", stride_b_, ") ", ##__VA_ARGS__)); \
  } while (0)
#define STRIDE_CHECK_EQ(a, b, ...) STRIDE_CHECK_OP(a, ==, b, ##__VA_ARGS__)
#define STRIDE_CHECK_GE(a, b, ...) STRIDE_CHECK_OP(a, >=, b, ##__VA_ARGS__)
#define STRIDE_CHECK_GT(a, b, ...) STRIDE_CHECK_OP(a, >, b, ##__VA_ARGS__)
#define STRIDE_CHECK_LE(a, b, ...) STRIDE_CHECK_OP(a, <=, b, ##__VA_ARGS__)
