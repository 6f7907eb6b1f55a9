#include "p2p/base/json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace loco {

Json jsonFixed(double v, int decimals) {
  if (!std::isfinite(v)) return nullptr;
  if (decimals <= 0) return static_cast<std::int64_t>(std::llround(v));
  const double scale = std::pow(10.0, decimals);
  // nlohmann prints the shortest text that reads back as the same double, so the rounded value
  // comes out with at most `decimals` places.
  return std::round(v * scale) / scale;
}

Json jsonSignificant(double v, int digits) {
  if (!std::isfinite(v)) return nullptr;
  char text[64];
  std::snprintf(text, sizeof text, "%.*e", std::max(digits - 1, 0), v);
  return std::strtod(text, nullptr);
}

std::string jsonDump(const Json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::optional<nlohmann::json> parseJsonObject(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

}  // namespace loco
