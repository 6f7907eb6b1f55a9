#include "cli/lab/nat.h"

#include <fmt/format.h>

#include "cli/lab/net.h"

namespace loco::lab {

std::string routerNsName(const LabConfig& cfg, int host) {
  return fmt::format("{}_r{}", cfg.name, host);
}

std::string privateAddress(int host) {
  return fmt::format("192.168.{}.2", host);
}

std::string insideAddress(const LabConfig& cfg, int host) {
  return cfg.hostNat(host) == NatMode::kNone ? cfg.address(host) : privateAddress(host);
}

std::string natRuleset(NatMode mode) {
  // Incoming traffic that no inside connection started dies silently (a dropped SYN, not a RST),
  // as behind a typical home router: the dialer sees a timeout.
  return fmt::format(
      "table ip loco_nat {{\n"
      "  chain postrouting {{\n"
      "    type nat hook postrouting priority srcnat; policy accept;\n"
      "    oifname \"eth0\" masquerade{}\n"
      "  }}\n"
      "  chain forward {{\n"
      "    type filter hook forward priority filter; policy drop;\n"
      "    ct state established,related accept\n"
      "    iifname \"lan0\" oifname \"eth0\" accept\n"
      "  }}\n"
      "  chain input {{\n"
      "    type filter hook input priority filter; policy drop;\n"
      "    ct state established,related accept\n"
      "    iifname {{ \"lo\", \"lan0\" }} accept\n"
      "  }}\n"
      "}}\n",
      mode == NatMode::kSymmetric ? " fully-random" : "");
}

Status buildNatHost(const LabConfig& cfg, int i) {
  const std::string host = cfg.nsName(i);
  const std::string router = routerNsName(cfg, i);
  const std::string outside = cfg.vethName(i);
  LOCO_RETURN_IF_ERROR(runCommand({"ip", "netns", "add", router}));
  LOCO_RETURN_IF_ERROR(runCommand({"ip", "netns", "add", host}));
  // Public side: the hub's port, exactly as a plain host's eth0 (address, MAC, neighbours).
  LOCO_RETURN_IF_ERROR(runCommand(
      {"ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", router}));
  LOCO_RETURN_IF_ERROR(
      runCommand({"sysctl", "-q", "-w", fmt::format("net.ipv6.conf.{}.disable_ipv6=1", outside)}));
  LOCO_RETURN_IF_ERROR(runCommand({"ip", "link", "set", outside, "up"}));
  // Private side: router lan0 192.168.I.1 <-> host eth0 192.168.I.2.
  LOCO_RETURN_IF_ERROR(runCommand({"ip", "-n", router, "link", "add", "lan0", "type", "veth",
                                   "peer", "name", "eth0", "netns", host}));
  std::string rbatch = fmt::format(
      "link set lo up\nlink set eth0 address {}\naddr add {}/24 dev eth0\nlink set eth0 up\n"
      "addr add 192.168.{}.1/24 dev lan0\nlink set lan0 up\n",
      cfg.mac(i), cfg.address(i), i);
  for (int j = 1; j <= cfg.hosts; ++j) {
    if (j != i)
      rbatch += fmt::format("neigh replace {} lladdr {} dev eth0 nud permanent\n", cfg.address(j),
                            cfg.mac(j));
  }
  LOCO_RETURN_IF_ERROR(runCommand({"ip", "-n", router, "-batch", "-"}, rbatch));
  LOCO_RETURN_IF_ERROR(
      runCommand({"ip", "-n", host, "-batch", "-"},
                 fmt::format("link set lo up\naddr add {}/24 dev eth0\n"
                             "link set eth0 up\nroute add default via 192.168.{}.1\n",
                             privateAddress(i), i)));
  for (const std::string& ns : {router, host}) {
    LOCO_RETURN_IF_ERROR(
        runCommand({"ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                    "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"}));
  }
  LOCO_RETURN_IF_ERROR(
      runCommand({"ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"}));
  return runCommand({"ip", "netns", "exec", router, "nft", "-f", "-"}, natRuleset(cfg.hostNat(i)));
}

}  // namespace loco::lab
