#pragma once
// Command-line flags with environment twins: every `--some-flag` can also be given as
// LOCO_SOME_FLAG. Precedence: command line, then environment, then the default. Pure apart from
// the environment lookup, which is injectable for tests.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "p2p/base/status.h"

namespace loco::cli {

struct FlagSpec {
  std::string name;  // without dashes: "heartbeat-timeout"
  std::string help;
  std::string default_value;  // "" and !required: unset
  bool is_bool = false;       // `--idle` alone means true
  bool repeated = false;      // may be given several times
};

using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup processEnv();
std::string envName(const std::string& flag);  // "heartbeat-timeout" -> "LOCO_HEARTBEAT_TIMEOUT"

class Flags {
 public:
  Flags(std::string command, std::string summary, std::vector<FlagSpec> specs);

  // Parses args (without the program and command names). Positional arguments are collected.
  // kInvalidArgument names the unknown flag or bad value.
  Status parse(const std::vector<std::string>& args, const EnvLookup& env);

  bool helpRequested() const { return help_; }
  bool isSet(const std::string& name) const;  // given on the command line or in the environment
  std::string get(const std::string& name) const;
  std::vector<std::string> getAll(const std::string& name) const;
  bool getBool(const std::string& name) const;
  // Integer in [min, max]; kInvalidArgument names the flag, its env twin and the range.
  Result<std::int64_t> getInt(const std::string& name, std::int64_t min, std::int64_t max) const;
  // An on|off flag; kInvalidArgument names the flag, its env twin and the value for anything else.
  Result<bool> getOnOff(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
  std::string usage() const;

 private:
  const FlagSpec* find(const std::string& name) const;
  std::string command_;
  std::string summary_;
  std::vector<FlagSpec> specs_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
  bool help_ = false;
};

}  // namespace loco::cli
