#include "collectives/state_engine.h"

#include <fmt/format.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "p2p/address.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/base/text.h"
#include "p2p/membership_client.h"

namespace loco::collectives {

using p2p::Link;
using namespace state_detail;

// ---- StateEngine: the application thread's side
// ------------------------------------------------------

StateEngine::StateEngine(p2p::NetworkThread& net, p2p::MembershipClient& client,
                         std::string self_id, p2p::LinkOptions link_opts)
    : net_(net), client_(client), self_id_(std::move(self_id)), link_opts_(link_opts) {}

StateEngine::~StateEngine() = default;

Result<SyncReport> StateEngine::sync(SharedState& state, const SyncOptions& options,
                                     Deadline deadline) {
  const TimePoint t0 = Clock::now();
  // kFailedPrecondition before the first admission; kPeerLost / kEvicted once the group is lost.
  if (Status st = client_.memberStatus("shared-state sync"); !st.isOk()) return st;
  if (state.buffers_.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "shared-state sync with no buffers registered (SharedState::add)");
  }
  if (options.requests_per_source == 0 || options.max_serve_mbit < 0) {
    return Status(StatusCode::kInvalidArgument,
                  "requests_per_source must be positive and max_serve_mbit >= 0");
  }
  auto a = std::make_shared<Active>();
  a->state = &state;
  a->options = options;
  auto& m = a->manifest;
  m.strategy = static_cast<p2p::StateStrategy>(options.strategy);
  m.revision = state.revision_;
  m.chunk_bytes = state.chunk_bytes_;
  for (const auto& b : state.buffers_) {
    m.buffers.push_back(p2p::StateBufferInfo{b.name, static_cast<std::uint8_t>(b.dtype),
                                             static_cast<std::uint8_t>(dtypeSize(b.dtype)),
                                             b.count});
    for (std::size_t off = 0; off < b.bytes(); off += state.chunk_bytes_) {
      a->chunks.push_back(
          {b.data + off, std::min<std::size_t>(state.chunk_bytes_, b.bytes() - off)});
    }
  }
  // Hashing here, on the application thread: the network thread keeps serving meanwhile.
  a->hashes.reserve(a->chunks.size());
  for (const ChunkRef& c : a->chunks) a->hashes.push_back(XXH3_64bits(c.data, c.len));
  m.hashes = a->hashes;
  const std::uint64_t revision_before = state.revision_;

  {
    std::lock_guard lock(mu_);
    outcome_.reset();
  }
  net_.post([this, a] { begin(a); });
  std::unique_lock lock(mu_);
  if (!cv_.wait_until(lock, deadline.at(), [&] { return outcome_.has_value(); })) {
    lock.unlock();
    net_.post([this] {
      fail(Status(StatusCode::kTimeout,
                  "shared-state sync: the group's round did not finish before the deadline"));
    });
    lock.lock();
    // fail() always produces an outcome on the network thread; the bound is a backstop.
    if (!cv_.wait_for(lock, std::chrono::seconds(30), [&] { return outcome_.has_value(); })) {
      return Status(StatusCode::kTimeout, "shared-state sync: the network thread did not answer");
    }
  }
  Result<SyncReport> r = std::move(*outcome_);
  outcome_.reset();
  lock.unlock();

  static Counter& syncs = counter("collectives.state_syncs");
  static Counter& failed = counter("collectives.state_syncs_failed");
  if (!r.isOk()) {
    failed.inc();
    return r;
  }
  syncs.inc();
  SyncReport& rep = r.value();
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  // Current at the last sync and still had to download: the state drifted here since.
  rep.drift =
      state.synced_once_ && revision_before == rep.elected_revision && rep.bytes_received > 0;
  if (rep.drift) {
    static Counter& drift = counter("collectives.state_drift_syncs");
    static Counter& drift_bytes = counter("collectives.state_drift_bytes");
    drift.inc();
    drift_bytes.inc(rep.bytes_received);
    LOG_WARN(kLogPeer,
             "shared state drifted on this peer: {} chunk(s), {} bytes differed from the group's "
             "revision {} and were "
             "repaired (non-deterministic updates, or memory corruption?)",
             rep.chunks_received, rep.bytes_received, rep.elected_revision);
  }
  state.revision_ = rep.revision;
  state.synced_once_ = true;
  return r;
}

// ---- StateEngine: the network thread's side
// ------------------------------------------------------

void StateEngine::begin(std::shared_ptr<Active> a) {
  a->generation = ++generation_;
  a->manifest.sync_id = a->generation;
  active_ = a;
  if (shut_down_) return finish(Status(StatusCode::kAborted, "the communicator is shutting down"));
  client_.sendToCoordinator(p2p::MsgType::kStateManifest, p2p::encodeStateManifest(a->manifest));
}

void StateEngine::onCoordinatorFrame(const p2p::FrameHeader& h, std::vector<std::uint8_t> payload) {
  if (h.type == p2p::MsgType::kStatePlan) {
    auto plan = p2p::decodeStatePlan(payload);
    if (!plan) return fail(plan.status().withContext("shared-state plan from the coordinator"));
    return onPlan(h.op_id, std::move(plan.value()));
  }
  if (h.type == p2p::MsgType::kStateComplete) onComplete(h.op_id);
}

void StateEngine::onPlan(std::uint64_t round, p2p::StatePlanMsg plan) {
  auto a = active_;
  // A plan for a sync this peer already gave up on (it crossed the withdrawal) is not ours.
  if (!a || a->have_plan || a->withdrawing || plan.sync_id != a->generation) return;
  a->have_plan = true;
  a->plan_at = Clock::now();
  a->round = round;
  a->plan = std::move(plan);
  a->report.revision = a->plan.revision;
  a->report.elected_revision = a->plan.elected_revision;
  // The coordinator counted a refused peer as done already.
  if (a->plan.code != StatusCode::kOk) return finish(Status(a->plan.code, a->plan.reason));
  if (a->plan.canonical.size() != a->chunks.size()) {
    return fail(Status(StatusCode::kProtocolError,
                       fmt::format("shared-state plan has {} chunk hashes, this peer {}",
                                   a->plan.canonical.size(), a->chunks.size())));
  }
  for (std::uint32_t c = 0; c < a->chunks.size(); ++c) {
    if (a->hashes[c] != a->plan.canonical[c]) a->queue.push_back(c);
  }
  if (a->queue.empty()) return;  // current: serve others until the round is complete
  startDownload();
}

void StateEngine::onComplete(std::uint64_t round) {
  auto a = active_;
  if (round == 0) {  // the coordinator acknowledges a withdrawal
    if (a && a->withdrawing) finish(a->withdraw_status);
    return;
  }
  if (!a || !a->have_plan || round != a->round) return;
  if (a->downloading && !a->download_done) {
    return finish(Status(StatusCode::kAborted,
                         "the group's shared-state round ended before this peer had everything"));
  }
  finish(Status());
}

void StateEngine::onView(const p2p::GroupView& v) {
  auto a = active_;
  if (!a || !a->downloading || a->download_done) return;
  for (std::size_t i = 0; i < a->sources.size() && active_ == a; ++i) {
    const std::string& id = a->sources[i].info.peer_id;
    bool member = std::any_of(v.peers.begin(), v.peers.end(), [&](const p2p::PeerInfo& p) {
      return p.id == id && p.state == p2p::PeerState::kMember;
    });
    if (!member && !a->sources[i].dead)
      dropSource(i, Status(StatusCode::kPeerLost, "it left the group"));
  }
}

void StateEngine::onLost(const Status& why) {
  if (active_) finish(why.withContext("shared-state sync"));
}

void StateEngine::fail(const Status& why) {
  auto a = active_;
  if (!a || a->withdrawing) return;
  const std::uint8_t ok = 0;
  if (a->have_plan) {
    client_.sendToCoordinator(p2p::MsgType::kStateDone, {ok}, a->round);
    return finish(why);
  }
  // Round 0 withdraws a manifest the coordinator has not planned yet. The sync ends when the
  // coordinator has seen that: a caller that syncs again at once (and the peers it tells to)
  // then cannot reach the coordinator before the withdrawal does.
  a->withdrawing = true;
  a->withdraw_status = why;
  client_.sendToCoordinator(p2p::MsgType::kStateDone, {ok}, 0);
  const std::uint64_t gen = a->generation;
  withdraw_timer_.startAfter(kWithdrawAckTimeout, [this, gen] {
    if (!active_ || active_->generation != gen) return;
    finish(active_->withdraw_status);
  });
}

void StateEngine::finish(Status st) {
  auto a = active_;
  if (!a) return;
  active_.reset();
  withdraw_timer_.cancel();
  pace_timer_.cancel();
  paced_.clear();
  closeLinks(*a);
  auto served = std::move(served_);
  served_.clear();
  for (auto& s : served) {
    s->link->setCloseHandler(nullptr);
    s->link->close(Status(StatusCode::kAborted, "shared-state sync over"));
  }
  if (!st.isOk()) LOG_WARN(kLogPeer, "shared-state sync failed: {}", st.message());
  std::lock_guard lock(mu_);
  if (st.isOk()) {
    outcome_.emplace(a->report);
  } else {
    outcome_.emplace(std::move(st));
  }
  cv_.notify_all();
}

void StateEngine::closeLinks(Active& a) {
  for (Source& s : a.sources) {
    s.dead = true;  // before close(): its failing receives must not requeue anything
    if (auto link = std::move(s.link)) {
      link->setCloseHandler(nullptr);
      link->close(Status(StatusCode::kAborted, "shared-state download over"));
    }
  }
}

void StateEngine::shutdown() {
  shut_down_ = true;
  finish(Status(StatusCode::kAborted, "the communicator is shutting down"));
  auto served = std::move(served_);
  served_.clear();
  for (auto& s : served) {
    s->link->setCloseHandler(nullptr);
    s->link->close(Status(StatusCode::kAborted, "communicator shutting down"));
  }
}

}  // namespace loco::collectives
