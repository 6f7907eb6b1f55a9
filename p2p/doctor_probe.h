#pragma once
// The network half of `loco doctor`: one conversation with the coordinator that answers "can
// peers reach me?" (the coordinator dials this machine back, messages.h DialBackMsg), "how far
// off is my clock?" and "what MTU does the path have?". Blocking: it runs its own io_context on
// the calling thread, and every step is bounded by `deadline`.

#include <cstdint>
#include <string>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/messages.h"

namespace loco::p2p {

struct DoctorProbe {
  double connect_s = 0;  // TCP connect to the coordinator
  std::string local_ip;  // this machine's address on the route to the coordinator
  // The connection's local port: a NAT between us and the coordinator kept it when
  // result.seen_from shows the same port (port-preserving, so TCP hole punching can work).
  std::uint16_t local_port = 0;

  // Dial-back. The doctor listens on `listen` itself while it asks; if that port is taken (a
  // running peer), the coordinator's answer still says whether something answers there.
  bool listening = false;
  std::string listen_error;
  std::uint16_t listen_port = 0;
  std::string advertised;       // what the coordinator was asked to dial
  DialBackResultMsg result;     // the coordinator's answer
  bool probe_received = false;  // the dial reached this process (the token came back)

  // Clock: the coordinator's wall clock minus ours at the midpoint of the exchange, within
  // ± rtt_s / 2.
  double rtt_s = 0;
  double clock_offset_s = 0;

  // Path: the kernel's path MTU for the connection to the coordinator (IP_MTU) and the MTU of
  // the interface the route uses (0: unknown).
  int path_mtu = 0;
  std::string interface;
  int interface_mtu = 0;
};

// `advertise`: HOST:PORT peers would be told ("" derives it like `loco join`: the route's local
// address and the listening port). Errors: kInvalidArgument (the coordinator or --advertise does
// not resolve), kUnavailable (refused), kTimeout (no answer), kProtocolError (not a loco
// coordinator, or one that predates the dial-back).
// `pinned_ca` (a join string's CA fingerprint, for a machine without a certificate yet): the
// coordinator is accepted only with that CA (tls::wrapPinned; kUnauthenticated otherwise), and
// the dial-back counts as arrived when a TLS handshake reaches the listener (the coordinator's;
// without a certificate of our own it cannot complete). "": the process's TLS mode as set.
Result<DoctorProbe> probeCoordinator(const HostPort& coordinator, const HostPort& listen,
                                     const std::string& advertise, Deadline deadline,
                                     const std::string& pinned_ca = "");

}  // namespace loco::p2p
