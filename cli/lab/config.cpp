#include "cli/lab/config.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>
#include <sstream>

namespace loco::lab {
namespace {

constexpr double kMaxDelayMs = 10000;
constexpr double kMaxRateMbit = 100000;
constexpr std::int64_t kMinRmem = 4096;
constexpr std::int64_t kMaxRmem = std::int64_t{1} << 30;

Status bad(std::string msg) {
  return Status(StatusCode::kInvalidArgument, std::move(msg));
}

Result<int> parseIndex(const std::string& what, const std::string& text, int hosts) {
  int v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) {
    return bad(fmt::format("{}: '{}' is not a host index", what, text));
  }
  if (v < 1 || v > hosts) {
    return bad(
        fmt::format("{}: host {} does not exist (the lab has hosts 1 to {})", what, v, hosts));
  }
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) out.push_back(cur);
  if (!s.empty() && s.back() == sep) out.emplace_back();
  return out;
}

// "key=value,key=value" -> pairs; the spec is named in errors.
Result<std::vector<std::pair<std::string, std::string>>> parseKv(const std::string& spec,
                                                                 const std::string& body) {
  std::vector<std::pair<std::string, std::string>> out;
  if (body.empty()) return bad(fmt::format("'{}': nothing after ':' (want key=value,...)", spec));
  for (const std::string& item : split(body, ',')) {
    auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) {
      return bad(fmt::format("'{}': '{}' is not key=value", spec, item));
    }
    out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  return out;
}

// Shortest text that reads back as the same double, so the state file loses nothing.
std::string num(double v) {
  return fmt::format("{}", v);
}

}  // namespace

const char* natName(NatMode mode) {
  switch (mode) {
    case NatMode::kCone:
      return "on";
    case NatMode::kSymmetric:
      return "symmetric";
    case NatMode::kNone:
      break;
  }
  return "off";
}

Result<double> parseNumber(const std::string& flag, const std::string& text, double min,
                           double max) {
  double v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || !std::isfinite(v)) {
    return bad(fmt::format("{} must be a number, got '{}'", flag, text));
  }
  if (v < min || v > max)
    return bad(fmt::format("{} must be between {} and {}, got {}", flag, num(min), num(max), text));
  return v;
}

Status validateLabName(const std::string& name) {
  auto invalid = [&](const char* why) {
    return bad(fmt::format(
        "bad lab name '{}': {} (want a lowercase letter, then up to 11 letters, digits or '-', "
        "not ending in a digit)",
        name, why));
  };
  if (name.empty()) return invalid("empty");
  if (name.size() > 12) return invalid("longer than 12 characters");
  if (!(name[0] >= 'a' && name[0] <= 'z')) return invalid("does not start with a lowercase letter");
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
      return invalid("has a character other than a-z, 0-9, '-'");
  }
  if (name.back() >= '0' && name.back() <= '9') return invalid("ends in a digit");
  return Status();
}

HostRates LabConfig::host(int i) const {
  HostRates r{rate_mbit, rate_mbit};
  if (auto it = host_overrides.find(i); it != host_overrides.end()) {
    if (it->second.up_mbit) r.up_mbit = *it->second.up_mbit;
    if (it->second.down_mbit) r.down_mbit = *it->second.down_mbit;
  }
  return r;
}

NatMode LabConfig::hostNat(int i) const {
  auto it = host_overrides.find(i);
  return it != host_overrides.end() && it->second.nat ? *it->second.nat : NatMode::kNone;
}

double LabConfig::hostCpu(int i) const {
  auto it = host_overrides.find(i);
  return it != host_overrides.end() && it->second.cpu ? *it->second.cpu : 0;
}

PairParams LabConfig::pair(int from, int to) const {
  PairParams p{delay_ms, jitter_ms, loss, 0};
  if (auto it = pair_overrides.find({std::min(from, to), std::max(from, to)});
      it != pair_overrides.end()) {
    const PairOverride& o = it->second;
    if (o.delay_ms) p.delay_ms = *o.delay_ms;
    if (o.jitter_ms) p.jitter_ms = *o.jitter_ms;
    if (o.loss) p.loss = *o.loss;
    if (o.rate_mbit) p.rate_mbit = *o.rate_mbit;
  }
  return p;
}

int LabConfig::groupOf(int i) const {
  for (std::size_t g = 0; g < partition.size(); ++g) {
    if (std::find(partition[g].begin(), partition[g].end(), i) != partition[g].end())
      return static_cast<int>(g);
  }
  return -1;
}

bool LabConfig::partitioned(int a, int b) const {
  int ga = groupOf(a), gb = groupOf(b);
  return ga >= 0 && gb >= 0 && ga != gb;
}

std::string LabConfig::address(int i) const {
  return fmt::format("10.213.{}.{}", subnet, i);
}
std::string LabConfig::vethName(int i) const {
  return fmt::format("lb{}h{}", subnet, i);
}
std::string LabConfig::mac(int i) const {
  return fmt::format("02:6c:62:{:02x}:00:{:02x}", subnet, i);
}

Status applyOptions(LabConfig& cfg, const LabOptions& o) {
  LabConfig next = cfg;
  if (o.hosts) {
    if (*o.hosts < 2 || *o.hosts > kMaxHosts) {
      return bad(fmt::format("--hosts must be between 2 and {}, got {}", kMaxHosts, *o.hosts));
    }
    next.hosts = *o.hosts;
  }
  auto bounded = [](const char* flag, std::optional<double> v, double max, double& out) -> Status {
    if (!v) return Status();
    if (!std::isfinite(*v) || *v < 0 || *v > max) {
      return bad(fmt::format("{} must be between 0 and {}, got {}", flag, num(max), num(*v)));
    }
    out = *v;
    return Status();
  };
  LOCO_RETURN_IF_ERROR(bounded("--delay-ms", o.delay_ms, kMaxDelayMs, next.delay_ms));
  LOCO_RETURN_IF_ERROR(bounded("--jitter-ms", o.jitter_ms, kMaxDelayMs, next.jitter_ms));
  LOCO_RETURN_IF_ERROR(bounded("--loss", o.loss, 1, next.loss));
  LOCO_RETURN_IF_ERROR(bounded("--rate-mbit", o.rate_mbit, kMaxRateMbit, next.rate_mbit));
  if (o.tcp_rmem_max) {
    if (*o.tcp_rmem_max < kMinRmem || *o.tcp_rmem_max > kMaxRmem) {
      return bad(fmt::format("--tcp-rmem-max must be between {} and {} bytes, got {}", kMinRmem,
                             kMaxRmem, *o.tcp_rmem_max));
    }
    next.tcp_rmem_max = *o.tcp_rmem_max;
  }
  for (const std::string& spec : o.host_specs) {
    auto colon = spec.find(':');
    if (colon == std::string::npos)
      return bad(fmt::format("--host '{}': want I:rate-mbit=R|up-mbit=U|down-mbit=W|cpu=C", spec));
    auto idx = parseIndex(fmt::format("--host '{}'", spec), spec.substr(0, colon), next.hosts);
    if (!idx) return idx.status();
    auto kv = parseKv(spec, spec.substr(colon + 1));
    if (!kv) return kv.status();
    HostOverride& h = next.host_overrides[*idx];
    for (auto& [key, value] : *kv) {
      if (key == "nat") {
        if (value == "on" || value == "cone") {
          h.nat = NatMode::kCone;
        } else if (value == "symmetric") {
          h.nat = NatMode::kSymmetric;
        } else if (value == "off") {
          h.nat = NatMode::kNone;
        } else {
          return bad(
              fmt::format("--host '{}': nat must be on, symmetric or off, got '{}'", spec, value));
        }
        continue;
      }
      auto v = parseNumber(fmt::format("--host '{}' {}", spec, key), value, 0,
                           key == "cpu" ? kMaxCpuCores : kMaxRateMbit);
      if (!v) return v.status();
      if (key == "cpu") {
        h.cpu = *v;
      } else if (key == "rate-mbit") {
        h.up_mbit = h.down_mbit = *v;
      } else if (key == "up-mbit") {
        h.up_mbit = *v;
      } else if (key == "down-mbit") {
        h.down_mbit = *v;
      } else {
        return bad(fmt::format(
            "--host '{}': unknown key '{}' (use rate-mbit, up-mbit, down-mbit, cpu or nat)", spec,
            key));
      }
    }
  }
  for (const std::string& spec : o.link_specs) {
    auto colon = spec.find(':');
    auto dash = spec.find('-');
    if (colon == std::string::npos || dash == std::string::npos || dash > colon) {
      return bad(
          fmt::format("--link '{}': want I-J:delay-ms=D,jitter-ms=J,loss=P,rate-mbit=R", spec));
    }
    std::string what = fmt::format("--link '{}'", spec);
    auto a = parseIndex(what, spec.substr(0, dash), next.hosts);
    if (!a) return a.status();
    auto b = parseIndex(what, spec.substr(dash + 1, colon - dash - 1), next.hosts);
    if (!b) return b.status();
    if (*a == *b) return bad(fmt::format("{}: a link joins two different hosts", what));
    auto kv = parseKv(spec, spec.substr(colon + 1));
    if (!kv) return kv.status();
    PairOverride& p = next.pair_overrides[{std::min(*a, *b), std::max(*a, *b)}];
    for (auto& [key, value] : *kv) {
      std::string flag = fmt::format("{} {}", what, key);
      Result<double> v = Status();
      if (key == "delay-ms" || key == "jitter-ms") {
        v = parseNumber(flag, value, 0, kMaxDelayMs);
      } else if (key == "loss") {
        v = parseNumber(flag, value, 0, 1);
      } else if (key == "rate-mbit") {
        v = parseNumber(flag, value, 0, kMaxRateMbit);
      } else {
        return bad(fmt::format("{}: unknown key '{}' (use delay-ms, jitter-ms, loss or rate-mbit)",
                               what, key));
      }
      if (!v) return v.status();
      if (key == "delay-ms") p.delay_ms = *v;
      if (key == "jitter-ms") p.jitter_ms = *v;
      if (key == "loss") p.loss = *v;
      if (key == "rate-mbit") p.rate_mbit = *v;
    }
  }
  // Everything must still name existing hosts if --hosts shrank (only `up` sets hosts today).
  for (auto& [i, h] : next.host_overrides) {
    if (i > next.hosts)
      return bad(
          fmt::format("--host override for host {} but the lab has {} hosts", i, next.hosts));
  }
  for (auto& [key, p] : next.pair_overrides) {
    if (key.second > next.hosts) {
      return bad(fmt::format("--link override for hosts {}-{} but the lab has {} hosts", key.first,
                             key.second, next.hosts));
    }
  }
  for (auto& group : next.partition) {
    for (int i : group) {
      if (i > next.hosts)
        return bad(
            fmt::format("the partition names host {} but the lab has {} hosts", i, next.hosts));
    }
  }
  cfg = std::move(next);
  return Status();
}

Result<std::vector<std::vector<int>>> parsePartition(const std::string& text, int hosts) {
  std::vector<std::vector<int>> groups;
  std::set<int> seen;
  auto parts = split(text, '/');
  if (parts.size() < 2)
    return bad(fmt::format("--groups '{}': want at least two groups, e.g. 1,2/3,4", text));
  for (const std::string& part : parts) {
    if (part.empty()) return bad(fmt::format("--groups '{}': an empty group", text));
    std::vector<int> g;
    for (const std::string& item : split(part, ',')) {
      auto idx = parseIndex(fmt::format("--groups '{}'", text), item, hosts);
      if (!idx) return idx.status();
      if (!seen.insert(*idx).second)
        return bad(fmt::format("--groups '{}': host {} is in two groups", text, *idx));
      g.push_back(*idx);
    }
    groups.push_back(std::move(g));
  }
  return groups;
}

std::string LabConfig::serialize() const {
  std::string out = fmt::format(
      "name {}\nhosts {}\nsubnet {}\ndelay-ms {}\njitter-ms {}\nloss {}\nrate-mbit {}\n", name,
      hosts, subnet, num(delay_ms), num(jitter_ms), num(loss), num(rate_mbit));
  for (auto& [i, h] : host_overrides) {
    std::vector<std::string> kv;
    if (h.up_mbit) kv.push_back("up-mbit=" + num(*h.up_mbit));
    if (h.down_mbit) kv.push_back("down-mbit=" + num(*h.down_mbit));
    if (h.cpu) kv.push_back("cpu=" + num(*h.cpu));
    if (h.nat && *h.nat != NatMode::kNone)
      kv.push_back(*h.nat == NatMode::kCone ? "nat=on" : "nat=symmetric");
    if (!kv.empty()) out += fmt::format("host {}:{}\n", i, fmt::join(kv, ","));
  }
  for (auto& [key, p] : pair_overrides) {
    std::vector<std::string> kv;
    if (p.delay_ms) kv.push_back("delay-ms=" + num(*p.delay_ms));
    if (p.jitter_ms) kv.push_back("jitter-ms=" + num(*p.jitter_ms));
    if (p.loss) kv.push_back("loss=" + num(*p.loss));
    if (p.rate_mbit) kv.push_back("rate-mbit=" + num(*p.rate_mbit));
    if (!kv.empty())
      out += fmt::format("link {}-{}:{}\n", key.first, key.second, fmt::join(kv, ","));
  }
  if (!partition.empty()) {
    std::vector<std::string> groups;
    for (auto& g : partition) groups.push_back(fmt::format("{}", fmt::join(g, ",")));
    out += fmt::format("partition {}\n", fmt::join(groups, "/"));
  }
  if (tcp_rmem_max > 0) out += fmt::format("tcp-rmem-max {}\n", tcp_rmem_max);
  return out;
}

Result<LabConfig> parseConfig(const std::string& text) {
  LabConfig cfg;
  LabOptions o;
  std::string partition;
  std::istringstream in(text);
  std::string key, value;
  while (in >> key >> value) {
    Result<double> v = Status();
    if (key == "name") {
      cfg.name = value;
    } else if (key == "hosts" || key == "subnet") {
      v = parseNumber(key, value, key == "hosts" ? 2 : 1, key == "hosts" ? kMaxHosts : 254);
      if (!v) return v.status();
      if (*v != std::floor(*v))
        return bad(fmt::format("lab state file: {} must be a whole number, got {}", key, value));
      (key == "hosts" ? cfg.hosts : cfg.subnet) = static_cast<int>(*v);
    } else if (key == "delay-ms" || key == "jitter-ms") {
      if (!(v = parseNumber(key, value, 0, kMaxDelayMs))) return v.status();
      (key == "delay-ms" ? o.delay_ms : o.jitter_ms) = *v;
    } else if (key == "loss") {
      if (!(v = parseNumber(key, value, 0, 1))) return v.status();
      o.loss = *v;
    } else if (key == "rate-mbit") {
      if (!(v = parseNumber(key, value, 0, kMaxRateMbit))) return v.status();
      o.rate_mbit = *v;
    } else if (key == "host") {
      o.host_specs.push_back(value);
    } else if (key == "link") {
      o.link_specs.push_back(value);
    } else if (key == "partition") {
      partition = value;
    } else if (key == "tcp-rmem-max") {
      if (!(v = parseNumber(key, value, static_cast<double>(kMinRmem),
                            static_cast<double>(kMaxRmem))))
        return v.status();
      o.tcp_rmem_max = static_cast<std::int64_t>(*v);
    } else {
      return bad(fmt::format("lab state file: unknown key '{}'", key));
    }
  }
  LOCO_RETURN_IF_ERROR(validateLabName(cfg.name));
  if (cfg.hosts == 0 || cfg.subnet == 0) return bad("lab state file: hosts or subnet missing");
  LOCO_RETURN_IF_ERROR(applyOptions(cfg, o));
  if (!partition.empty()) {
    auto groups = parsePartition(partition, cfg.hosts);
    if (!groups) return groups.status();
    cfg.partition = *groups;
  }
  return cfg;
}

Json LabConfig::json() const {
  Json hosts_json = Json::array();
  for (int i = 1; i <= hosts; ++i) {
    HostRates r = host(i);
    hosts_json.push_back({{"name", nsName(i)},
                          {"addr", address(i)},
                          {"up_mbit", r.up_mbit},
                          {"down_mbit", r.down_mbit},
                          {"cpu", hostCpu(i)},
                          {"nat", natName(hostNat(i))}});
  }
  Json links = Json::object();
  for (int a = 1; a <= hosts; ++a) {
    for (int b = a + 1; b <= hosts; ++b) {
      PairParams p = pair(a, b);
      links[fmt::format("{}-{}", a, b)] = {{"delay_ms", p.delay_ms},
                                           {"jitter_ms", p.jitter_ms},
                                           {"loss", p.loss},
                                           {"rate_mbit", p.rate_mbit},
                                           {"partitioned", partitioned(a, b)}};
    }
  }
  return {{"name", name},
          {"hosts", std::move(hosts_json)},
          {"links", std::move(links)},
          {"partition", partition},
          {"tcp_rmem_max", tcp_rmem_max},
          {"subnet", fmt::format("10.213.{}.0/24", subnet)}};
}

std::string LabConfig::toJson() const {
  return jsonDump(json());
}

}  // namespace loco::lab
