// Environment variables that tune Stride (STRIDE_SHM_*, ...): parsed strictly, so a typo stops the job with a
// message naming the variable instead of silently meaning 0. Thread-safe as long as nobody calls setenv
// concurrently.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace stride {

// Parses `text`, the value of environment variable `name`, as a decimal integer in [min, max]. Throws
// UsageError naming the variable, the value and the accepted range on anything else ("abc", "12k", "1.5",
// " 3", out of range).
int64_t parse_env_integer(const char* name, const std::string& text, int64_t min, int64_t max);

// The variable's value parsed as above; nullopt when it is unset or empty.
std::optional<int64_t> env_integer(const char* name, int64_t min, int64_t max);

// The same for a decimal number ("2", "0.5", "1e-3") in [min, max]; nan, inf and trailing text are refused.
double parse_env_number(const char* name, const std::string& text, double min, double max);
std::optional<double> env_number(const char* name, double min, double max);

}  // namespace stride
