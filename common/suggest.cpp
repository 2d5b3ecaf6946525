#include "common/suggest.h"

#include <algorithm>
#include <cctype>

namespace stride {
namespace {

std::string normalised(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '-' || c == '_') continue;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

}  // namespace

size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

std::vector<std::string> closest_names(const std::string& typed, const std::vector<std::string>& candidates) {
  const std::string key = normalised(typed);
  if (key.empty()) return {};
  for (const auto& c : candidates) {
    if (normalised(c) == key) return {c};
  }
  const size_t limit = std::clamp<size_t>(key.size() / 3, 1, 3);
  std::vector<std::string> best;
  size_t best_distance = limit + 1;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(key, normalised(c));
    if (d < best_distance) {
      best.clear();
      best_distance = d;
    }
    if (d == best_distance) best.push_back(c);
  }
  return best;
}

std::string closest_name(const std::string& typed, const std::vector<std::string>& candidates) {
  const auto best = closest_names(typed, candidates);
  return best.empty() ? "" : best.front();
}

std::string did_you_mean(const std::string& typed, const std::vector<std::string>& candidates) {
  const auto best = closest_names(typed, candidates);
  if (best.empty()) return "";
  std::string out = " (did you mean ";
  for (size_t i = 0; i < best.size() && i < 3; ++i) {
    out += (i == 0 ? "'" : i + 1 == std::min<size_t>(best.size(), 3) ? " or '" : ", '") + best[i] + "'";
  }
  return out + "?)";
}

}  // namespace stride
