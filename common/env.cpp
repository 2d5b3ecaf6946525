#include "common/env.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "common/error.h"

namespace stride {

int64_t parse_env_integer(const char* name, const std::string& text, int64_t min, int64_t max) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  const bool digits = !text.empty() && (std::isdigit(static_cast<unsigned char>(text[0])) || text[0] == '-');
  if (!digits || end != text.c_str() + text.size() || errno == ERANGE || v < min || v > max) {
    throw UsageError(concat(name, " must be a whole number from ", min, " to ", max, ", not '", text, "'"));
  }
  return v;
}

std::optional<int64_t> env_integer(const char* name, int64_t min, int64_t max) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return parse_env_integer(name, v, min, max);
}

double parse_env_number(const char* name, const std::string& text, double min, double max) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  const bool starts =
      !text.empty() && (std::isdigit(static_cast<unsigned char>(text[0])) || text[0] == '-' || text[0] == '.');
  if (!starts || end != text.c_str() + text.size() || errno == ERANGE || !(v >= min && v <= max)) {
    throw UsageError(concat(name, " must be a number from ", min, " to ", max, ", not '", text, "'"));
  }
  return v;
}

std::optional<double> env_number(const char* name, double min, double max) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return parse_env_number(name, v, min, max);
}

}  // namespace stride
