#pragma once
// JSON as loco writes and reads it: nlohmann-json (Debian's nlohmann-json3-dev) for every line,
// file and response, so escaping and parsing are the library's, never hand-built strings.
//
// Writers use Json (keys stay in insertion order, so a line reads field by field in the order its
// schema documents) and jsonFixed for measured numbers: each field keeps the precision it has
// always had (a loss to 6 decimals, a throughput to 1), and a non-finite number, which JSON
// cannot hold, becomes null. Pure functions, any thread.

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace loco {

using Json = nlohmann::ordered_json;

// `v` rounded to `decimals` places (an integer for 0), or null when it is NaN or infinite.
Json jsonFixed(double v, int decimals);

// `v` to `digits` significant digits (an error of 1.234e-05), or null when not finite.
Json jsonSignificant(double v, int digits);

// One line of JSON (no newline). Bytes that are not UTF-8 (a peer name, a log message) are
// replaced by U+FFFD rather than failing the write.
std::string jsonDump(const Json& j);

// The object in `text`, or nullopt when it is not JSON or not an object. Never throws.
std::optional<nlohmann::json> parseJsonObject(std::string_view text);

}  // namespace loco
