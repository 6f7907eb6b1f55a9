#pragma once
// NAT in the lab (`loco lab up ... --host I:nat=on|symmetric`): host I sits behind its own router,
// a namespace NAME_rI that owns the host's public lab address (10.213.S.I, the hub's port) and
// masquerades a private network 192.168.I.0/24 with nftables, like a home router: connections
// from the host out work, unsolicited incoming ones are dropped. The host namespace NAMEI keeps
// its name (so `lab exec`, `loco local --lab` and cgroups are unchanged) but holds only the
// private address 192.168.I.2, with a default route through the router. Needs root.

#include <string>

#include "cli/lab/config.h"
#include "p2p/base/status.h"

namespace loco::lab {

// NAME_rI: '_' cannot appear in a lab name, so no other lab's host can collide with it.
std::string routerNsName(const LabConfig& cfg, int host);
// 192.168.I.2: the address a NATed host sees as its own.
std::string privateAddress(int host);

// The address processes in host `host` bind to: the public lab address, or privateAddress()
// behind a NAT.
std::string insideAddress(const LabConfig& cfg, int host);

// The nftables ruleset of a router (pure, unit-tested): masquerade on the public side, with
// `fully-random` ports for kSymmetric; forward and input accept only what the private side
// started (ct state established,related) or what comes from the private side.
std::string natRuleset(NatMode mode);

// Builds host `host` behind a router. Expects neither namespace to exist; the outside veth end
// (cfg.vethName(host)) is created here, as for a plain host. On failure the caller tears the
// whole lab down.
Status buildNatHost(const LabConfig& cfg, int host);

}  // namespace loco::lab
