#include "collectives/communicator.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>

#include "collectives/state_engine.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/link.h"
#include "p2p/membership_client.h"
#include "p2p/net.h"

namespace loco::collectives {

using p2p::Link;

std::size_t dtypeSize(DType d) {
  return d == DType::kF32 ? 4 : 2;
}

Result<DType> parseDType(std::string_view name) {
  if (name == "f32") return DType::kF32;
  if (name == "f16") return DType::kF16;
  if (name == "bf16") return DType::kBF16;
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown dtype '{}' (use f32, f16 or bf16)", name));
}

Result<ReduceOp> parseReduceOp(std::string_view name) {
  if (name == "sum") return ReduceOp::kSum;
  if (name == "avg") return ReduceOp::kAvg;
  if (name == "min") return ReduceOp::kMin;
  if (name == "max") return ReduceOp::kMax;
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown reduce op '{}' (use sum, avg, min or max)", name));
}

// ---- Operation handle -------------------------------------------------------------------------

struct Operation::State {
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  Status status;

  void finish(Status st) {
    std::lock_guard lock(mu);
    if (finished) return;
    finished = true;
    status = std::move(st);
    cv.notify_all();
  }
};

Status Operation::wait(Deadline deadline) {
  std::unique_lock lock(state_->mu);
  if (!state_->cv.wait_until(lock, deadline.at(), [&] { return state_->finished; })) {
    return Status(StatusCode::kTimeout, "all-reduce still running at the deadline");
  }
  return state_->status;
}

bool Operation::finished() const {
  std::lock_guard lock(state_->mu);
  return state_->finished;
}

// ---- the implementation, all on the network thread unless noted --------------------------------

namespace {

constexpr int kMaxRing = 64;

// Large buffers (backups, piece buffers) are reused across operations: allocating 64 MiB per
// operation costs page faults and zeroing on every call (measured: a third of the all-reduce
// time at 64 MiB). Bounded, so an idle communicator holds at most a few spare buffers.
class BufferPool {
 public:
  std::vector<std::uint8_t> take(std::size_t bytes) {
    std::lock_guard lock(mu_);
    // The smallest spare that fits (spares are sorted largest first): handing a piece the
    // resident backup of a large operation would leave the next backup to be allocated anew.
    for (auto it = spare_.rbegin(); it != spare_.rend(); ++it) {
      if (it->capacity() >= bytes) {
        std::vector<std::uint8_t> b = std::move(*it);
        spare_.erase(std::next(it).base());
        b.resize(bytes);
        return b;
      }
    }
    return std::vector<std::uint8_t>(bytes);
  }
  void give(std::vector<std::uint8_t>&& b) {
    if (b.capacity() == 0) return;
    std::lock_guard lock(mu_);
    spare_.push_back(std::move(b));
    // Keep the largest few.
    std::sort(spare_.begin(), spare_.end(),
              [](const auto& x, const auto& y) { return x.capacity() > y.capacity(); });
    if (spare_.size() > kMaxSpare) spare_.resize(kMaxSpare);
  }

 private:
  static constexpr std::size_t kMaxSpare = 24;
  std::mutex mu_;
  std::vector<std::vector<std::uint8_t>> spare_;
};

// Tags on a ring link (links belong to one epoch, so the sequence number within the epoch is
// enough): sequence, step, piece.
std::uint64_t pieceTag(std::uint64_t op_id, std::size_t step, std::size_t piece) {
  return ((op_id & 0xFFFFFFFFull) << 20) | (static_cast<std::uint64_t>(step) << 10) | piece;
}

// Segments are cut into pieces that travel the ring independently (a piece moves on as soon
// as it has arrived and been reduced), so links, reduction and the next hop overlap.
constexpr std::size_t kMinPieceElems = 16384;  // 64 KiB of fp32
constexpr std::size_t kMaxPieces = 16;
// Each piece in flight holds a receive buffer, so memory grows with the pieces in flight, not
// with the buffer: large segments are cut into more pieces of at most 1 MiB (fp32), of which
// kMaxPieces are in flight at a time. Without this, receive buffers took a whole segment (64 MiB
// at 256 MiB, N = 4; 128 MiB at N = 2) on top of the buffer and its backup.
constexpr std::size_t kMaxPieceElems = std::size_t{1} << 18;
constexpr std::size_t kMaxPiecesPerSegment = 1024;  // the piece field of pieceTag

// Topology probes (p2p/topology.h): a dialled link with this epoch is a probe, not a ring link.
// The prober sends up to kProbePieces pieces; the receiver measures what arrives within
// kProbeWindow of the link's acceptance. 4 MiB at most: 0.3 s at 100 Mbit/s.
constexpr std::uint64_t kProbeEpoch = ~std::uint64_t{0};
constexpr std::size_t kProbePieceBytes = 256u << 10;
constexpr std::size_t kProbePieces = 16;
constexpr Millis kProbeWindow{2000};
// Passive estimates need enough bytes for the rate to mean something.
constexpr std::uint64_t kMinPassiveBytes = 4u << 20;

struct Descriptor {  // step 0: what each peer believes the operation is
  std::uint64_t count;
  std::uint8_t dtype, op, wire, pad = 0;
  std::uint32_t world;
  std::uint32_t quant_block;  // int8/int4 elements per scale
  std::uint32_t pad2 = 0;
};

}  // namespace

class Communicator::Impl {
 public:
  struct Op {
    std::uint64_t epoch = 0, op_id = 0;
    void* user = nullptr;
    std::size_t n = 0;
    DType dtype = DType::kF32;
    ReduceOp red = ReduceOp::kSum;
    Wire wire = Wire::kRaw;
    std::size_t quant_block = kQuantBlock;
    float* work = nullptr;             // fp32 data being reduced (the user buffer for f32)
    std::vector<float> work_storage;   // for f16/bf16
    std::vector<std::uint8_t> backup;  // the user's bytes before the operation
    std::shared_ptr<Operation::State> handle;
    std::size_t world = 0, rank = 0;
    std::size_t pieces = 1;           // per segment
    std::size_t pieces_started = 0;   // in order; at most kMaxPieces more than finished
    std::size_t pieces_finished = 0;  // pieces through the last step
    std::size_t sends_in_flight = 0;
    std::vector<std::uint8_t> desc_send, desc_recv;
    std::vector<std::vector<std::uint8_t>> recv_bufs;  // one outstanding receive per piece
    std::vector<float> scratch;                        // min/max decode target
    Descriptor mine{}, theirs{};
    bool reported_done = false;
    std::unique_ptr<asio::steady_timer> timer;
  };

  Impl(CommunicatorOptions options) : options_(std::move(options)) {
    link_opts_.streams = options_.streams;
    link_opts_.chunk_bytes = options_.chunk_bytes;
  }

  ~Impl() {
    if (client_) {
      std::promise<void> done;
      net_.post([this, &done] {
        abortEverything(Status(StatusCode::kAborted, "the communicator is shutting down"));
        if (state_) state_->shutdown();
        closeRing();
        stopProbes();
        accepted_.clear();
        listener_.reset();
        done.set_value();
      });
      done.get_future().wait();
      client_.reset();  // needs the network thread to close its connection
    }
    // Stop the network thread before any member goes: no handler may run into a half-destroyed
    // communicator.
    net_.stop();
  }

  Status start(Deadline deadline) {
    std::promise<Status> started;
    net_.post([&] {
      auto l = p2p::LinkListener::start(
          net_.context(), options_.listen, link_opts_,
          [this](std::shared_ptr<Link> link, const std::string& from, std::uint64_t epoch) {
            onAccepted(std::move(link), from, epoch);
          });
      if (l) listener_ = std::move(l.value());
      started.set_value(l ? Status() : l.status());
    });
    LOCO_RETURN_IF_ERROR(started.get_future().get());
    std::string advertise = options_.advertise;
    if (advertise.empty()) {
      advertise =
          p2p::HostPort{options_.listen.host == "0.0.0.0" ? "127.0.0.1" : options_.listen.host,
                        listener_->port()}
              .toString();
    }
    p2p::MembershipClientOptions client_options{options_.coordinator, options_.peer_id, advertise,
                                                options_.streams};
    client_options.standby_coordinators = options_.standby_coordinators;
    client_options.coordinator_timeout = options_.coordinator_timeout;
    client_ = std::make_unique<p2p::MembershipClient>(net_, client_options);
    client_->setDecisionCallback([this](std::uint64_t epoch, std::uint64_t op_id, bool commit) {
      onDecision(epoch, op_id, commit);
    });
    {
      // Created on the network thread, which is the only one that reads state_ afterwards.
      std::promise<void> created;
      net_.post([&] {
        state_ = std::make_unique<StateEngine>(net_, *client_, options_.peer_id, link_opts_);
        created.set_value();
      });
      created.get_future().wait();
    }
    client_->setStateCallback([this](const p2p::FrameHeader& h, std::vector<std::uint8_t> payload) {
      state_->onCoordinatorFrame(h, std::move(payload));
    });
    client_->setViewCallback([this](const p2p::GroupView& v) {
      onView(v);
      state_->onView(v);
    });
    // Runs each time this peer loses its group (coordinator lost, or evicted); the client then
    // registers again on its own and a later view starts a new epoch, with a new ring.
    client_->setLostCallback([this](const Status& why) {
      abortEverything(why.withContext("lost the group during an all-reduce"));
      state_->onLost(why);
      closeRing();
    });
    return client_->join(deadline);
  }

  // ---- public calls (application thread) ----

  Result<std::shared_ptr<Operation>> allReduce(void* data, std::size_t count, DType dtype,
                                               ReduceOp red, Wire wire, AllReduceOptions options) {
    if (client_->state() != p2p::MembershipClient::State::kMember) {
      return Status(StatusCode::kInvalidArgument,
                    "all-reduce before this peer was admitted (call waitForMembership)");
    }
    // Operations are matched across peers by (epoch, sequence number). After a member is lost
    // the epoch moves on without a sync point, and peers see it at different moments: one that
    // went on issuing would run its operation alone until the timeout, or among a member set
    // its caller never saw (a success the others cannot match). So the new epoch starts at a
    // sync point, where every member agrees on it.
    const std::uint64_t barrier = client_->barrierEpoch();
    const std::uint64_t epoch = client_->epoch();
    if (epoch != barrier) {
      return Status(
          StatusCode::kAborted,
          fmt::format(
              "the group changed since the last sync point (epoch {} -> {}); call syncPoint() "
              "before the next all-reduce (nothing was started, the buffer is untouched)",
              barrier, epoch));
    }
    if (epoch != seq_epoch_) {
      seq_epoch_ = epoch;
      seq_ = 0;
    }
    auto op = std::make_shared<Op>();
    op->epoch = epoch;
    op->op_id = (epoch << 32) | ++seq_;
    op->handle = std::make_shared<Operation::State>();
    auto handle = std::make_shared<Operation>(op->handle);
    if (count == 0 || data == nullptr) {
      // Still a collective step: tell the group so nobody waits for us.
      client_->reportOp(op->epoch, op->op_id, false);
      return Status(StatusCode::kInvalidArgument,
                    "all-reduce of zero elements (the group aborts this operation)");
    }
    if (options.quant_block == 0 || options.quant_block > kMaxQuantBlock) {
      client_->reportOp(op->epoch, op->op_id, false);
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("quantization block of {} elements is outside 1..{} (the group "
                                "aborts this operation)",
                                options.quant_block, kMaxQuantBlock));
    }
    op->user = data;
    op->n = count;
    op->dtype = dtype;
    op->red = red;
    op->wire = wire;
    op->quant_block = options.quant_block;
    // Restore-on-abort needs the original bytes; this is the one full-size copy an operation makes.
    const auto* bytes = static_cast<const std::uint8_t*>(data);
    op->backup = pool_.take(count * dtypeSize(dtype));
    std::memcpy(op->backup.data(), bytes, op->backup.size());
    if (dtype == DType::kF32) {
      op->work = static_cast<float*>(data);
    } else {
      op->work_storage.resize(count);
      const auto* h = static_cast<const std::uint16_t*>(data);
      for (std::size_t i = 0; i < count; ++i)
        op->work_storage[i] = dtype == DType::kF16 ? halfToFloat(h[i]) : bf16ToFloat(h[i]);
      op->work = op->work_storage.data();
    }
    op->mine = Descriptor{count,
                          static_cast<std::uint8_t>(dtype),
                          static_cast<std::uint8_t>(red),
                          static_cast<std::uint8_t>(wire),
                          0,
                          0,
                          static_cast<std::uint32_t>(options.quant_block)};
    net_.post([this, op, options] { begin(op, options); });
    return handle;
  }

  Result<std::uint64_t> syncPoint(Deadline deadline) {
    std::promise<std::size_t> in_flight;
    net_.post([&] { in_flight.set_value(ops_.size()); });
    if (std::size_t n = in_flight.get_future().get(); n != 0) {
      return Status(
          StatusCode::kInvalidArgument,
          fmt::format("sync point with {} operation(s) in flight; wait for them first", n));
    }
    return client_->syncPoint(deadline);
  }

  Result<SyncReport> syncSharedState(SharedState& state, const SyncOptions& options,
                                     Deadline deadline) {
    std::promise<std::size_t> in_flight;
    net_.post([&] { in_flight.set_value(ops_.size()); });
    if (std::size_t n = in_flight.get_future().get(); n != 0) {
      return Status(
          StatusCode::kInvalidArgument,
          fmt::format("shared-state sync with {} all-reduce(s) in flight; wait for them first", n));
    }
    return state_->sync(state, options, deadline);
  }

  p2p::MembershipClient& client() { return *client_; }
  std::uint64_t bytesSent() const { return bytes_sent_.load(std::memory_order_relaxed); }
  const CommunicatorOptions& options() const { return options_; }

 private:
  // ---- ring links ----

  void onAccepted(std::shared_ptr<Link> link, const std::string& from, std::uint64_t epoch) {
    if (epoch == kProbeEpoch) return receiveProbe(std::move(link), from);
    if ((epoch & kStateLinkEpochBit) !=
        0) {  // a peer fetching shared-state chunks, not a ring link
      if (state_) return state_->onLink(std::move(link), from);
      return link->close(Status(StatusCode::kAborted, "not ready for shared-state links"));
    }
    auto key = std::make_pair(from, epoch);
    std::weak_ptr<Link> weak = link;
    link->setCloseHandler([this, key, weak](const Status&) {
      auto it = accepted_.find(key);
      if (it != accepted_.end() && it->second == weak.lock()) accepted_.erase(it);
    });
    accepted_[key] = std::move(link);
    pumpRingWaiters();
  }

  void closeRing() {
    if (out_link_) {
      out_link_->setCloseHandler(nullptr);
      out_link_->close(Status(StatusCode::kAborted, "ring torn down"));
      out_link_.reset();
    }
    if (in_link_) {
      // Forget it too, or a retry in the same epoch would pick the dead link up again.
      for (auto it = accepted_.begin(); it != accepted_.end();) {
        it = it->second == in_link_ ? accepted_.erase(it) : std::next(it);
      }
      in_link_->setCloseHandler(nullptr);
      in_link_->close(Status(StatusCode::kAborted, "ring torn down"));
      in_link_.reset();
    }
    dialing_ = false;
    passive_bytes_ = 0;
    passive_busy_s_ = 0;
  }

  // Makes sure links to the ring neighbours of `epoch` exist, then runs `ready`. The view must
  // be of that epoch.
  Status ensureRing(std::uint64_t epoch) {
    if (ring_epoch_ != epoch || ring_ids_.empty()) {
      closeRing();
      p2p::GroupView v = client_->view();
      if (v.epoch != epoch)
        return Status(StatusCode::kAborted, "the group changed before the operation started");
      ring_ids_.clear();
      ring_addrs_.clear();
      for (const auto& p : v.peers) {
        if (p.state != p2p::PeerState::kMember) continue;
        ring_ids_.push_back(p.id);
        ring_addrs_.push_back(p.addr);
      }
      auto me = std::find(ring_ids_.begin(), ring_ids_.end(), options_.peer_id);
      if (me == ring_ids_.end())
        return Status(StatusCode::kAborted, "this peer is not in the ring of its epoch");
      if (ring_ids_.size() > kMaxRing)
        return Status(StatusCode::kInvalidArgument, "rings are limited to 64 peers");
      rank_ = static_cast<std::size_t>(me - ring_ids_.begin());
      ring_epoch_ = epoch;
    }
    const std::size_t n = ring_ids_.size();
    if (n == 1) return Status();
    if (!out_link_ && !dialing_) {
      auto next = p2p::parseHostPort(ring_addrs_[(rank_ + 1) % n]);
      if (!next) return next.status();
      dialing_ = true;
      p2p::connectLink(
          net_.context(), *next, options_.peer_id, link_opts_, Deadline::after(Millis(10000)),
          [this, epoch, alive = lifetime_.watch()](Result<std::shared_ptr<Link>> r) {
            if (alive.expired()) return;
            dialing_ = false;
            if (epoch != ring_epoch_) return;
            if (!r) {
              // Refused or unreachable: the neighbour died after the epoch began.
              // Its survivors see kPeerLost, like those whose link to it broke.
              failAll(Status(StatusCode::kPeerLost, r.status().message())
                          .withContext("connecting to the next peer of the ring"));
              return;
            }
            out_link_ = std::move(r.value());
            out_link_->setCloseHandler([this](const Status& why) { onRingBroken(why); });
            pumpRingWaiters();
          },
          epoch);
    }
    if (!in_link_) {
      auto it = accepted_.find({ring_ids_[(rank_ + n - 1) % n], epoch});
      if (it != accepted_.end()) {
        in_link_ = it->second;
        in_link_->setCloseHandler([this](const Status& why) { onRingBroken(why); });
      }
    }
    return Status();
  }

  bool ringReady() const { return ring_ids_.size() == 1 || (out_link_ && in_link_); }

  void pumpRingWaiters() {
    auto waiting = std::move(ring_waiters_);
    ring_waiters_.clear();
    for (auto& op : waiting) startWhenRingReady(op);
  }

  void onRingBroken(const Status& why) {
    closeRing();
    failAll(why.withContext("a ring link broke"));
  }

  // ---- operations ----

  void begin(const std::shared_ptr<Op>& op, AllReduceOptions options) {
    ops_[op->op_id] = op;
    if (early_aborts_.erase({op->epoch, op->op_id}) != 0) {
      op->reported_done = true;  // the group has decided already
      return fail(op, Status(StatusCode::kAborted,
                             "the group aborted this all-reduce before this peer issued it (a peer "
                             "failed it); the buffer is restored"));
    }
    op->timer = std::make_unique<asio::steady_timer>(net_.context(), options.timeout);
    op->timer->async_wait(
        [this, op, t = options.timeout, alive = lifetime_.watch()](const std::error_code& ec) {
          if (ec || alive.expired()) return;
          fail(op, Status(StatusCode::kTimeout,
                          fmt::format("all-reduce did not finish within {} ms", t.count())));
        });
    // A newer view may have arrived between allReduce() and now: onView() fails only the
    // operations already here, and the ring of the old epoch may still look healthy, so this one
    // would wait for peers that have moved on until its timeout.
    if (const std::uint64_t now = client_->epoch(); now != op->epoch) {
      return fail(
          op,
          Status(StatusCode::kAborted,
                 fmt::format(
                     "the group changed as the all-reduce started (epoch {} -> {}); the buffer is "
                     "restored",
                     op->epoch, now)));
    }
    startWhenRingReady(op);
  }

  void startWhenRingReady(const std::shared_ptr<Op>& op) {
    if (op->handle->finished || ops_.count(op->op_id) == 0) return;
    if (Status st = ensureRing(op->epoch); !st.isOk()) return fail(op, st);
    if (!ringReady()) {
      ring_waiters_.push_back(op);
      return;
    }
    op->world = ring_ids_.size();
    op->rank = rank_;
    op->mine.world = static_cast<std::uint32_t>(op->world);
    if (op->world == 1) return dataDone(op);  // alone: the input is the result
    runStep(op);
  }

  std::pair<std::size_t, std::size_t> segment(const Op& op, std::size_t s) const {
    std::size_t begin = op.n * s / op.world, end = op.n * (s + 1) / op.world;
    return {begin, end - begin};
  }

  // Step 0 exchanges descriptors; then steps 1..N-1 reduce-scatter and N..2N-2 all-gather, each
  // piece on its own.
  void runStep(const std::shared_ptr<Op>& op) {
    op->desc_send.resize(sizeof(Descriptor));
    std::memcpy(op->desc_send.data(), &op->mine, sizeof(Descriptor));
    op->desc_recv.assign(sizeof(Descriptor), 0);
    auto pending = std::make_shared<int>(2);
    auto error = std::make_shared<Status>();
    auto done = [this, op, pending, error](const Status& st) {
      if (op->handle->finished) return;
      if (!st.isOk() && error->isOk()) *error = st;
      if (--*pending == 0) descriptorsExchanged(op, *error);
    };
    in_link_->recv(pieceTag(op->op_id, 0, 0), op->desc_recv, done);
    out_link_->send(pieceTag(op->op_id, 0, 0), op->desc_send, done);
  }

  void descriptorsExchanged(const std::shared_ptr<Op>& op, const Status& error) {
    if (!error.isOk()) return fail(op, error);
    std::memcpy(&op->theirs, op->desc_recv.data(), sizeof(Descriptor));
    const Descriptor& a = op->mine;
    const Descriptor& b = op->theirs;
    if (a.count != b.count || a.dtype != b.dtype || a.op != b.op || a.wire != b.wire ||
        a.world != b.world || a.quant_block != b.quant_block) {
      return fail(
          op,
          Status(
              StatusCode::kInvalidArgument,
              fmt::format(
                  "peers disagree on the all-reduce: here {} elements, dtype {}, op {}, wire {} "
                  "(block {}); the previous peer has {} elements, dtype {}, op {}, wire {} (block "
                  "{})",
                  a.count, a.dtype, a.op, wireName(static_cast<Wire>(a.wire)), a.quant_block,
                  b.count, b.dtype, b.op,
                  wireName(static_cast<Wire>(std::min<std::uint8_t>(b.wire, 4))), b.quant_block)));
    }
    const std::size_t seg = op->n / op->world;
    op->pieces =
        std::max(std::clamp<std::size_t>(seg / kMinPieceElems, 1, kMaxPieces),
                 std::min((seg + kMaxPieceElems - 1) / kMaxPieceElems, kMaxPiecesPerSegment));
    op->recv_bufs.resize(op->pieces);
    startPieces(op);
  }

  // Every peer starts pieces in the same order, a new one each time one finishes here.
  void startPieces(const std::shared_ptr<Op>& op) {
    while (op->pieces_started < op->pieces &&
           op->pieces_started - op->pieces_finished < kMaxPieces) {
      if (op->handle->finished || !in_link_ || !out_link_) return;  // failed meanwhile
      const std::size_t p = op->pieces_started++;
      postRecv(op, p, 1);
      sendPiece(op, p, 1);
    }
  }

  // Which segment step `s` sends and which it receives (s >= 1).
  std::size_t sendSegment(const Op& op, std::size_t s) const {
    const std::size_t N = op.world, r = op.rank;
    return s < N ? (r + N - (s - 1)) % N : (r + 1 + N - (s - N)) % N;
  }
  std::size_t recvSegment(const Op& op, std::size_t s) const {
    const std::size_t N = op.world, r = op.rank;
    return s < N ? (r + 2 * N - s) % N : (r + N - (s - N)) % N;
  }
  // Element range of piece p of segment `seg`.
  std::pair<std::size_t, std::size_t> piece(const Op& op, std::size_t seg, std::size_t p) const {
    auto [sb, sl] = segment(op, seg);
    std::size_t b = sl * p / op.pieces, e = sl * (p + 1) / op.pieces;
    return {sb + b, e - b};
  }

  void sendPiece(const std::shared_ptr<Op>& op, std::size_t p, std::size_t s) {
    const std::size_t N = op->world;
    auto [b, len] = piece(*op, sendSegment(*op, s), p);
    const bool raw = op->wire == Wire::kRaw;
    std::shared_ptr<std::vector<std::uint8_t>> bytes;  // kept alive until the send completes
    if (s == N) {
      // This peer owns the segment: finish the piece, encode it once, and take the decoded value
      // itself, exactly like every other peer will.
      if (op->red == ReduceOp::kAvg) {
        for (std::size_t i = 0; i < len; ++i) op->work[b + i] /= static_cast<float>(N);
      }
      if (!raw) {
        bytes = std::make_shared<std::vector<std::uint8_t>>(
            encodedBytes(op->wire, len, op->quant_block));
        encode(op->wire, std::span<const float>(op->work + b, len), *bytes, op->quant_block);
        decode(op->wire, *bytes, std::span<float>(op->work + b, len), op->quant_block);
      }
    } else if (s > N && !raw) {
      bytes = std::make_shared<std::vector<std::uint8_t>>(
          std::move(op->recv_bufs[p]));  // forwarded as received
      op->recv_bufs[p] = {};
    } else if (s < N && !raw) {
      bytes = std::make_shared<std::vector<std::uint8_t>>(
          pool_.take(encodedBytes(op->wire, len, op->quant_block)));
      encode(op->wire, std::span<const float>(op->work + b, len), *bytes, op->quant_block);
    }
    // Raw sends go straight from the buffer: nothing writes that range again while it is sent.
    ByteSpan span = bytes ? ByteSpan(*bytes)
                          : ByteSpan(reinterpret_cast<const std::uint8_t*>(op->work + b), len * 4);
    ++op->sends_in_flight;
    bytes_sent_.fetch_add(span.size(), std::memory_order_relaxed);
    out_link_->send(pieceTag(op->op_id, s, p), span, [this, op, bytes](const Status& st) {
      if (bytes) pool_.give(std::move(*bytes));
      if (op->handle->finished) return;
      --op->sends_in_flight;
      if (!st.isOk()) return fail(op, st);
      maybeDataDone(op);
    });
  }

  void postRecv(const std::shared_ptr<Op>& op, std::size_t p, std::size_t s) {
    auto [b, len] = piece(*op, recvSegment(*op, s), p);
    auto& buf = op->recv_bufs[p];
    if (buf.capacity() == 0) buf = pool_.take(encodedBytes(op->wire, len, op->quant_block));
    buf.resize(encodedBytes(op->wire, len, op->quant_block));
    in_link_->recv(pieceTag(op->op_id, s, p), buf, [this, op, p, s](const Status& st) {
      if (op->handle->finished) return;
      if (!st.isOk()) return fail(op, st);
      onPieceReceived(op, p, s);
    });
  }

  void onPieceReceived(const std::shared_ptr<Op>& op, std::size_t p, std::size_t s) {
    const std::size_t N = op->world;
    auto [b, len] = piece(*op, recvSegment(*op, s), p);
    const auto& buf = op->recv_bufs[p];
    std::span<float> dst(op->work + b, len);
    if (s < N) {
      if (op->red == ReduceOp::kSum || op->red == ReduceOp::kAvg) {
        decodeAdd(op->wire, buf, dst, op->quant_block);
      } else {
        op->scratch.resize(len);
        decode(op->wire, buf, op->scratch, op->quant_block);
        for (std::size_t i = 0; i < len; ++i) {
          dst[i] = op->red == ReduceOp::kMin ? std::min(dst[i], op->scratch[i])
                                             : std::max(dst[i], op->scratch[i]);
        }
      }
    } else {
      // All-gather pieces land in their own buffer first: a raw send of this range from an
      // earlier step may still be reading the buffer.
      decode(op->wire, buf, dst, op->quant_block);
    }
    if (s == 2 * N - 2) {
      ++op->pieces_finished;
      pool_.give(std::move(op->recv_bufs[p]));  // for the next piece
      op->recv_bufs[p] = {};
      startPieces(op);
      return maybeDataDone(op);
    }
    sendPiece(op, p, s + 1);  // for quantized all-gather this forwards (moves) recv_bufs[p]
    postRecv(op, p, s + 1);
  }

  void maybeDataDone(const std::shared_ptr<Op>& op) {
    if (op->pieces_finished == op->pieces && op->sends_in_flight == 0 && !op->reported_done)
      dataDone(op);
  }

  // The data phase is complete here; the result counts only once the coordinator commits.
  void releaseBuffers(Op& op) {
    for (auto& b : op.recv_bufs) pool_.give(std::move(b));
    op.recv_bufs.clear();
  }

  void dataDone(const std::shared_ptr<Op>& op) {
    releaseBuffers(*op);
    measureRingLink();  // before the report: the coordinator then has it at the next sync point
    op->reported_done = true;
    client_->reportOp(op->epoch, op->op_id, true);
  }

  // A new epoch while operations run means a member left (admissions happen only at sync
  // points). Operations of older epochs that have not reported done can never commit; without
  // this they would wait on a frozen peer's silent links until their timeout, because the
  // coordinator knows no operation nobody has reported yet.
  void onView(const p2p::GroupView& v) {
    queueProbes(v);
    std::vector<std::shared_ptr<Op>> stale;
    for (auto& [id, op] : ops_) {
      if (op->epoch < v.epoch && !op->reported_done) stale.push_back(op);
    }
    for (auto& op : stale) {
      fail(op, Status(StatusCode::kAborted,
                      fmt::format("the group changed during the all-reduce (epoch {} -> {}); the "
                                  "buffer is restored",
                                  op->epoch, v.epoch)));
    }
  }

  void onDecision(std::uint64_t epoch, std::uint64_t op_id, bool commit) {
    auto it = ops_.find(op_id);
    if (it == ops_.end() && !commit) {
      // Another peer failed this operation before this peer issued it (e.g. a zero-length
      // call): remember the verdict, or the operation would wait for peers that gave up on it.
      if (early_aborts_.size() >= kMaxEarlyAborts) early_aborts_.erase(early_aborts_.begin());
      early_aborts_.insert({epoch, op_id});
      return;
    }
    if (it == ops_.end() || it->second->epoch != epoch) return;
    auto op = it->second;
    if (commit && op->reported_done) {
      if (op->dtype != DType::kF32) {
        auto* h = static_cast<std::uint16_t*>(op->user);
        for (std::size_t i = 0; i < op->n; ++i)
          h[i] = op->dtype == DType::kF16 ? floatToHalf(op->work[i]) : floatToBf16(op->work[i]);
      }
      finish(op, Status());
      return;
    }
    fail(op,
         Status(
             StatusCode::kAborted,
             "the group aborted this all-reduce (a peer failed or left); the buffer is restored"));
  }

  // Local failure or abort: restore, tell the group, and end. A peer that never reported done
  // cannot be part of a commit, so ending at once is safe.
  void fail(const std::shared_ptr<Op>& op, const Status& why) {
    if (op->handle->finished) return;
    if (op->user != nullptr && !op->backup.empty())
      std::memcpy(op->user, op->backup.data(), op->backup.size());
    if (!op->reported_done) client_->reportOp(op->epoch, op->op_id, false);
    static Counter& failed = counter("collectives.allreduce_failed");
    failed.inc();
    LOG_WARN(kLogP2p, "all-reduce {}:{} failed: {}", op->epoch, op->op_id & 0xFFFFFFFF,
             why.message());
    finish(op, why);
    // Bytes of this operation may still be in flight on the ring: start the next one afresh.
    closeRing();
    failAll(Status(StatusCode::kAborted, "another all-reduce in flight failed: " + why.message()));
  }

  void finish(const std::shared_ptr<Op>& op, Status st) {
    if (op->timer) op->timer->cancel();
    releaseBuffers(*op);
    pool_.give(std::move(op->backup));
    ops_.erase(op->op_id);
    ring_waiters_.erase(std::remove(ring_waiters_.begin(), ring_waiters_.end(), op),
                        ring_waiters_.end());
    op->handle->finish(std::move(st));
  }

  // This peer left or was removed from the group: no verdict will come for anything in flight,
  // and the group aborts it (its epoch changed), so every operation ends restored.
  void abortEverything(const Status& why) {
    std::vector<std::shared_ptr<Op>> all;
    for (auto& [id, op] : ops_) all.push_back(op);
    for (auto& op : all) {
      op->reported_done = true;  // nothing to report any more
      fail(op, why);
    }
  }

  void failAll(const Status& why) {
    std::vector<std::shared_ptr<Op>> all;
    for (auto& [id, op] : ops_) {
      // An op that reported done waits for the coordinator's verdict: it may have committed.
      if (!op->reported_done) all.push_back(op);
    }
    for (auto& op : all) fail(op, why);
  }

  // ---- topology (p2p/topology.h) ----

  // The outgoing ring link's rate while it had data to send. Fast links mostly idle waiting for
  // data from upstream and show a high rate; the slow link of a ring is always backlogged and
  // shows its true rate, which is what the ring order needs.
  void measureRingLink() {
    if (!options_.measure_topology || !out_link_ || ring_ids_.size() < 2) return;
    auto m = out_link_->takeSendMeter();
    passive_bytes_ += m.bytes;
    passive_busy_s_ += m.busy_s;
    if (passive_bytes_ < kMinPassiveBytes || passive_busy_s_ <= 0) return;
    const double rate = static_cast<double>(passive_bytes_) / passive_busy_s_;
    passive_bytes_ = 0;
    passive_busy_s_ = 0;
    const std::string& next = ring_ids_[(rank_ + 1) % ring_ids_.size()];
    double& known = reported_rate_[next];
    if (known > 0 && std::abs(rate / known - 1) < 0.1) return;  // nothing new to say
    known = rate;
    client_->reportLinks(
        {p2p::EdgeEstimate{options_.peer_id, next, rate, p2p::EdgeSource::kPassive}});
  }

  // Probes every member this peer has no estimate towards, except the ring successor, which
  // real traffic measures. One probe at a time, so probes do not split this peer's uplink.
  void queueProbes(const p2p::GroupView& v) {
    if (!options_.measure_topology) return;
    std::vector<const p2p::PeerInfo*> members;
    for (const auto& p : v.peers) {
      if (p.state == p2p::PeerState::kMember) members.push_back(&p);
    }
    auto me = std::find_if(members.begin(), members.end(),
                           [&](auto* p) { return p->id == options_.peer_id; });
    if (me == members.end() || members.size() < 3) return setProbesIdle();
    const std::string& next =
        members[static_cast<std::size_t>(me - members.begin() + 1) % members.size()]->id;
    for (auto* p : members) {
      if (p->id == options_.peer_id || p->id == next || probed_.count(p->id) != 0 ||
          reported_rate_.count(p->id) != 0)
        continue;
      probed_.insert(p->id);
      probe_queue_.emplace_back(p->id, p->addr);
    }
    startNextProbe();
  }

  void setProbesIdle() {
    std::lock_guard lock(probe_mu_);
    probes_idle_ = probe_queue_.empty() && !probe_link_ && !probe_dialing_;
    probe_cv_.notify_all();
  }

  void startNextProbe() {
    if (probe_link_ || probe_dialing_ || probe_queue_.empty()) return setProbesIdle();
    auto [id, addr] = probe_queue_.front();
    probe_queue_.pop_front();
    auto hp = p2p::parseHostPort(addr);
    if (!hp) return startNextProbe();
    probe_dialing_ = true;
    setProbesIdle();
    p2p::connectLink(
        net_.context(), *hp, options_.peer_id, link_opts_, Deadline::after(Millis(5000)),
        [this, id, alive = lifetime_.watch()](Result<std::shared_ptr<Link>> r) {
          if (alive.expired()) return;
          probe_dialing_ = false;
          if (!r) {
            LOG_DEBUG(kLogP2p, "probe to {} failed: {}", id.substr(0, 8), r.status().message());
            return startNextProbe();
          }
          probe_link_ = std::move(r.value());
          // The receiver closes the link when it has measured; a timer bounds the wait.
          probe_link_->setCloseHandler([this](const Status&) { endProbe(); });
          for (std::size_t i = 0; i < kProbePieces; ++i) {
            probe_link_->send(i + 1, probe_payload_, [](const Status&) {});
          }
          probe_timer_ =
              std::make_unique<asio::steady_timer>(net_.context(), kProbeWindow + Millis(1000));
          probe_timer_->async_wait([this, alive = lifetime_.watch()](const std::error_code& ec) {
            if (!ec && !alive.expired()) endProbe();
          });
        },
        kProbeEpoch);
  }

  void endProbe() {
    if (!probe_link_) return;
    if (probe_timer_) probe_timer_->cancel();
    auto link = std::move(probe_link_);
    link->setCloseHandler(nullptr);
    link->close(Status(StatusCode::kAborted, "probe finished"));
    startNextProbe();
  }

  struct ProbeReceive {
    std::shared_ptr<Link> link;
    std::string from;
    TimePoint accepted, last;
    std::size_t pieces = 0;
    std::vector<std::uint8_t> sink;
    std::unique_ptr<asio::steady_timer> timer;
    bool finished = false;
  };

  // The receiving end measures: it sees when bytes arrive, not when a kernel buffer took them.
  void receiveProbe(std::shared_ptr<Link> link, const std::string& from) {
    auto rx = std::make_shared<ProbeReceive>();
    rx->link = std::move(link);
    rx->from = from;
    rx->accepted = Clock::now();
    rx->sink.resize(kProbePieceBytes);
    probe_receives_.push_back(rx);
    rx->link->setCloseHandler([this, rx](const Status&) { finishProbeReceive(rx); });
    for (std::size_t i = 0; i < kProbePieces; ++i) {
      rx->link->recv(i + 1, rx->sink, [this, rx](const Status& st) {
        if (rx->finished || !st.isOk()) return finishProbeReceive(rx);
        rx->last = Clock::now();
        if (++rx->pieces == kProbePieces) finishProbeReceive(rx);
      });
    }
    rx->timer = std::make_unique<asio::steady_timer>(net_.context(), kProbeWindow);
    rx->timer->async_wait([this, rx, alive = lifetime_.watch()](const std::error_code& ec) {
      if (!ec && !alive.expired()) finishProbeReceive(rx);
    });
  }

  void finishProbeReceive(const std::shared_ptr<ProbeReceive>& rx) {
    if (rx->finished) return;
    rx->finished = true;
    rx->timer->cancel();
    rx->link->setCloseHandler(nullptr);
    rx->link->close(Status(StatusCode::kAborted, "probe measured"));
    probe_receives_.erase(std::remove(probe_receives_.begin(), probe_receives_.end(), rx),
                          probe_receives_.end());
    const double seconds = toSeconds(rx->last - rx->accepted);
    if (rx->pieces == 0 || seconds <= 0) return;
    // From acceptance, so the figure includes the first round trip and slow start: a lower
    // bound, which passive measurement replaces once the link carries ring traffic.
    const double rate = static_cast<double>(rx->pieces * kProbePieceBytes) / seconds;
    LOG_DEBUG(kLogP2p, "probe from {}: {:.1f} Mbit/s", rx->from.substr(0, 8), rate * 8e-6);
    client_->reportLinks(
        {p2p::EdgeEstimate{rx->from, options_.peer_id, rate, p2p::EdgeSource::kProbe}});
  }

  void stopProbes() {
    probe_queue_.clear();
    if (probe_link_) {
      probe_link_->setCloseHandler(nullptr);
      probe_link_->close(Status(StatusCode::kAborted, "shutting down"));
      probe_link_.reset();
    }
    if (probe_timer_) probe_timer_->cancel();
    auto receives = probe_receives_;
    for (auto& rx : receives) {
      rx->finished = true;
      rx->timer->cancel();
      rx->link->setCloseHandler(nullptr);
      rx->link->close(Status(StatusCode::kAborted, "shutting down"));
    }
    probe_receives_.clear();
    setProbesIdle();
  }

 public:
  Status waitForProbes(Deadline deadline) {
    std::unique_lock lock(probe_mu_);
    if (!probe_cv_.wait_until(lock, deadline.at(), [&] { return probes_idle_; })) {
      return Status(StatusCode::kTimeout, "bandwidth probes still running at the deadline");
    }
    return Status();
  }

 private:
  CommunicatorOptions options_;
  p2p::LinkOptions link_opts_;
  p2p::NetworkThread net_{"loco-comm"};
  p2p::LifetimeGuard lifetime_;
  BufferPool pool_;
  std::unique_ptr<p2p::MembershipClient> client_;
  std::unique_ptr<StateEngine> state_;  // shared state (state_engine.h)
  std::unique_ptr<p2p::LinkListener> listener_;
  // Application thread:
  std::uint64_t seq_epoch_ = ~std::uint64_t{0};
  std::uint64_t seq_ = 0;
  // Network thread:
  std::uint64_t ring_epoch_ = ~std::uint64_t{0};
  std::vector<std::string> ring_ids_, ring_addrs_;
  std::size_t rank_ = 0;
  std::shared_ptr<Link> out_link_, in_link_;
  bool dialing_ = false;
  std::map<std::pair<std::string, std::uint64_t>, std::shared_ptr<Link>> accepted_;
  std::vector<std::shared_ptr<Op>> ring_waiters_;
  std::map<std::uint64_t, std::shared_ptr<Op>> ops_;
  std::atomic<std::uint64_t> bytes_sent_{0};
  static constexpr std::size_t kMaxEarlyAborts = 1024;
  std::set<std::pair<std::uint64_t, std::uint64_t>>
      early_aborts_;  // (epoch, op id) aborted before issued here
  // Topology (network thread, except probes_idle_ under probe_mu_):
  std::uint64_t passive_bytes_ = 0;
  double passive_busy_s_ = 0;
  std::map<std::string, double> reported_rate_;  // my outgoing links measured passively
  std::set<std::string> probed_;
  std::deque<std::pair<std::string, std::string>> probe_queue_;  // id, address
  std::shared_ptr<Link> probe_link_;
  bool probe_dialing_ = false;
  std::unique_ptr<asio::steady_timer> probe_timer_;
  std::vector<std::shared_ptr<ProbeReceive>> probe_receives_;
  const std::vector<std::uint8_t> probe_payload_ = std::vector<std::uint8_t>(kProbePieceBytes, 0);
  std::mutex probe_mu_;
  std::condition_variable probe_cv_;
  bool probes_idle_ = true;
};

// ---- Communicator ------------------------------------------------------------------------------

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Communicator::~Communicator() = default;

Result<std::unique_ptr<Communicator>> Communicator::create(CommunicatorOptions options,
                                                           Deadline deadline) {
  auto impl = std::make_unique<Impl>(std::move(options));
  LOCO_RETURN_IF_ERROR(impl->start(deadline));
  return std::unique_ptr<Communicator>(new Communicator(std::move(impl)));
}

Status Communicator::waitForMembership(Deadline deadline) {
  return impl_->client().waitForMembership(deadline);
}
Result<std::uint64_t> Communicator::syncPoint(Deadline deadline) {
  return impl_->syncPoint(deadline);
}
Result<std::shared_ptr<Operation>> Communicator::allReduce(void* data, std::size_t count,
                                                           DType dtype, ReduceOp op, Wire wire,
                                                           AllReduceOptions options) {
  return impl_->allReduce(data, count, dtype, op, wire, options);
}
Result<SyncReport> Communicator::syncSharedState(SharedState& state, const SyncOptions& options,
                                                 Deadline deadline) {
  return impl_->syncSharedState(state, options, deadline);
}
Status Communicator::leave(Deadline deadline) {
  return impl_->client().leave(deadline);
}
void Communicator::setRegistrationReport(std::uint64_t state_revision, std::uint64_t state_digest,
                                         std::uint64_t progress, bool finished) {
  impl_->client().setRegistrationReport(
      p2p::RegistrationReport{state_revision, state_digest, progress, finished});
}
void Communicator::reportProgress(const p2p::PeerReportMsg& report) {
  impl_->client().reportProgress(report);
}
Status Communicator::waitForProbes(Deadline deadline) {
  return impl_->waitForProbes(deadline);
}
std::uint64_t Communicator::epoch() const {
  return impl_->client().epoch();
}
std::size_t Communicator::world() const {
  return impl_->client().view().world();
}
std::uint64_t Communicator::bytesSent() const {
  return impl_->bytesSent();
}
std::vector<std::string> Communicator::ring() const {
  return impl_->client().view().ringIds();
}
const std::string& Communicator::peerId() const {
  return impl_->options().peer_id;
}

}  // namespace loco::collectives
