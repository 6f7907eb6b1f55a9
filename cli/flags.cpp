#include "cli/flags.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>

namespace loco::cli {

EnvLookup processEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

std::string envName(const std::string& flag) {
  std::string out = "LOCO_";
  for (char c : flag)
    out.push_back(c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  return out;
}

Flags::Flags(std::string command, std::string summary, std::vector<FlagSpec> specs)
    : command_(std::move(command)), summary_(std::move(summary)), specs_(std::move(specs)) {
  specs_.push_back({"log-level", "trace, debug, info, warn, error or off", "info"});
  specs_.push_back({"log-format", "text or json (one JSON object per line)", "text"});
}

const FlagSpec* Flags::find(const std::string& name) const {
  auto it =
      std::find_if(specs_.begin(), specs_.end(), [&](const FlagSpec& s) { return s.name == name; });
  return it == specs_.end() ? nullptr : &*it;
}

Status Flags::parse(const std::vector<std::string>& args, const EnvLookup& env) {
  std::map<std::string, std::vector<std::string>> cli;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      positional_.insert(positional_.end(), args.begin() + static_cast<long>(i) + 1, args.end());
      break;
    }
    if (a == "-h" || a == "--help") {
      help_ = true;
      continue;
    }
    if (a.rfind("--", 0) != 0) {
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const FlagSpec* spec = find(name);
    if (spec == nullptr) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("unknown flag --{} for `loco {}` (see `loco {} --help`)", name,
                                command_, command_));
    }
    if (!value) {
      if (spec->is_bool) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return Status(StatusCode::kInvalidArgument, fmt::format("flag --{} needs a value", name));
      }
    }
    if (spec->is_bool && *value != "true" && *value != "false" && *value != "1" && *value != "0") {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("flag --{} takes true or false, not '{}'", name, *value));
    }
    auto& slot = cli[name];
    if (!slot.empty() && !spec->repeated) {
      return Status(StatusCode::kInvalidArgument, fmt::format("flag --{} given twice", name));
    }
    slot.push_back(*value);
  }
  for (const FlagSpec& spec : specs_) {
    if (auto it = cli.find(spec.name); it != cli.end()) {
      values_[spec.name] = it->second;
    } else if (auto e = env(envName(spec.name)); e.has_value()) {
      values_[spec.name] = {*e};
    }
  }
  return Status();
}

bool Flags::isSet(const std::string& name) const {
  return values_.count(name) != 0;
}

std::string Flags::get(const std::string& name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second.back();
  const FlagSpec* spec = find(name);
  return spec ? spec->default_value : "";
}

std::vector<std::string> Flags::getAll(const std::string& name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  return {};
}

bool Flags::getBool(const std::string& name) const {
  std::string v = get(name);
  return v == "true" || v == "1";
}

Result<std::int64_t> Flags::getInt(const std::string& name, std::int64_t min,
                                   std::int64_t max) const {
  std::string v = get(name);
  std::int64_t out = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (v.empty() || ec != std::errc() || ptr != v.data() + v.size() || out < min || out > max) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--{} (or {}) must be an integer from {} to {}, got '{}'", name,
                              envName(name), min, max, v));
  }
  return out;
}

Result<bool> Flags::getOnOff(const std::string& name) const {
  const std::string v = get(name);
  if (v == "on" || v == "off") return v == "on";
  return Status(StatusCode::kInvalidArgument,
                fmt::format("--{} (or {}) takes on or off, got '{}'", name, envName(name), v));
}

std::string Flags::usage() const {
  std::string out =
      fmt::format("usage: loco {} [flags]\n  {}\n\nflags (each also as an environment variable):\n",
                  command_, summary_);
  for (const FlagSpec& s : specs_) {
    std::string left = s.is_bool ? fmt::format("--{}", s.name) : fmt::format("--{} VALUE", s.name);
    out += fmt::format("  {:<28} {}", left, s.help);
    if (!s.default_value.empty() && !s.is_bool)
      out += fmt::format(" (default {})", s.default_value);
    out += fmt::format(" [{}]\n", envName(s.name));
  }
  return out;
}

}  // namespace loco::cli
