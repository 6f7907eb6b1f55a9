#pragma once
// The seam between collective algorithms and the network (ARCHITECTURE.md §5), the way Gloo's
// algorithms see only a transport::Pair. Algorithms (ring_allreduce.h, direct_allreduce.h,
// exchange.h) see only this: send a buffer to a peer of the operation's group, receive one from a
// peer, each under a tag, each completing with a Status. Deadlines and aborts belong to the engine
// (op_engine.h): it arms an alarm per operation and, when an operation fails, calls abort(),
// which fails every pending transfer, so no stray byte of a failed operation reaches a later one.
//
// Implementations: LinkTransport (p2p links, link_transport.h) and MemoryTransport (in memory,
// with fault injection, for unit tests: memory_transport.h).
//
// Thread rules: every call and every completion runs on the transport's thread (the network
// thread for links), except post(), which any thread may call.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "p2p/base/bytes.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"

namespace loco::collectives {

// The members of one epoch, in ring order, as this peer sees them.
struct PeerGroup {
  std::uint64_t epoch = 0;
  std::vector<std::string> ids;
  std::size_t rank = 0;  // this peer's index in `ids`
  std::size_t world() const { return ids.size(); }
  std::size_t next() const { return (rank + 1) % ids.size(); }
  std::size_t prev() const { return (rank + ids.size() - 1) % ids.size(); }
};

// What a link to a peer has shown so far (zeros: unknown), for sizing what to keep in flight.
struct LinkStats {
  double rtt_s = 0;     // smoothed round-trip time
  double rate_Bps = 0;  // send rate while busy, bytes per second
};

// A pending timer; destroying it cancels the callback.
class Alarm {
 public:
  virtual ~Alarm() = default;
};

class Transport {
 public:
  using Done = std::function<void(const Status&)>;
  virtual ~Transport() = default;

  // `peer` is a rank of the group of the epoch in use (the owner sets it before operations of a
  // new epoch start). Tags must be unique per direction of a pair while in flight.
  //
  // Sends `data` (valid and unchanged until `done`) to `peer`. Completes once the bytes were handed
  // to the network, or failed: kPeerLost (the peer or its link is gone), kAborted (abort()).
  // Higher `priority` goes first among the sends waiting for the same link.
  virtual void send(std::size_t peer, std::uint64_t tag, ByteSpan data, Done done,
                    int priority = 0) = 0;
  // Receives the transfer `tag` from `peer` into `dst`, whose size must equal the sent size
  // (otherwise kProtocolError and the pair's link is closed).
  virtual void recv(std::size_t peer, std::uint64_t tag, MutableByteSpan dst, Done done) = 0;
  // Receives the transfer `tag` from `peer`, of any length up to dst.size(), into the front of
  // `dst`; `done` gets the length (compressed pieces, compress.h). Transfers received this way
  // must not be empty (an empty send puts nothing on the wire); a longer one is kProtocolError.
  // Both transports in this directory implement it; the default fails, for transports (test
  // doubles) whose algorithms never compress.
  using SizedDone = std::function<void(const Status&, std::size_t length)>;
  virtual void recvUpTo(std::size_t /*peer*/, std::uint64_t /*tag*/, MutableByteSpan /*dst*/,
                        SizedDone done) {
    done(Status(StatusCode::kInternal, "this transport cannot receive variable lengths"), 0);
  }
  // Fails every pending send and receive with `why`, on both ends of this peer's links.
  virtual void abort(const Status& why) = 0;
  // Runs `fn` on the transport's thread. Thread-safe.
  virtual void post(std::function<void()> fn) = 0;
  // Runs `fn` on the transport's thread after `delay`, unless the alarm is destroyed first.
  virtual std::unique_ptr<Alarm> after(Millis delay, std::function<void()> fn) = 0;
  // The link to `peer` as measured so far (zeros when there is none yet).
  virtual LinkStats linkStats(std::size_t /*peer*/) { return {}; }
};

}  // namespace loco::collectives
