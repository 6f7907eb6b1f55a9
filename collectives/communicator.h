#pragma once
// Collective operations over a group of peers (ARCHITECTURE.md §5). A Communicator is one peer: it
// registers with the coordinator, keeps links to the peers it exchanges data with (one per
// ordered pair and epoch, each striped over K TCP streams), and runs all-reduce (a pipelined ring
// for large buffers, latency-optimal algorithms for small ones, chosen by size) and small-group
// exchanges for gossip methods.
//
// Guarantees:
// - Bit-identical results on every peer for every wire format: the owner of each reduced
//   segment encodes it once; every peer, the owner included, decodes those bytes.
// - All or nothing: an operation succeeds on a peer only after the coordinator saw every member
//   finish it. Otherwise every survivor gets an error and its buffer back exactly as it was.
//   One failed operation aborts every operation in flight in that epoch.
// - Several operations (all-reduces and exchanges) may be in flight at once; the caller's thread
//   is free while they run.
// - Operations are issued in the same order on every peer (collective semantics) and stamped
//   with the epoch; the group changes only at syncPoint(), never during an operation.
//
// Thread rules: call from one application thread; Operation::wait from any thread. Everything
// blocks with a deadline and fails rather than hangs.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <span>

#include "collectives/codec.h"
#include "collectives/compress.h"
#include "collectives/shared_state.h"
#include "collectives/types.h"
#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"

namespace loco::p2p {
struct PeerReportMsg;
}

namespace loco::collectives {

struct CommunicatorOptions {
  p2p::HostPort coordinator;
  std::string peer_id;                 // 32 hex digits (crypto::PeerIdentity)
  p2p::HostPort listen{"0.0.0.0", 0};  // for neighbours' link streams
  std::string advertise;      // HOST:PORT; empty: derived from the route to the coordinator
  std::uint32_t streams = 4;  // TCP streams per ring link
  std::uint32_t chunk_bytes = 1u << 20;  // striping unit
  // Measure link bandwidths (passively on ring links, by short probes to other members) and
  // report them to the coordinator, which reorders the ring so its slowest link is as fast as
  // possible (p2p/topology.h).
  bool measure_topology = true;
  // Tried in order after `coordinator` when it is lost (a standby takes over the group).
  std::vector<p2p::HostPort> standby_coordinators;
  // After losing the coordinator (or being evicted), how long to look for one before every call
  // fails with kUnavailable (p2p/membership_client.h). 0: never reconnect.
  Millis coordinator_timeout{600000};
  // HOST:PORT of a relay (`loco relay`, p2p/relay.h): used when the coordinator cannot dial
  // `advertise` back and the NAT changes ports, so other peers reach this one through it.
  // Otherwise (and when empty) an unreachable peer is reverse: dialed back or punched through
  // (p2p/connect_strategy.h, p2p/traversal.h).
  std::string relay;
};

// How an all-reduce moves its data. kAuto chooses by size and world (the ring for large buffers,
// scatter-gather for medium ones on small groups, direct for tiny ones); the others force one,
// for benchmarks and tests.
enum class AllReduceAlgorithm : std::uint8_t { kAuto, kRing, kDirect, kScatterGather };
std::string_view allReduceAlgorithmName(AllReduceAlgorithm a);
// "auto", "ring", "direct", "scatter-gather"; kInvalidArgument names the bad value.
Result<AllReduceAlgorithm> parseAllReduceAlgorithm(std::string_view name);

struct AllReduceOptions {
  Millis timeout{120000};  // the whole operation, links included
  // int8/int4: elements per block scale (codec.h), 1..kMaxQuantBlock; every peer must pass the
  // same.
  std::size_t quant_block = kQuantBlock;
  AllReduceAlgorithm algorithm = AllReduceAlgorithm::kAuto;  // every peer must pass the same
  // The ring's zstd stage for non-raw wires (compress.h): each sender decides for its own link,
  // so peers may differ. kAuto compresses on wide-area links (round trip >= 2 ms) measured
  // below 1 Gbit/s.
  Compress compress = Compress::kOff;
};

// What an exchange does with the members' buffers (exchange.h).
enum class ExchangeMode : std::uint8_t {
  kAverage = 1,  // every member gets the mean of all members' buffers (bit-identical)
  kSwap = 2,     // every member gets the next member's buffer (for two, the partner's)
};

struct ExchangeOptions {
  ExchangeMode mode = ExchangeMode::kAverage;
  std::size_t quant_block = kQuantBlock;  // int8/int4, as AllReduceOptions
};

// A handle on an operation in flight.
class Operation {
 public:
  struct State;
  explicit Operation(std::shared_ptr<State> state) : state_(std::move(state)) {}
  // Blocks until the operation ends or the deadline passes (kTimeout; the operation goes on).
  // Errors: kAborted (the group aborted it; the buffer is restored), kPeerLost, kInvalidArgument
  // (peers disagree on size, dtype, op or wire), kTimeout (the operation's own timeout; the wait's
  // deadline passing instead returns kTimeout with the operation still running).
  Status wait(Deadline deadline);
  bool finished() const;

 private:
  std::shared_ptr<State> state_;
};

class Communicator {
 public:
  // Starts the network thread and the link listener and registers with the coordinator
  // (pending until the next sync point). Errors as MembershipClient::join.
  static Result<std::unique_ptr<Communicator>> create(CommunicatorOptions options,
                                                      Deadline deadline);
  ~Communicator();

  // Blocks until admitted. Admission happens at a sync point of the members, so the newcomer's
  // first operation follows it directly, like theirs; its next syncPoint() is the one after.
  // Also the way back into the group after syncPoint() failed with kPeerLost / kEvicted: the
  // peer lost its coordinator or was evicted, and registers again on its own (errors as
  // p2p::MembershipClient::waitForMembership; kUnavailable: no coordinator came back).
  Status waitForMembership(Deadline deadline);
  // A sync point of the whole group (pending peers are admitted here); no operation may be in
  // flight (kFailedPrecondition). Returns the epoch to continue in.
  Result<std::uint64_t> syncPoint(Deadline deadline);
  // Starts an all-reduce of `count` elements at `data` (in place). `data` must stay valid and
  // untouched until the operation ends. Zero elements: kInvalidArgument (the group aborts it).
  // Before admission: kFailedPrecondition. kAborted at once, nothing started, if the group lost
  // a member since the last sync point (or admission): the survivors meet at syncPoint() and
  // continue in the new epoch there.
  Result<std::shared_ptr<Operation>> allReduce(void* data, std::size_t count, DType dtype,
                                               ReduceOp op, Wire wire,
                                               AllReduceOptions options = {});
  // Starts an exchange of `send` with the members of `group`: this peer's id and one or two
  // others' (any order; every member passes the same set and issues its exchanges with that set
  // in the same order). On success `recv` (as long as `send`; it may be `send` itself) holds the
  // mean of the members' buffers (kAverage) or the next member's, in id order (kSwap); on failure
  // it is untouched. `send` and `recv` must stay valid, and `send` unchanged, until the operation
  // ends; `deadline` bounds the whole operation (kTimeout). Both members apply the result or
  // neither does: the coordinator commits it when every member has finished. A member that dies
  // or stalls (and is evicted after the heartbeat timeout) fails it for the others, like any
  // membership change. Errors as allReduce; kInvalidArgument for a bad group or sizes.
  Result<std::shared_ptr<Operation>> exchange(std::vector<std::string> group,
                                              std::span<const float> send, std::span<float> recv,
                                              Wire wire, Deadline deadline,
                                              ExchangeOptions options = {});
  // Synchronizes `state` with the group (shared_state.h). Every member calls it at the same
  // point, between collective operations (one in flight: kFailedPrecondition). Blocks until the
  // whole group's round is over or the deadline; meanwhile this peer serves its chunks to others.
  // Errors: kFailedPrecondition (not admitted), kInvalidArgument (no buffers; the layout differs
  // from the group's:
  // the message names the first mismatching buffer), kAborted (send-only and lost the election;
  // shutting down), kNotFound (every peer synced receive-only), kDataLoss (no source left for a
  // needed chunk), kTimeout, kPeerLost / kEvicted (lost the group). On error this peer's
  // revision is unchanged; chunks already verified stay in its buffers.
  Result<SyncReport> syncSharedState(SharedState& state, const SyncOptions& options,
                                     Deadline deadline);
  Status leave(Deadline deadline);
  // What this peer holds (`finished`: it reached the run's last step), sent to the coordinator
  // now and when it registers again after losing its coordinator: the coordinator keeps the
  // run's high-water mark from it (p2p/membership.h); the shared-state sync decides the state.
  // Any thread.
  void setRegistrationReport(std::uint64_t state_revision, std::uint64_t state_digest,
                             std::uint64_t progress, bool finished = false);
  // Sends this peer's progress after a round to the coordinator (its dashboard and /api/status).
  // Non-blocking, any thread; dropped while the coordinator is unreachable.
  void reportProgress(const p2p::PeerReportMsg& report);
  // Blocks until this peer has probed every member it had no bandwidth estimate for (probes
  // start when a view arrives and run in the background). For benchmarks and tests: a sync point
  // after this applies the better ring, if there is one. Errors: kTimeout.
  Status waitForProbes(Deadline deadline);

  std::uint64_t epoch() const;
  std::size_t world() const;
  // Peers registered and waiting for the next sync point to be admitted, as of the latest view.
  std::size_t pending() const;
  // Bytes this peer has sent for all-reduces so far (payload, every attempt).
  std::uint64_t bytesSent() const;
  // Member ids in ring order (rank r sends to rank r+1), as of the latest view.
  std::vector<std::string> ring() const;
  const std::string& peerId() const;

  class Impl;

 private:
  explicit Communicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace loco::collectives
