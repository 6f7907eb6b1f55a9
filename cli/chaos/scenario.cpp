#include "cli/chaos/scenario.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string_view>

#include "cli/lab/config.h"

#define TOML_EXCEPTIONS 0
// toml++ 3.3's debug assertions are reachable from malformed input (loco_scenario_fuzz found
// several, e.g. `[}` inside an array); it reports those inputs as errors once they are compiled
// out, as a release build does. Every build compiles them out, so the fuzz build judges what a
// release build does. The inputs that reach undefined behaviour instead are refused before
// toml++ sees them (unsafeForToml below).
#define TOML_ASSERT(expr) static_cast<void>(0)
#include <toml++/toml.h>

namespace loco::chaos {
namespace {

constexpr int kMaxPeers = 32;
constexpr double kMaxTime = 7 * 24 * 3600;

struct KindName {
  FaultKind kind;
  const char* name;
};
constexpr KindName kKinds[] = {
    {FaultKind::kKill, "kill"},
    {FaultKind::kTerm, "term"},
    {FaultKind::kStop, "stop"},
    {FaultKind::kPartition, "partition"},
    {FaultKind::kHeal, "heal"},
    {FaultKind::kLoss, "loss"},
    {FaultKind::kDelay, "delay"},
    {FaultKind::kRate, "rate"},
    {FaultKind::kSlowHost, "slow_host"},
    {FaultKind::kStallJoiner, "stall_joiner"},
    {FaultKind::kDiskFull, "disk_full"},
    {FaultKind::kRestartFromCheckpoint, "restart_from_checkpoint"},
    {FaultKind::kFailover, "failover"},
};

// Errors name the file and line.
class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  Status error(const toml::node& at, const std::string& what) const {
    return error(static_cast<int>(at.source().begin.line), what);
  }
  Status error(int line, const std::string& what) const {
    return Status(StatusCode::kInvalidArgument, fmt::format("{}:{}: {}", path_, line, what));
  }

  Result<double> number(const toml::node& v, const std::string& key, double min, double max) const {
    double d = 0;
    if (auto i = v.as_integer()) {
      d = static_cast<double>(i->get());
    } else if (auto f = v.as_floating_point()) {
      d = f->get();
    } else {
      return error(v, fmt::format("{} must be a number", key));
    }
    if (!std::isfinite(d) || d < min || d > max) {
      return error(v, fmt::format("{} must be between {:g} and {:g}, got {:g}", key, min, max, d));
    }
    return d;
  }
  Result<int> integer(const toml::node& v, const std::string& key, int min, int max) const {
    auto i = v.as_integer();
    if (!i) return error(v, fmt::format("{} must be a whole number", key));
    if (i->get() < min || i->get() > max) {
      return error(v, fmt::format("{} must be between {} and {}, got {}", key, min, max, i->get()));
    }
    return static_cast<int>(i->get());
  }
  Result<std::string> string(const toml::node& v, const std::string& key) const {
    auto s = v.as_string();
    if (!s) return error(v, fmt::format("{} must be a string", key));
    return std::string(s->get());
  }
  Result<bool> boolean(const toml::node& v, const std::string& key) const {
    auto b = v.as_boolean();
    if (!b) return error(v, fmt::format("{} must be true or false", key));
    return b->get();
  }

  // Calls `take(key, value)` for every key of `table`; an unknown key (take returns false) fails
  // with the list of known ones.
  Status keys(
      const toml::table& table, const std::string& where, const std::string& known,
      const std::function<Result<bool>(const std::string&, const toml::node&)>& take) const {
    for (auto&& [k, v] : table) {
      const std::string key(k.str());
      auto taken = take(key, v);
      if (!taken) return taken.status();
      if (!*taken) {
        return error(static_cast<int>(k.source().begin.line),
                     fmt::format("unknown key '{}' in {} (known: {})", key, where, known));
      }
    }
    return Status();
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// "peer-3" or "coordinator"; the peer must exist.
Status checkTarget(const Reader& r, int line, const std::string& target, int peers,
                   bool coordinator_ok) {
  if (target == "coordinator") {
    if (coordinator_ok) return Status();
    return r.error(line, "this fault acts on a peer, not on the coordinator");
  }
  int i = 0;
  if (target.rfind("peer-", 0) == 0) {
    try {
      std::size_t used = 0;
      i = std::stoi(target.substr(5), &used);
      if (used != target.size() - 5) i = 0;
    } catch (...) {
      i = 0;
    }
  }
  if (i < 1) {
    return r.error(line, fmt::format("target '{}' is not peer-N{}", target,
                                     coordinator_ok ? " or coordinator" : ""));
  }
  if (i > peers) {
    return r.error(line, fmt::format("target {} does not exist (the swarm has peer-1 to peer-{})",
                                     target, peers));
  }
  return Status();
}

Result<Fault> readFault(const Reader& r, const toml::table& t, const Scenario& s) {
  Fault f;
  f.line = static_cast<int>(t.source().begin.line);
  const auto* kind_node = t.get("kind");
  if (kind_node == nullptr) return r.error(f.line, "a [[fault]] needs kind = \"...\"");
  auto kind_name = r.string(*kind_node, "kind");
  if (!kind_name) return kind_name.status();
  auto kind = parseFaultKind(*kind_name);
  if (!kind) {
    std::string known;
    for (const auto& k : kKinds) known += (known.empty() ? "" : ", ") + std::string(k.name);
    return r.error(*kind_node,
                   fmt::format("unknown fault kind '{}' (known: {})", *kind_name, known));
  }
  f.kind = *kind;
  f.line = static_cast<int>(kind_node->source().begin.line);
  if (f.kind == FaultKind::kDiskFull || f.kind == FaultKind::kRestartFromCheckpoint)
    f.size_kib = 16;
  bool has_at = false, has_value = false, has_duration = false, has_target = false;
  const int hosts = s.swarm.hostCount();
  LOCO_RETURN_IF_ERROR(r.keys(
      t, "[[fault]]",
      "kind, at, after_round, duration, target, host, link, groups, loss, delay_ms, jitter_ms, "
      "rate_mbit, cpu, size_kib",
      [&](const std::string& key, const toml::node& v) -> Result<bool> {
        if (key == "kind") return true;
        if (key == "at") {
          if (auto n = v.as_integer(); n && n->get() < 0)
            return r.error(v, fmt::format("at must not be negative, got {}", n->get()));
          if (auto n = v.as_floating_point(); n && n->get() < 0)
            return r.error(v, fmt::format("at must not be negative, got {:g}", n->get()));
          auto d = r.number(v, "at (seconds after training starts)", 0, kMaxTime);
          if (!d) return d.status();
          f.at_s = *d;
          has_at = true;
          return true;
        }
        if (key == "after_round") {
          auto i = v.as_integer();
          if (!i || i->get() < 1)
            return r.error(v, "after_round must be a whole number of rounds, at least 1");
          f.after_round = static_cast<std::uint64_t>(i->get());
          has_at = true;
          return true;
        }
        if (key == "duration") {
          auto d = r.number(v, "duration (seconds)", 0.1, kMaxTime);
          if (!d) return d.status();
          f.duration_s = *d;
          has_duration = true;
          return true;
        }
        if (key == "target") {
          auto str = r.string(v, key);
          if (!str) return str.status();
          f.target = *str;
          has_target = true;
          return true;
        }
        if (key == "host") {
          auto i = v.as_integer();
          if (!i) return r.error(v, "host must be a lab host index");
          if (i->get() < 1 || i->get() > hosts) {
            return r.error(v, fmt::format("host {} does not exist (the lab has hosts 1 to {})",
                                          i->get(), hosts));
          }
          f.host = static_cast<int>(i->get());
          return true;
        }
        if (key == "link") {
          auto str = r.string(v, key);
          if (!str) return str.status();
          auto dash = str->find('-');
          auto a = lab::parseNumber("link", str->substr(0, dash), 1, hosts);
          auto b = dash == std::string::npos
                       ? Result<double>(Status(StatusCode::kInvalidArgument, ""))
                       : lab::parseNumber("link", str->substr(dash + 1), 1, hosts);
          if (!a || !b || *a == *b) {
            return r.error(
                v, fmt::format("link '{}' is not I-J with two different hosts of 1 to {}", *str,
                               hosts));
          }
          f.link = *str;
          return true;
        }
        if (key == "groups") {
          auto str = r.string(v, key);
          if (!str) return str.status();
          auto groups = lab::parsePartition(*str, hosts);
          if (!groups) return r.error(v, groups.status().message());
          f.groups = *str;
          return true;
        }
        if (key == "loss" || key == "delay_ms" || key == "rate_mbit" || key == "cpu") {
          const double max = key == "loss" ? 1 : key == "cpu" ? lab::kMaxCpuCores : 100000;
          auto d = r.number(v, key, key == "cpu" ? 0.01 : 0, max);
          if (!d) return d.status();
          f.value = *d;
          has_value = true;
          return true;
        }
        if (key == "jitter_ms") {
          auto d = r.number(v, key, 0, 10000);
          if (!d) return d.status();
          f.jitter_ms = *d;
          return true;
        }
        if (key == "size_kib") {
          auto d = r.number(v, key, 4, 1 << 20);
          if (!d) return d.status();
          f.size_kib = *d;
          return true;
        }
        return false;
      }));
  const std::string kind_s = faultKindName(f.kind);
  if (!has_at)
    return r.error(f.line,
                   fmt::format("fault '{}' needs at = SECONDS or after_round = ROUNDS", kind_s));
  if (t.get("at") != nullptr && t.get("after_round") != nullptr)
    return r.error(*t.get("after_round"), "a fault has at or after_round, not both");
  // What each kind needs, and what it cannot take.
  auto need = [&](bool ok, const std::string& what) -> Status {
    return ok ? Status() : r.error(f.line, fmt::format("fault '{}' needs {}", kind_s, what));
  };
  auto value_key = [&]() -> std::string {
    switch (f.kind) {
      case FaultKind::kLoss:
        return "loss";
      case FaultKind::kDelay:
        return "delay_ms";
      case FaultKind::kRate:
      case FaultKind::kStallJoiner:
        return "rate_mbit";
      case FaultKind::kSlowHost:
        return "cpu";
      default:
        return "";
    }
  };
  // A value given under the wrong name (cpu for a loss fault) is a mistake, not a default.
  for (const char* key : {"loss", "delay_ms", "rate_mbit", "cpu"}) {
    if (t.get(key) != nullptr && value_key() != key) {
      return r.error(*t.get(key), fmt::format("fault '{}' takes no {}", kind_s, key));
    }
  }
  switch (f.kind) {
    case FaultKind::kKill:
    case FaultKind::kTerm:
      LOCO_RETURN_IF_ERROR(need(has_target, "target = \"peer-N\" or \"coordinator\""));
      LOCO_RETURN_IF_ERROR(checkTarget(r, f.line, f.target, s.swarm.peers, true));
      break;
    case FaultKind::kStop:
      LOCO_RETURN_IF_ERROR(need(has_target, "target = \"peer-N\" or \"coordinator\""));
      LOCO_RETURN_IF_ERROR(checkTarget(r, f.line, f.target, s.swarm.peers, true));
      LOCO_RETURN_IF_ERROR(need(has_duration, "duration = SECONDS (then SIGCONT)"));
      break;
    case FaultKind::kStallJoiner:
    case FaultKind::kDiskFull:
    case FaultKind::kRestartFromCheckpoint:
      LOCO_RETURN_IF_ERROR(need(has_target, "target = \"peer-N\""));
      LOCO_RETURN_IF_ERROR(checkTarget(r, f.line, f.target, s.swarm.peers, false));
      if (f.kind != FaultKind::kRestartFromCheckpoint)
        LOCO_RETURN_IF_ERROR(need(has_duration, "duration = SECONDS"));
      if (f.kind == FaultKind::kStallJoiner && !has_value) f.value = 2;  // Mbit/s while stalled
      break;
    case FaultKind::kPartition:
      LOCO_RETURN_IF_ERROR(need(!f.groups.empty(), "groups = \"1,2/3,4\" (lab hosts)"));
      break;
    case FaultKind::kHeal:
      break;
    case FaultKind::kFailover:
      LOCO_RETURN_IF_ERROR(need(
          s.swarm.standby, "a standby coordinator ([swarm] standby = true, before the faults)"));
      if (has_target) {
        return r.error(f.line,
                       "fault 'failover' takes no target (it kills whichever coordinator holds "
                       "the group)");
      }
      break;
    case FaultKind::kLoss:
    case FaultKind::kDelay:
    case FaultKind::kRate:
      LOCO_RETURN_IF_ERROR(need(has_value, value_key() + " = VALUE"));
      LOCO_RETURN_IF_ERROR(need(has_duration, "duration = SECONDS"));
      break;
    case FaultKind::kSlowHost:
      LOCO_RETURN_IF_ERROR(need(f.host > 0, "host = I (a lab host)"));
      LOCO_RETURN_IF_ERROR(need(has_value, "cpu = CORES (e.g. 0.33)"));
      LOCO_RETURN_IF_ERROR(need(has_duration, "duration = SECONDS"));
      break;
  }
  auto refuse = [&](bool given, const char* key) -> Status {
    return given ? r.error(f.line, fmt::format("fault '{}' takes no {}", kind_s, key)) : Status();
  };
  const bool process = f.processFault();
  LOCO_RETURN_IF_ERROR(refuse(has_target && !process, "target"));
  LOCO_RETURN_IF_ERROR(refuse(!f.groups.empty() && f.kind != FaultKind::kPartition, "groups"));
  LOCO_RETURN_IF_ERROR(
      refuse(!f.link.empty() && f.kind != FaultKind::kLoss && f.kind != FaultKind::kDelay, "link"));
  LOCO_RETURN_IF_ERROR(
      refuse(f.host > 0 && f.kind != FaultKind::kRate && f.kind != FaultKind::kSlowHost, "host"));
  LOCO_RETURN_IF_ERROR(refuse(
      has_duration &&
          (f.kind == FaultKind::kKill || f.kind == FaultKind::kTerm || f.kind == FaultKind::kHeal ||
           f.kind == FaultKind::kRestartFromCheckpoint || f.kind == FaultKind::kFailover),
      "duration (it is instantaneous)"));
  return f;
}

}  // namespace

std::string faultKindName(FaultKind k) {
  for (const auto& e : kKinds) {
    if (e.kind == k) return e.name;
  }
  return "?";
}

std::optional<FaultKind> parseFaultKind(const std::string& name) {
  for (const auto& e : kKinds) {
    if (name == e.name) return e.kind;
  }
  return std::nullopt;
}

std::vector<FaultKind> allFaultKinds() {
  std::vector<FaultKind> out;
  for (const auto& e : kKinds) out.push_back(e.kind);
  return out;
}

bool Fault::processFault() const {
  switch (kind) {
    case FaultKind::kKill:
    case FaultKind::kTerm:
    case FaultKind::kStop:
    case FaultKind::kStallJoiner:
    case FaultKind::kDiskFull:
    case FaultKind::kRestartFromCheckpoint:
    case FaultKind::kFailover:
      return true;
    default:
      return false;
  }
}

std::string Fault::describe() const {
  const std::string for_s = duration_s > 0 ? fmt::format(" for {:g} s", duration_s) : "";
  const std::string where = !link.empty() ? " on link " + link
                            : host > 0    ? fmt::format(" on host {}", host)
                                          : " everywhere";
  switch (kind) {
    case FaultKind::kKill:
      return "kill -9 " + target;
    case FaultKind::kTerm:
      return "SIGTERM " + target;
    case FaultKind::kStop:
      return "SIGSTOP " + target + for_s;
    case FaultKind::kPartition:
      return "partition " + groups + for_s;
    case FaultKind::kHeal:
      return "heal";
    case FaultKind::kLoss:
      return fmt::format("loss {:g}{}{}", value, where, for_s);
    case FaultKind::kDelay:
      return fmt::format("delay {:g} ms (jitter {:g}){}{}", value, jitter_ms, where, for_s);
    case FaultKind::kRate:
      return fmt::format("rate {:g} Mbit/s{}{}", value, where, for_s);
    case FaultKind::kSlowHost:
      return fmt::format("host {} at {:g} cores{}", host, value, for_s);
    case FaultKind::kStallJoiner:
      return fmt::format("{} rejoins and stalls mid-download{}", target, for_s);
    case FaultKind::kDiskFull:
      return fmt::format("{}'s checkpoint disk full ({:g} KiB){}", target, size_kib, for_s);
    case FaultKind::kRestartFromCheckpoint:
      return target + " killed and restarted from its checkpoint";
    case FaultKind::kFailover:
      return target.empty() ? "failover: kill -9 the coordinator in use"
                            : "failover: kill -9 " + target + " (in use)";
  }
  return "?";
}

std::vector<std::string> Scenario::trainingFlags() const {
  std::vector<std::string> out = swarm.training;
  if (std::find(out.begin(), out.end(), "--seed") == out.end()) {
    out.push_back("--seed");
    out.push_back(std::to_string(seed));
  }
  return out;
}

bool Scenario::needsCheckpoints() const {
  if (swarm.checkpoints) return true;
  for (const Fault& f : faults) {
    if (f.kind == FaultKind::kDiskFull || f.kind == FaultKind::kRestartFromCheckpoint) return true;
  }
  return false;
}

namespace {

// toml++ 3.3 (Debian's) asserts, and in a release build assumes, that a table header starts with
// a key character or a quote, and a header like `[[(fault]]` breaks that; NUL bytes and some
// non-ASCII characters break it elsewhere (all found by loco_scenario_fuzz). Such a file is
// refused here, with its line, before toml++ sees it. A scan of the document's structure: headers
// are only looked for outside strings, comments and multi-line values.
std::optional<std::pair<int, std::string>> unsafeForToml(const std::string& text) {
  if (const auto nul = text.find('\0'); nul != std::string::npos) {
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<long>(nul), '\n');
    return std::pair{static_cast<int>(line), std::string("a NUL byte (is this a text file?)")};
  }
  // toml++ 3.3 reaches an unreachable branch (undefined behaviour) when it classifies some
  // non-ASCII characters (U+00A1 to U+0499) as whitespace, between values and in error paths:
  // scenario files are ASCII, comments included.
  const auto wide = std::find_if(text.begin(), text.end(),
                                 [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
  if (wide != text.end()) {
    const auto line = 1 + std::count(text.begin(), wide, '\n');
    return std::pair{static_cast<int>(line),
                     std::string("a non-ASCII character (scenario files are ASCII text)")};
  }
  int line = 1, depth = 0;  // depth: open [ and { of a value
  bool at_line_start = true;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      at_line_start = true;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r') continue;
    const bool line_start = at_line_start;
    at_line_start = false;
    if (c == '#') {  // a comment, to the end of the line
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;
    } else if (c == '"' || c == '\'') {  // a string, maybe multi-line
      const bool multi = text.compare(i, 3, std::string(3, c)) == 0;
      i += multi ? 3 : 1;
      for (; i < text.size(); ++i) {
        if (text[i] == '\n') ++line;
        if (c == '"' && text[i] == '\\') {
          if (i + 1 < text.size() && text[i + 1] == '\n') ++line;
          ++i;
        } else if (text[i] == c && (!multi || text.compare(i, 3, std::string(3, c)) == 0)) {
          if (multi) i += 2;
          break;
        }
      }
    } else if (c == '[' && depth == 0 && line_start) {  // a table header
      std::size_t k = i + 1;
      if (k < text.size() && text[k] == '[') ++k;
      while (k < text.size() && (text[k] == ' ' || text[k] == '\t')) ++k;
      const char first = k < text.size() ? text[k] : '\n';
      const bool key_start = std::isalnum(static_cast<unsigned char>(first)) || first == '_' ||
                             first == '-' || first == '"' || first == '\'';
      if (!key_start)
        return std::pair{line, fmt::format("a table header must start with a key ({})",
                                           std::string_view(text).substr(i, k + 1 - i))};
      i = k - 1;
      depth = 0;
      while (i + 1 < text.size() && text[i + 1] != '\n') ++i;  // the rest of the header line
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::nullopt;
}

}  // namespace

Result<Scenario> parseScenario(const std::string& text, const std::string& path) {
  Reader r(path);
  if (auto bad = unsafeForToml(text)) {
    return r.error(bad->first, "not valid TOML: " + bad->second);
  }
  toml::parse_result parsed = toml::parse(text, path);
  if (!parsed) {
    const auto& e = parsed.error();
    return r.error(static_cast<int>(e.source().begin.line),
                   fmt::format("not valid TOML: {}", e.description()));
  }
  const toml::table& root = parsed.table();
  Scenario s;
  s.path = path;
  const toml::array* faults = nullptr;
  // [swarm] first: the faults are checked against its peers and hosts.
  if (const auto* swarm = root.get("swarm")) {
    const auto* t = swarm->as_table();
    if (t == nullptr) return r.error(*swarm, "swarm must be a table ([swarm])");
    LOCO_RETURN_IF_ERROR(r.keys(
        *t, "[swarm]",
        "peers, hosts, heartbeat_interval_ms, heartbeat_timeout_ms, restart_backoff_ms, training, "
        "checkpoints, standby, timeout_s",
        [&](const std::string& key, const toml::node& v) -> Result<bool> {
          auto set_int = [&](int& out, int min, int max) -> Result<bool> {
            auto i = r.integer(v, key, min, max);
            if (!i) return i.status();
            out = *i;
            return true;
          };
          if (key == "peers") return set_int(s.swarm.peers, 1, kMaxPeers);
          if (key == "hosts") return set_int(s.swarm.hosts, 2, lab::kMaxHosts);
          if (key == "heartbeat_interval_ms")
            return set_int(s.swarm.heartbeat_interval_ms, 10, 60000);
          if (key == "heartbeat_timeout_ms")
            return set_int(s.swarm.heartbeat_timeout_ms, 100, 600000);
          if (key == "restart_backoff_ms") return set_int(s.swarm.restart_backoff_ms, 0, 600000);
          if (key == "checkpoints" || key == "standby") {
            auto b = r.boolean(v, key);
            if (!b) return b.status();
            (key == "standby" ? s.swarm.standby : s.swarm.checkpoints) = *b;
            return true;
          }
          if (key == "timeout_s") {
            auto d = r.number(v, key, 10, kMaxTime);
            if (!d) return d.status();
            s.swarm.timeout_s = *d;
            return true;
          }
          if (key == "training") {
            const auto* a = v.as_array();
            if (a == nullptr) return r.error(v, "training must be a list of strings");
            for (const auto& item : *a) {
              auto str = r.string(item, "every item of training");
              if (!str) return str.status();
              for (const char* owned :
                   {"--peers", "--out", "--lab", "--idle", "--checkpoint-dir", "--resume",
                    "--heartbeat-timeout", "--heartbeat-interval", "--standby"}) {
                if (*str == owned) {
                  return r.error(item,
                                 fmt::format("training: {} is set by loco chaos itself", owned));
                }
              }
              s.swarm.training.push_back(*str);
            }
            return true;
          }
          return false;
        }));
  }
  Status root_keys = r.keys(
      root, "the scenario", "name, seed, [swarm], [lab], [checks], [[fault]]",
      [&](const std::string& key, const toml::node& v) -> Result<bool> {
        if (key == "swarm") return true;
        if (key == "name") {
          auto str = r.string(v, key);
          if (!str) return str.status();
          if (Status st = lab::validateLabName(*str); !st.isOk()) return r.error(v, st.message());
          s.name = *str;
          return true;
        }
        if (key == "seed") {
          auto i = v.as_integer();
          if (!i || i->get() < 0) return r.error(v, "seed must be a whole number >= 0");
          s.seed = static_cast<std::uint64_t>(i->get());
          return true;
        }
        if (key == "lab") {
          const auto* t = v.as_table();
          if (t == nullptr) return r.error(v, "lab must be a table ([lab])");
          LOCO_RETURN_IF_ERROR(
              r.keys(*t, "[lab]", "delay_ms, jitter_ms, loss, rate_mbit",
                     [&](const std::string& k, const toml::node& x) -> Result<bool> {
                       double* out = k == "delay_ms"    ? &s.lab.delay_ms
                                     : k == "jitter_ms" ? &s.lab.jitter_ms
                                     : k == "loss"      ? &s.lab.loss
                                     : k == "rate_mbit" ? &s.lab.rate_mbit
                                                        : nullptr;
                       if (out == nullptr) return false;
                       auto d = r.number(x, k, 0, k == "loss" ? 1 : 100000);
                       if (!d) return d.status();
                       *out = *d;
                       return true;
                     }));
          return true;
        }
        if (key == "checks") {
          const auto* t = v.as_table();
          if (t == nullptr) return r.error(v, "checks must be a table ([checks])");
          LOCO_RETURN_IF_ERROR(r.keys(
              *t, "[checks]", "baseline, val_loss_band, hang_margin_s, growth_limit",
              [&](const std::string& k, const toml::node& x) -> Result<bool> {
                if (k == "baseline") {
                  if (auto str = x.as_string()) {
                    if (str->get() != "run" && str->get() != "none")
                      return r.error(x, "baseline is \"run\", \"none\" or a validation loss");
                    s.checks.baseline = str->get();
                    return true;
                  }
                  auto d = r.number(x, k, 0, 1e6);
                  if (!d) return d.status();
                  s.checks.baseline = fmt::format("{}", *d);
                  return true;
                }
                double* out = k == "val_loss_band"   ? &s.checks.val_loss_band
                              : k == "hang_margin_s" ? &s.checks.hang_margin_s
                              : k == "growth_limit"  ? &s.checks.growth_limit
                                                     : nullptr;
                if (out == nullptr) return false;
                auto d = r.number(x, k, 0, 1e6);
                if (!d) return d.status();
                *out = *d;
                return true;
              }));
          return true;
        }
        if (key == "fault") {
          faults = v.as_array();
          if (faults == nullptr) return r.error(v, "fault must be an array of tables ([[fault]])");
          return true;
        }
        return false;
      });
  if (!root_keys.isOk()) return root_keys;
  if (s.swarm.hostCount() < 2) return r.error(1, "the lab needs at least 2 hosts");
  if (s.swarm.heartbeat_timeout_ms <= s.swarm.heartbeat_interval_ms)
    return r.error(1, "heartbeat_timeout_ms must exceed heartbeat_interval_ms");
  if (faults != nullptr) {
    for (const auto& node : *faults) {
      const auto* t = node.as_table();
      if (t == nullptr) return r.error(node, "every fault must be a table ([[fault]])");
      auto f = readFault(r, *t, s);
      if (!f) return f.status();
      if (!s.faults.empty() && (s.faults.front().after_round > 0) != (f->after_round > 0)) {
        return r.error(f->line,
                       "every fault of a scenario uses at (seconds) or every one uses "
                       "after_round (rounds), not a mix");
      }
      s.faults.push_back(*f);
    }
  }
  std::stable_sort(s.faults.begin(), s.faults.end(), [](const Fault& a, const Fault& b) {
    return a.after_round != b.after_round ? a.after_round < b.after_round : a.at_s < b.at_s;
  });
  return s;
}

Result<Scenario> loadScenario(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status(StatusCode::kNotFound, fmt::format("cannot read scenario {}", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return parseScenario(ss.str(), path);
}

Scenario randomScenario(const Scenario& base, std::uint64_t seed, double duration_s,
                        const std::vector<FaultKind>& kinds, bool coordinator_faults) {
  Scenario s = base;
  s.path.clear();
  s.seed = seed;
  s.faults.clear();
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 1);
  auto uniform = [&](double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng);
  };
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto round1 = [](double v) { return std::round(v * 10) / 10; };
  const int peers = s.swarm.peers;
  const int hosts = s.swarm.hostCount();
  std::vector<FaultKind> usable;
  for (FaultKind k : kinds) {
    if (k == FaultKind::kHeal) continue;  // partitions heal themselves here
    if (k == FaultKind::kPartition && hosts < 3) continue;
    if (k == FaultKind::kFailover && !(coordinator_faults && s.swarm.standby)) continue;
    usable.push_back(k);
  }
  if (usable.empty()) return s;
  double t = 15;
  while (t < duration_s - 30) {
    Fault f;
    f.kind = usable[static_cast<std::size_t>(pick(0, static_cast<int>(usable.size()) - 1))];
    f.at_s = round1(t);
    const std::string peer = fmt::format("peer-{}", pick(1, peers));
    switch (f.kind) {
      case FaultKind::kKill:
      case FaultKind::kTerm:
      case FaultKind::kStop:
        f.target = coordinator_faults && uniform(0, 1) < 0.2 ? "coordinator" : peer;
        if (f.kind == FaultKind::kStop) f.duration_s = round1(uniform(3, 12));
        break;
      case FaultKind::kPartition: {
        // A minority of peer hosts apart from the rest (the coordinator's host 1 stays with the
        // majority).
        std::vector<int> others;
        for (int h = 2; h <= hosts; ++h) others.push_back(h);
        std::shuffle(others.begin(), others.end(), rng);
        const int cut = pick(1, std::max(1, static_cast<int>(others.size() - 1) / 2));
        std::vector<int> minority(others.begin(), others.begin() + cut);
        std::vector<int> majority{1};
        majority.insert(majority.end(), others.begin() + cut, others.end());
        std::sort(minority.begin(), minority.end());
        std::sort(majority.begin(), majority.end());
        f.groups = fmt::format("{}/{}", fmt::join(majority, ","), fmt::join(minority, ","));
        f.duration_s = round1(uniform(5, 20));
        break;
      }
      case FaultKind::kLoss:
        f.value = std::round(uniform(0.005, 0.05) * 1000) / 1000;
        f.duration_s = round1(uniform(10, 30));
        break;
      case FaultKind::kDelay:
        f.value = std::round(uniform(20, 100));
        f.jitter_ms = std::round(uniform(0, 20));
        f.duration_s = round1(uniform(10, 30));
        break;
      case FaultKind::kRate:
        f.value = std::round(uniform(5, 50));
        f.duration_s = round1(uniform(10, 30));
        break;
      case FaultKind::kSlowHost:
        f.host = pick(2, hosts);
        f.value = std::round(uniform(0.2, 0.6) * 100) / 100;
        f.duration_s = round1(uniform(15, 40));
        break;
      case FaultKind::kStallJoiner:
        f.target = peer;
        f.value = 2;
        f.duration_s = round1(uniform(5, 15));
        break;
      case FaultKind::kDiskFull:
        f.target = peer;
        f.duration_s = round1(uniform(10, 30));
        break;
      case FaultKind::kRestartFromCheckpoint:
        f.target = peer;
        break;
      case FaultKind::kHeal:
      case FaultKind::kFailover:
        break;
    }
    s.faults.push_back(f);
    // Time for the fault to act and the run to recover before the next one.
    t += f.duration_s + uniform(15, 40);
  }
  return s;
}

std::string toToml(const Scenario& s) {
  std::string out = fmt::format("name = \"{}\"\nseed = {}\n\n[swarm]\npeers = {}\n", s.name, s.seed,
                                s.swarm.peers);
  if (s.swarm.hosts > 0) out += fmt::format("hosts = {}\n", s.swarm.hosts);
  out += fmt::format(
      "heartbeat_interval_ms = {}\nheartbeat_timeout_ms = {}\nrestart_backoff_ms = {}\n"
      "checkpoints = {}\nstandby = {}\ntimeout_s = {:g}\ntraining = [",
      s.swarm.heartbeat_interval_ms, s.swarm.heartbeat_timeout_ms, s.swarm.restart_backoff_ms,
      s.swarm.checkpoints ? "true" : "false", s.swarm.standby ? "true" : "false",
      s.swarm.timeout_s);
  for (std::size_t i = 0; i < s.swarm.training.size(); ++i)
    out += fmt::format("{}\"{}\"", i ? ", " : "", s.swarm.training[i]);
  out +=
      fmt::format("]\n\n[lab]\ndelay_ms = {:g}\njitter_ms = {:g}\nloss = {:g}\nrate_mbit = {:g}\n",
                  s.lab.delay_ms, s.lab.jitter_ms, s.lab.loss, s.lab.rate_mbit);
  const bool numeric = s.checks.baseline != "run" && s.checks.baseline != "none";
  out += fmt::format(
      "\n[checks]\nbaseline = {}\nval_loss_band = {:g}\nhang_margin_s = {:g}\ngrowth_limit = "
      "{:g}\n",
      numeric ? s.checks.baseline : "\"" + s.checks.baseline + "\"", s.checks.val_loss_band,
      s.checks.hang_margin_s, s.checks.growth_limit);
  for (const Fault& f : s.faults) {
    out += fmt::format("\n[[fault]]\nkind = \"{}\"\n", faultKindName(f.kind));
    out += f.after_round > 0 ? fmt::format("after_round = {}\n", f.after_round)
                             : fmt::format("at = {:g}\n", f.at_s);
    if (f.duration_s > 0) out += fmt::format("duration = {:g}\n", f.duration_s);
    if (!f.target.empty()) out += fmt::format("target = \"{}\"\n", f.target);
    if (f.host > 0) out += fmt::format("host = {}\n", f.host);
    if (!f.link.empty()) out += fmt::format("link = \"{}\"\n", f.link);
    if (!f.groups.empty()) out += fmt::format("groups = \"{}\"\n", f.groups);
    switch (f.kind) {
      case FaultKind::kLoss:
        out += fmt::format("loss = {:g}\n", f.value);
        break;
      case FaultKind::kDelay:
        out += fmt::format("delay_ms = {:g}\njitter_ms = {:g}\n", f.value, f.jitter_ms);
        break;
      case FaultKind::kRate:
      case FaultKind::kStallJoiner:
        out += fmt::format("rate_mbit = {:g}\n", f.value);
        break;
      case FaultKind::kSlowHost:
        out += fmt::format("cpu = {:g}\n", f.value);
        break;
      case FaultKind::kDiskFull:
        out += fmt::format("size_kib = {:g}\n", f.size_kib);
        break;
      default:
        break;
    }
  }
  return out;
}

}  // namespace loco::chaos
