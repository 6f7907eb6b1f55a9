#pragma once
// Logging: one named logger per layer ("p2p", "coord", "peer", "cli", ...), backed by spdlog (kept
// private to this library). Call configureLogging() once at start-up; until then messages go to
// stderr as text at info level.
//
//   LOG_INFO(kLogPeer, "admitted peer={} epoch={}", id, epoch);
//
// Thread-safe. Formatting happens only when the level is enabled.

#include <fmt/format.h>

#include <string>
#include <string_view>

#include "p2p/base/status.h"

namespace loco {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };
enum class LogFormat { kText, kJson };

Result<LogLevel> parseLogLevel(std::string_view s);
Result<LogFormat> parseLogFormat(std::string_view s);

// `process` names this process in every line (e.g. "coordinator", "peer 3f2a9c01").
void configureLogging(LogLevel level, LogFormat format, std::string_view process = "");

namespace logdetail {
bool enabled(std::string_view logger, LogLevel level);
void write(std::string_view logger, LogLevel level, std::string_view message);
template <typename... Args>
void log(std::string_view logger, LogLevel level, fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(logger, level)) write(logger, level, fmt::format(f, std::forward<Args>(args)...));
}
}  // namespace logdetail

inline constexpr std::string_view kLogP2p = "p2p";
inline constexpr std::string_view kLogCoord = "coord";
inline constexpr std::string_view kLogPeer = "peer";
inline constexpr std::string_view kLogCli = "cli";

}  // namespace loco

#define LOG_TRACE(logger, ...) ::loco::logdetail::log(logger, ::loco::LogLevel::kTrace, __VA_ARGS__)
#define LOG_DEBUG(logger, ...) ::loco::logdetail::log(logger, ::loco::LogLevel::kDebug, __VA_ARGS__)
#define LOG_INFO(logger, ...) ::loco::logdetail::log(logger, ::loco::LogLevel::kInfo, __VA_ARGS__)
#define LOG_WARN(logger, ...) ::loco::logdetail::log(logger, ::loco::LogLevel::kWarn, __VA_ARGS__)
#define LOG_ERROR(logger, ...) ::loco::logdetail::log(logger, ::loco::LogLevel::kError, __VA_ARGS__)
