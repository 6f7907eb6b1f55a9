#include "p2p/base/log.h"

#include "p2p/base/json.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>

namespace loco {
namespace {

spdlog::level::level_enum toSpd(LogLevel l) {
  switch (l) {
    case LogLevel::kTrace:
      return spdlog::level::trace;
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
    case LogLevel::kOff:
      return spdlog::level::off;
  }
  return spdlog::level::info;
}

// One JSON object per line: {"ts":"…","level":"info","logger":"peer","process":"…","msg":"…"}.
class JsonFormatter final : public spdlog::formatter {
 public:
  explicit JsonFormatter(std::string process) : process_(std::move(process)) {}
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    spdlog::memory_buf_t ts;
    ts_.format(msg, ts);
    const auto level = spdlog::level::to_string_view(msg.level);
    Json line{{"ts", std::string(ts.data(), ts.size())},
              {"level", std::string(level.data(), level.size())},
              {"logger", std::string(msg.logger_name.data(), msg.logger_name.size())}};
    if (!process_.empty()) line["process"] = process_;
    line["msg"] = std::string(msg.payload.data(), msg.payload.size());
    const std::string text = jsonDump(line) + "\n";
    dest.append(text.data(), text.data() + text.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>(process_);
  }

 private:
  std::string process_;
  spdlog::pattern_formatter ts_{"%Y-%m-%dT%H:%M:%S.%e%z", spdlog::pattern_time_type::local, ""};
};

struct LogState {
  std::mutex mu;
  std::atomic<int> level{static_cast<int>(LogLevel::kInfo)};
  LogFormat format = LogFormat::kText;
  std::string process;
  spdlog::sink_ptr sink;
  std::map<std::string, std::shared_ptr<spdlog::logger>, std::less<>> loggers;
};

LogState& state() {
  static LogState* s = new LogState();  // never destroyed: logging may happen during exit
  return *s;
}

void applyFormat(LogState& s) {
  if (!s.sink) s.sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  if (s.format == LogFormat::kJson) {
    s.sink->set_formatter(std::make_unique<JsonFormatter>(s.process));
  } else {
    std::string pattern = "%Y-%m-%d %H:%M:%S.%e %^%-5l%$ [%n]";
    if (!s.process.empty()) pattern += " " + s.process;
    pattern += " %v";
    s.sink->set_formatter(std::make_unique<spdlog::pattern_formatter>(pattern));
  }
}

spdlog::logger& loggerFor(std::string_view name) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (!s.sink) applyFormat(s);
  auto it = s.loggers.find(name);
  if (it == s.loggers.end()) {
    auto l = std::make_shared<spdlog::logger>(std::string(name), s.sink);
    l->set_level(spdlog::level::trace);  // filtering happens in enabled()
    l->flush_on(spdlog::level::trace);   // logs go to files that tests and `loco local` read live
    it = s.loggers.emplace(std::string(name), std::move(l)).first;
  }
  return *it->second;
}

}  // namespace

Result<LogLevel> parseLogLevel(std::string_view s) {
  if (s == "trace") return LogLevel::kTrace;
  if (s == "debug") return LogLevel::kDebug;
  if (s == "info") return LogLevel::kInfo;
  if (s == "warn" || s == "warning") return LogLevel::kWarn;
  if (s == "error") return LogLevel::kError;
  if (s == "off") return LogLevel::kOff;
  return Status(
      StatusCode::kInvalidArgument,
      fmt::format("unknown log level '{}' (use trace, debug, info, warn, error or off)", s));
}

Result<LogFormat> parseLogFormat(std::string_view s) {
  if (s == "text") return LogFormat::kText;
  if (s == "json") return LogFormat::kJson;
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown log format '{}' (use text or json)", s));
}

void configureLogging(LogLevel level, LogFormat format, std::string_view process) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.level.store(static_cast<int>(level));
  s.format = format;
  s.process = std::string(process);
  applyFormat(s);
}

namespace logdetail {
bool enabled(std::string_view /*logger*/, LogLevel level) {
  return static_cast<int>(level) >= state().level.load(std::memory_order_relaxed) &&
         level != LogLevel::kOff;
}
void write(std::string_view logger, LogLevel level, std::string_view message) {
  loggerFor(logger).log(toSpd(level), "{}", message);
}
}  // namespace logdetail

}  // namespace loco
