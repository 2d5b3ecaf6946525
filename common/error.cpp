#include "common/error.h"

namespace stride::detail {

void check_failed(const char* file, int line, const char* condition, const std::string& message) {
  std::string what = concat("check failed: ", condition);
  if (!message.empty()) what += concat(": ", message);
  what += concat(" [", file, ":", line, "]");
  throw Error(what);
}

}  // namespace stride::detail
