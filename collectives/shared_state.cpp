#include "collectives/shared_state.h"

#include <fmt/format.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "collectives/state_engine.h"
#include "p2p/address.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/membership_client.h"

namespace loco::collectives {

using p2p::Link;

namespace {

// Tags on a state link (links live for one sync): requests carry a sequence number, answers the
// round and chunk they answer.
constexpr std::uint64_t kReqTagBase = std::uint64_t{1} << 62;
constexpr std::size_t kPostedRequests = 64;  // request receives a server keeps posted per link
constexpr std::uint32_t kMinChunkBytes = 1024;
constexpr std::uint32_t kMaxChunkBytes = 64u << 20;
constexpr Millis kDialTimeout{10000};
constexpr Millis kWithdrawAckTimeout{2000};  // a lost coordinator must not hold a failed sync

std::uint64_t dataTag(std::uint64_t round, std::uint32_t chunk) {
  return ((round & 0xFFFFFFFFFFull) << 21) | chunk;
}

// A request: u64 round, u32 chunk, u32 zero; little-endian.
std::array<std::uint8_t, 16> encodeRequest(std::uint64_t round, std::uint32_t chunk) {
  std::array<std::uint8_t, 16> out{};
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(round >> (8 * i));
  for (int i = 0; i < 4; ++i) out[8 + i] = static_cast<std::uint8_t>(chunk >> (8 * i));
  return out;
}

void decodeRequest(const std::array<std::uint8_t, 16>& in, std::uint64_t& round,
                   std::uint32_t& chunk) {
  round = 0;
  chunk = 0;
  for (int i = 0; i < 8; ++i) round |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  for (int i = 0; i < 4; ++i) chunk |= static_cast<std::uint32_t>(in[8 + i]) << (8 * i);
}

std::uint64_t hashBytes(const std::uint8_t* data, std::size_t len) {
  return XXH3_64bits(data, len);
}

std::string shortId(const std::string& id) {
  return id.substr(0, 8);
}

}  // namespace

// ---- dtypes and strategies
// -------------------------------------------------------------------------

std::size_t stateDTypeSize(StateDType d) {
  switch (d) {
    case StateDType::kF32:
      return 4;
    case StateDType::kF16:
      return 2;
    case StateDType::kBF16:
      return 2;
    case StateDType::kF64:
      return 8;
    case StateDType::kI32:
      return 4;
    case StateDType::kI64:
      return 8;
    case StateDType::kU8:
      return 1;
  }
  return 0;
}

std::string_view stateDTypeName(StateDType d) {
  switch (d) {
    case StateDType::kF32:
      return "f32";
    case StateDType::kF16:
      return "f16";
    case StateDType::kBF16:
      return "bf16";
    case StateDType::kF64:
      return "f64";
    case StateDType::kI32:
      return "i32";
    case StateDType::kI64:
      return "i64";
    case StateDType::kU8:
      return "u8";
  }
  return "?";
}

std::string_view syncStrategyName(SyncStrategy s) {
  return p2p::stateStrategyName(static_cast<p2p::StateStrategy>(s));
}

Result<SyncStrategy> parseSyncStrategy(std::string_view name) {
  for (SyncStrategy s :
       {SyncStrategy::kEnforcePopular, SyncStrategy::kReceiveOnly, SyncStrategy::kSendOnly}) {
    if (name == syncStrategyName(s)) return s;
  }
  return Status(
      StatusCode::kInvalidArgument,
      fmt::format("unknown sync strategy '{}' (use enforce-popular, receive-only or send-only)",
                  name));
}

// ---- SharedState
// -----------------------------------------------------------------------------------

SharedState::SharedState(std::uint32_t chunk_bytes) : chunk_bytes_(chunk_bytes) {}

Status SharedState::add(std::string name, StateDType dtype, void* data, std::size_t count) {
  if (chunk_bytes_ < kMinChunkBytes || chunk_bytes_ > kMaxChunkBytes) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("shared-state chunk size {} is outside [{}, {}] bytes", chunk_bytes_,
                              kMinChunkBytes, kMaxChunkBytes));
  }
  if (name.empty() || name.size() > p2p::kMaxStateNameLen) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("shared-state buffer name must be 1 to {} bytes long", p2p::kMaxStateNameLen));
  }
  if (stateDTypeSize(dtype) == 0)
    return Status(StatusCode::kInvalidArgument, "unknown shared-state dtype");
  if (data == nullptr && count > 0) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("shared-state buffer '{}' has no memory", name));
  }
  for (const Buffer& b : buffers_) {
    if (b.name == name) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("shared-state buffer '{}' is registered twice", name));
    }
  }
  if (buffers_.size() >= p2p::kMaxStateBuffers) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("more than {} shared-state buffers", p2p::kMaxStateBuffers));
  }
  const std::size_t extra = (count * stateDTypeSize(dtype) + chunk_bytes_ - 1) / chunk_bytes_;
  if (chunks() + extra > p2p::kMaxStateChunks) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("shared state would have more than {} chunks; raise the chunk size",
                              p2p::kMaxStateChunks));
  }
  buffers_.push_back(Buffer{std::move(name), dtype, static_cast<std::uint8_t*>(data), count});
  return Status();
}

std::size_t SharedState::bytes() const {
  std::size_t n = 0;
  for (const Buffer& b : buffers_) n += b.bytes();
  return n;
}

std::size_t SharedState::chunks() const {
  std::size_t n = 0;
  for (const Buffer& b : buffers_) n += (b.bytes() + chunk_bytes_ - 1) / chunk_bytes_;
  return n;
}

std::vector<std::uint64_t> SharedState::chunkHashes() const {
  std::vector<std::uint64_t> out;
  out.reserve(chunks());
  for (const Buffer& b : buffers_) {
    for (std::size_t off = 0; off < b.bytes(); off += chunk_bytes_) {
      out.push_back(hashBytes(b.data + off, std::min<std::size_t>(chunk_bytes_, b.bytes() - off)));
    }
  }
  return out;
}

std::uint64_t SharedState::digest() const {
  auto h = chunkHashes();
  return XXH3_64bits(h.data(), h.size() * sizeof(std::uint64_t));
}

// ---- StateEngine: the application thread's side
// ------------------------------------------------------

StateEngine::StateEngine(p2p::NetworkThread& net, p2p::MembershipClient& client,
                         std::string self_id, p2p::LinkOptions link_opts)
    : net_(net), client_(client), self_id_(std::move(self_id)), link_opts_(link_opts) {}

StateEngine::~StateEngine() = default;

Result<SyncReport> StateEngine::sync(SharedState& state, const SyncOptions& options,
                                     Deadline deadline) {
  const TimePoint t0 = Clock::now();
  // kInvalidArgument before the first admission; kPeerLost / kEvicted once the group is lost.
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
                                             static_cast<std::uint8_t>(stateDTypeSize(b.dtype)),
                                             b.count});
    for (std::size_t off = 0; off < b.bytes(); off += state.chunk_bytes_) {
      a->chunks.push_back(
          {b.data + off, std::min<std::size_t>(state.chunk_bytes_, b.bytes() - off)});
    }
  }
  // Hashing here, on the application thread: the network thread keeps serving meanwhile.
  a->hashes.reserve(a->chunks.size());
  for (const ChunkRef& c : a->chunks) a->hashes.push_back(hashBytes(c.data, c.len));
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

void StateEngine::startDownload() {
  auto a = active_;
  a->downloading = true;
  a->remaining = a->queue.size();
  a->excluded.assign(a->chunks.size(), {});
  for (const auto& s : a->plan.sources) a->sources.push_back(Source{s});
  LOG_DEBUG(kLogPeer, "shared state round {}: fetching {} chunk(s) from up to {} source(s)",
            a->round, a->remaining, a->sources.size());
  const std::size_t limit = a->options.max_sources == 0
                                ? a->sources.size()
                                : std::min(a->options.max_sources, a->sources.size());
  for (std::size_t i = 0; i < limit; ++i) dial(i);
  checkSources();
}

void StateEngine::dial(std::size_t index) {
  auto a = active_;
  Source& s = a->sources[index];
  s.active = true;
  auto hp = p2p::parseHostPort(s.info.addr);
  if (!hp) return dropSource(index, hp.status());
  const std::uint64_t gen = a->generation;
  p2p::connectLink(
      net_.context(), *hp, self_id_, link_opts_, Deadline::after(kDialTimeout),
      [this, gen, index, alive = lifetime_.watch()](Result<std::shared_ptr<Link>> r) {
        if (alive.expired()) return;
        if (!active_ || active_->generation != gen || active_->sources[index].dead) {
          if (r) r.value()->close(Status(StatusCode::kAborted, "shared-state sync over"));
          return;
        }
        if (!r)
          return dropSource(index, r.status().withContext("connecting to a shared-state source"));
        Source& src = active_->sources[index];
        src.link = std::move(r.value());
        src.link->setCloseHandler([this, gen, index, alive](const Status& why) {
          if (alive.expired() || !active_ || active_->generation != gen) return;
          dropSource(index, why);
        });
        pump();
      },
      client_.epoch() | kStateLinkEpochBit);
}

void StateEngine::pump() {
  auto a = active_;
  if (!a || !a->downloading || a->download_done) return;
  const std::size_t window = a->options.requests_per_source;
  bool progress = true;
  while (progress && active_ == a) {
    progress = false;
    // One chunk per source per pass, so every source gets a share of the queue's front.
    for (std::size_t i = 0; i < a->sources.size() && active_ == a; ++i) {
      Source& s = a->sources[i];
      if (!s.link || s.dead || s.outstanding >= window) continue;
      for (auto it = a->queue.begin(); it != a->queue.end(); ++it) {
        const std::uint32_t c = *it;
        if (!s.info.holdsChunk(c)) continue;
        const auto& ex = a->excluded[c];
        if (std::find(ex.begin(), ex.end(), i) != ex.end()) continue;
        a->queue.erase(it);
        request(i, c);
        progress = true;
        break;
      }
    }
  }
  if (active_ == a) checkSources();
}

void StateEngine::checkSources() {
  auto a = active_;
  if (!a || !a->downloading || a->download_done || a->queue.empty()) return;
  auto usable = [&](std::size_t i, std::uint32_t c) {
    const Source& s = a->sources[i];
    const auto& ex = a->excluded[c];
    return !s.dead && s.info.holdsChunk(c) && std::find(ex.begin(), ex.end(), i) == ex.end();
  };
  for (std::uint32_t c : a->queue) {
    bool covered = false;
    for (std::size_t i = 0; i < a->sources.size() && !covered; ++i)
      covered = a->sources[i].active && usable(i, c);
    if (covered) continue;
    // A standby source takes over (max_sources), else nobody can serve this chunk any more.
    bool dialed = false;
    for (std::size_t i = 0; i < a->sources.size() && !dialed; ++i) {
      if (!a->sources[i].active && usable(i, c)) {
        dial(i);
        dialed = true;
      }
    }
    if (dialed) return;  // dial() may have failed and re-entered; the next pump checks again
    std::size_t corrupt = 0, dead = 0;
    for (const Source& s : a->sources) {
      dead += s.dead ? 1 : 0;
      corrupt += s.corrupt > 0 ? 1 : 0;
    }
    return fail(Status(
        StatusCode::kDataLoss,
        fmt::format("shared-state sync: no source left for chunk {} ({} source(s) in the plan, {} "
                    "dropped, {} served corrupt data)",
                    c, a->sources.size(), dead, corrupt)));
  }
}

void StateEngine::request(std::size_t index, std::uint32_t chunk) {
  auto a = active_;
  Source& s = a->sources[index];
  ++s.outstanding;
  s.used = true;
  const std::size_t len = a->chunks[chunk].len;
  auto buf = std::make_shared<std::vector<std::uint8_t>>();
  if (!a->spare.empty()) {
    *buf = std::move(a->spare.back());
    a->spare.pop_back();
  }
  buf->resize(len);
  auto req = std::make_shared<std::array<std::uint8_t, 16>>(encodeRequest(a->round, chunk));
  const std::uint64_t gen = a->generation;
  auto link = s.link;  // the completions below may drop the source's reference
  link->recv(dataTag(a->round, chunk), MutableByteSpan(*buf),
             [this, gen, index, chunk, buf, alive = lifetime_.watch()](const Status& st) {
               if (alive.expired()) return;
               onChunk(gen, index, chunk, std::move(*buf), st);
             });
  if (active_ != a || a->sources[index].dead) return;
  link->send(kReqTagBase | s.next_seq++, ByteSpan(*req), [req](const Status&) {});
}

void StateEngine::onChunk(std::uint64_t generation, std::size_t index, std::uint32_t chunk,
                          std::vector<std::uint8_t> buf, const Status& st) {
  auto a = active_;
  if (!a || a->generation != generation) return;
  Source& s = a->sources[index];
  if (s.outstanding > 0) --s.outstanding;
  if (a->download_done) return;
  if (!st.isOk()) {
    a->queue.push_front(chunk);
    dropSource(index, st);
    return pump();
  }
  if (hashBytes(buf.data(), buf.size()) != a->plan.canonical[chunk]) {
    static Counter& rejected = counter("collectives.state_chunks_rejected");
    rejected.inc();
    ++a->report.chunks_rejected;
    ++s.corrupt;
    a->excluded[chunk].push_back(index);
    a->queue.push_front(chunk);
    if (a->spare.size() < 64) a->spare.push_back(std::move(buf));
    LOG_WARN(kLogPeer,
             "shared-state chunk {} from peer {} failed its hash check ({} so far from that peer); "
             "fetching it "
             "from another source",
             chunk, shortId(s.info.peer_id), s.corrupt);
    if (s.corrupt >= kMaxCorruptChunksPerSource) {
      client_.sendToCoordinator(
          p2p::MsgType::kStateComplaint,
          p2p::encodeStateComplaint(
              {s.info.peer_id, s.corrupt,
               fmt::format("chunks failed XXH3 verification in round {}", a->round)}));
      dropSource(index,
                 Status(StatusCode::kDataLoss, fmt::format("served {} corrupt chunks", s.corrupt)));
    }
    return pump();
  }
  std::memcpy(a->chunks[chunk].data, buf.data(), buf.size());
  static Counter& received = counter("collectives.state_bytes_received");
  received.inc(buf.size());
  a->report.bytes_received += buf.size();
  ++a->report.chunks_received;
  if (a->spare.size() < 64) a->spare.push_back(std::move(buf));
  if (--a->remaining == 0) return downloadDone();
  pump();
}

void StateEngine::dropSource(std::size_t index, const Status& why) {
  auto a = active_;
  if (!a || index >= a->sources.size()) return;
  Source& s = a->sources[index];
  if (s.dead) return;
  s.dead = true;
  ++a->report.sources_dropped;
  static Counter& dropped = counter("collectives.state_sources_dropped");
  dropped.inc();
  LOG_WARN(kLogPeer, "shared-state source {} dropped ({} chunk(s) in flight go to the others): {}",
           shortId(s.info.peer_id), s.outstanding, why.message());
  if (auto link = std::move(s.link)) {
    link->setCloseHandler(nullptr);
    link->close(why);  // fails its receives: their chunks go back to the queue
  }
  s.outstanding = 0;
  // Keep max_sources sources busy.
  if (a->options.max_sources > 0 && active_ == a) {
    std::size_t live = 0;
    for (const Source& x : a->sources) live += x.active && !x.dead ? 1 : 0;
    for (std::size_t i = 0; i < a->sources.size() && live < a->options.max_sources && active_ == a;
         ++i) {
      if (!a->sources[i].active && !a->sources[i].dead) {
        dial(i);
        ++live;
      }
    }
  }
  if (active_ == a) pump();
}

void StateEngine::downloadDone() {
  auto a = active_;
  a->download_done = true;
  a->report.transfer_seconds = std::chrono::duration<double>(Clock::now() - a->plan_at).count();
  for (const Source& s : a->sources) a->report.sources_used += s.used ? 1 : 0;
  closeLinks(*a);
  const std::uint8_t ok = 1;
  client_.sendToCoordinator(p2p::MsgType::kStateDone, {ok}, a->round);
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
  auto timer = std::make_shared<asio::steady_timer>(net_.context(), kWithdrawAckTimeout);
  const std::uint64_t gen = a->generation;
  timer->async_wait([this, timer, gen, alive = lifetime_.watch()](const std::error_code&) {
    if (alive.expired() || !active_ || active_->generation != gen) return;
    finish(active_->withdraw_status);
  });
}

void StateEngine::finish(Status st) {
  auto a = active_;
  if (!a) return;
  active_.reset();
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

// ---- serving
// -------------------------------------------------------------------------------------

void StateEngine::onLink(std::shared_ptr<Link> link, const std::string& from) {
  if (shut_down_ || !active_) {
    link->close(Status(StatusCode::kAborted, "no shared-state sync in progress here"));
    return;
  }
  auto s = std::make_shared<Served>();
  s->link = std::move(link);
  s->from = from;
  s->requests.resize(kPostedRequests);
  served_.push_back(s);
  std::weak_ptr<Served> weak = s;
  s->link->setCloseHandler([this, weak, alive = lifetime_.watch()](const Status&) {
    if (alive.expired()) return;
    if (auto sp = weak.lock()) dropServed(sp);
  });
  for (std::uint64_t seq = 0; seq < kPostedRequests; ++seq) postRequest(s, seq);
}

void StateEngine::postRequest(const std::shared_ptr<Served>& s, std::uint64_t seq) {
  std::weak_ptr<Served> weak = s;
  s->link->recv(kReqTagBase | seq, MutableByteSpan(s->requests[seq % kPostedRequests]),
                [this, weak, seq, alive = lifetime_.watch()](const Status& st) {
                  if (alive.expired() || !st.isOk()) return;
                  if (auto sp = weak.lock()) onRequest(sp, seq);
                });
}

void StateEngine::onRequest(const std::shared_ptr<Served>& s, std::uint64_t seq) {
  auto a = active_;
  if (!a) return dropServed(s);
  std::uint64_t round = 0;
  std::uint32_t chunk = 0;
  decodeRequest(s->requests[seq % kPostedRequests], round, chunk);
  if (chunk >= a->chunks.size()) {
    LOG_WARN(kLogPeer, "peer {} asked for shared-state chunk {} of {}; closing its link",
             shortId(s->from), chunk, a->chunks.size());
    return dropServed(s);
  }
  postRequest(s, seq + kPostedRequests);
  serveChunk(s, round, chunk);
}

void StateEngine::serveChunk(const std::shared_ptr<Served>& s, std::uint64_t round,
                             std::uint32_t chunk) {
  auto a = active_;
  const ChunkRef ref = a->chunks[chunk];
  ByteSpan data(ref.data, ref.len);
  std::shared_ptr<std::vector<std::uint8_t>> copy;
  if (a->options.corrupt_served_chunks_for_tests) {
    copy = std::make_shared<std::vector<std::uint8_t>>(data.begin(), data.end());
    (*copy)[copy->size() / 2] ^= 0x5A;
    data = ByteSpan(*copy);
  }
  const std::uint64_t gen = a->generation;
  std::weak_ptr<Served> weak = s;
  auto send = [this, weak, data, copy, round, chunk, gen, alive = lifetime_.watch()] {
    if (alive.expired() || !active_ || active_->generation != gen) return;
    auto sp = weak.lock();
    if (!sp) return;
    sp->link->send(dataTag(round, chunk), data,
                   [this, copy, gen, len = data.size(), alive](const Status& st) {
                     if (alive.expired() || !st.isOk()) return;
                     static Counter& sent = counter("collectives.state_bytes_sent");
                     sent.inc(len);
                     if (active_ && active_->generation == gen) active_->report.bytes_sent += len;
                   });
  };
  if (a->options.max_serve_mbit > 0) {
    const TimePoint now = Clock::now();
    const TimePoint start = std::max(now, a->serve_free_at);
    a->serve_free_at =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                    static_cast<double>(ref.len) * 8 / (a->options.max_serve_mbit * 1e6)));
    if (start > now) {
      auto timer = std::make_shared<asio::steady_timer>(net_.context(), start);
      timer->async_wait([timer, send](const std::error_code& ec) {
        if (!ec) send();
      });
      return;
    }
  }
  send();
}

void StateEngine::dropServed(const std::shared_ptr<Served>& s) {
  served_.erase(std::remove(served_.begin(), served_.end(), s), served_.end());
  s->link->setCloseHandler(nullptr);
  s->link->close(Status(StatusCode::kAborted, "shared-state serving over"));
}

}  // namespace loco::collectives
