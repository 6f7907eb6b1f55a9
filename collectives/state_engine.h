#pragma once
// Internal to collectives/: the machinery behind Communicator::syncSharedState. One per
// Communicator; it shares the communicator's network thread, membership client and link
// listener (state links are told apart from ring links by kStateLinkEpochBit in their epoch).
//
// Thread rules: sync() from the application thread; every other method on the network thread.
// shutdown() must run (on the network thread) before the engine is destroyed.

#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "collectives/shared_state.h"
#include "p2p/base/clock.h"
#include "p2p/frame.h"
#include "p2p/link.h"
#include "p2p/messages.h"
#include "p2p/runtime.h"

namespace loco::p2p {
class MembershipClient;
}

namespace loco::collectives {

// Set in the epoch of a link dialed for shared state; ring links carry plain epochs.
inline constexpr std::uint64_t kStateLinkEpochBit = std::uint64_t{1} << 63;

// The state links' own protocol, shared by state_engine.cpp, state_download.cpp and
// state_serve.cpp.
namespace state_detail {
// Tags on a state link (links live for one sync): requests carry a sequence number, answers the
// round and chunk they answer.
inline constexpr std::uint64_t kReqTagBase = std::uint64_t{1} << 62;
inline constexpr std::size_t kPostedRequests = 64;  // request receives a server keeps posted
inline constexpr Millis kDialTimeout{10000};
inline constexpr Millis kWithdrawAckTimeout{2000};  // a lost coordinator must not hold a sync

inline std::uint64_t dataTag(std::uint64_t round, std::uint32_t chunk) {
  return ((round & 0xFFFFFFFFFFull) << 21) | chunk;
}

// A request: u64 round, u32 chunk, u32 zero; little-endian.
inline std::array<std::uint8_t, 16> encodeRequest(std::uint64_t round, std::uint32_t chunk) {
  std::array<std::uint8_t, 16> out{};
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(round >> (8 * i));
  for (int i = 0; i < 4; ++i) out[8 + i] = static_cast<std::uint8_t>(chunk >> (8 * i));
  return out;
}

inline void decodeRequest(const std::array<std::uint8_t, 16>& in, std::uint64_t& round,
                          std::uint32_t& chunk) {
  round = 0;
  chunk = 0;
  for (int i = 0; i < 8; ++i) round |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  for (int i = 0; i < 4; ++i) chunk |= static_cast<std::uint32_t>(in[8 + i]) << (8 * i);
}
}  // namespace state_detail

class StateEngine {
 public:
  StateEngine(p2p::NetworkThread& net, p2p::MembershipClient& client, std::string self_id,
              p2p::LinkOptions link_opts);
  ~StateEngine();
  StateEngine(const StateEngine&) = delete;
  StateEngine& operator=(const StateEngine&) = delete;

  // Application thread. Blocks until the group's round is over (this peer verified everything
  // it needed and every other participant is done), or the deadline.
  Result<SyncReport> sync(SharedState& state, const SyncOptions& options, Deadline deadline);

  // Network thread.
  void onLink(std::shared_ptr<p2p::Link> link, const std::string& from);
  void onCoordinatorFrame(const p2p::FrameHeader& h, std::vector<std::uint8_t> payload);
  void onView(const p2p::GroupView& v);
  void onLost(const Status& why);
  void shutdown();

 private:
  struct ChunkRef {
    std::uint8_t* data;
    std::size_t len;
  };
  struct Source {
    p2p::StateSource info;
    std::shared_ptr<p2p::Link> link;
    bool active = false;  // dialed (or being dialed)
    bool dead = false;
    std::size_t outstanding = 0;
    std::uint32_t corrupt = 0;
    std::uint64_t next_seq = 0;
    bool used = false;
  };
  struct Served {
    std::shared_ptr<p2p::Link> link;
    std::string from;
    std::vector<std::array<std::uint8_t, 16>> requests;  // one per posted receive
  };
  // The sync in progress; lives on the network thread from begin() to finish().
  struct Active {
    std::uint64_t generation = 0;
    SharedState* state = nullptr;
    SyncOptions options;
    std::vector<ChunkRef> chunks;
    std::vector<std::uint64_t> hashes;
    p2p::StateManifestMsg manifest;
    bool have_plan = false;
    std::uint64_t round = 0;
    p2p::StatePlanMsg plan;
    bool downloading = false;
    bool download_done = false;
    // Download state.
    std::vector<Source> sources;
    std::deque<std::uint32_t> queue;                 // chunks waiting for a request
    std::vector<std::vector<std::size_t>> excluded;  // per chunk: sources that served it corrupt
    std::size_t remaining = 0;
    std::vector<std::vector<std::uint8_t>> spare;  // staging buffers
    SyncReport report;
    TimePoint serve_free_at{};  // pacing of max_serve_mbit
    TimePoint plan_at{};
    // Failed before any plan came: the withdrawal is sent and this outcome waits for the
    // coordinator's acknowledgement (or kWithdrawAckTimeout).
    bool withdrawing = false;
    Status withdraw_status;
  };

  void begin(std::shared_ptr<Active> a);
  void onPlan(std::uint64_t round, p2p::StatePlanMsg plan);
  void onComplete(std::uint64_t round);
  void startDownload();
  void dial(std::size_t index);
  void pump();
  // Makes sure every queued chunk has a live source that can serve it; fails the sync if not.
  void checkSources();
  void request(std::size_t index, std::uint32_t chunk);
  void onChunk(std::uint64_t generation, std::size_t index, std::uint32_t chunk,
               std::vector<std::uint8_t> buf, const Status& st);
  void dropSource(std::size_t index, const Status& why);
  void downloadDone();
  void fail(const Status& why);
  void finish(Status st);
  void closeLinks(Active& a);  // the download's links
  // Serving.
  void postRequest(const std::shared_ptr<Served>& s, std::uint64_t seq);
  void onRequest(const std::shared_ptr<Served>& s, std::uint64_t seq);
  void serveChunk(const std::shared_ptr<Served>& s, std::uint64_t round, std::uint32_t chunk);
  void dropServed(const std::shared_ptr<Served>& s);
  void armPacing();

  p2p::NetworkThread& net_;
  p2p::MembershipClient& client_;
  std::string self_id_;
  p2p::LinkOptions link_opts_;
  p2p::LifetimeGuard lifetime_;

  // Network thread.
  std::shared_ptr<Active> active_;
  std::uint64_t generation_ = 0;  // one per sync; also its sync_id at the coordinator
  std::vector<std::shared_ptr<Served>> served_;
  bool shut_down_ = false;
  p2p::Timer withdraw_timer_{net_};
  // max_serve_mbit: chunk sends waiting for their start time, in order.
  p2p::Timer pace_timer_{net_};
  std::deque<std::pair<TimePoint, std::function<void()>>> paced_;

  // Between the threads.
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Result<SyncReport>> outcome_;  // set by finish()
};

}  // namespace loco::collectives
