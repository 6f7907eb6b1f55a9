#pragma once
// The life of a collective operation, whatever its algorithm (ARCHITECTURE.md §5). Internal to
// collectives/.
//
//   submit ─▶ begin (epoch still current? group known) ─▶ Collective::start (data phase)
//     ─▶ dataDone: report "done" to the arbiter ─▶ decision: commit ─▶ Collective::commit, OK
//   any failure (a transfer, a timeout, a newer epoch, the arbiter's abort) before a commit:
//     ─▶ Collective::restore, report "failed", end with the error; abort the transport and every
//        other operation in flight that has not reported done (their bytes may be in flight).
//
// The arbiter is the coordinator (MembershipClient) in production and a fake in unit tests: it
// commits an operation when every taking part reported it done, and aborts it on any failure
// report or membership change. A peer reports success only after a commit, so no two survivors
// can disagree.
//
// Thread rules: submit() from any thread; everything else on the transport's thread, where every
// algorithm callback runs too.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "collectives/buffer_pool.h"
#include "collectives/communicator.h"
#include "collectives/descriptor.h"
#include "collectives/transport.h"

namespace loco::collectives {

struct Operation::State {
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  Status status;

  void finish(Status st);
};

class OpEngine;

// One operation's algorithm and buffers. Built on the caller's thread (which may copy or convert
// the caller's buffers there), then driven by the engine on the transport thread.
class Collective : public std::enable_shared_from_this<Collective> {
 public:
  virtual ~Collective() = default;

  // Transport thread. Runs the data phase; ends in dataComplete() or fail().
  virtual void start() = 0;
  // The group committed: the caller's buffers get the result.
  virtual void commit() = 0;
  // The operation failed or was aborted: the caller's buffers get their old bytes back.
  virtual void restore() = 0;
  // The operation ended: return pooled memory. Called once, after commit() or restore().
  virtual void release() = 0;

  // Set by the caller before submit().
  std::uint64_t epoch = 0;
  std::uint64_t op_id = 0;
  std::uint64_t tag_base = 0;        // link tags of this operation: tag_base | step << 10 | piece
  std::vector<std::string> members;  // who takes part; empty: every member of the epoch
  Millis timeout{120000};
  std::shared_ptr<Operation::State> handle = std::make_shared<Operation::State>();

  // Set by the engine.
  PeerGroup group;  // the epoch's members; group.rank is this peer
  bool ended = false;
  bool reported_done = false;

 protected:
  static constexpr std::size_t kMaxSteps = 1024;
  static constexpr std::size_t kMaxPiecesPerStep = 1024;
  std::uint64_t tag(std::size_t step, std::size_t piece) const {
    return tag_base | (static_cast<std::uint64_t>(step) << 10) | piece;
  }
  Transport& transport();
  BufferPool& pool();
  void countSent(std::size_t bytes);
  void fail(const Status& why);

  // The descriptor check every algorithm runs alongside its data (descriptor.h): `mine` goes to
  // each rank of `to`; the descriptor of each rank of `from` is compared with it. Every
  // algorithm sends to its ring successor and checks its predecessor at least, so any two peers
  // that disagree fail the operation everywhere, even if they chose different algorithms.
  void checkDescriptors(const Descriptor& mine, const std::vector<std::size_t>& to,
                        const std::vector<std::size_t>& from);
  // Runs `fn` once the descriptor of `peer` matched (at once if it has). Data from a peer is
  // received only then: a peer that disagrees on sizes would otherwise break the link with a
  // size error before its descriptor could say what differs. (Its bytes wait in the link's
  // staging meanwhile, about one hop's worth.)
  void afterDescriptor(std::size_t peer, std::function<void()> fn);
  // Reports the operation done once every descriptor has been checked too.
  void dataComplete();

 private:
  friend class OpEngine;
  struct PeerDescriptor {
    std::vector<std::uint8_t> bytes;
    bool checked = false;
    std::vector<std::function<void()>> waiting;
  };
  void onDescriptor(std::size_t peer);
  OpEngine* engine_ = nullptr;
  Descriptor mine_{};
  std::vector<std::uint8_t> desc_out_;
  std::map<std::size_t, PeerDescriptor> descriptors_;  // by rank, those this peer checks
  std::size_t unchecked_ = 0;
  bool data_complete_ = false;
};

class OpEngine {
 public:
  class Arbiter {
   public:
    virtual ~Arbiter() = default;
    // This peer's part of (epoch, op_id) is done (ok) or failed. `members`: who takes part (empty:
    // every member of the epoch). Non-blocking; the decision comes back through onDecision().
    virtual void report(std::uint64_t epoch, std::uint64_t op_id, bool ok,
                        const std::vector<std::string>& members) = 0;
  };
  // The group of `epoch` as of now (transport thread); an error when the view moved on.
  using GroupOf = std::function<Result<PeerGroup>(std::uint64_t epoch)>;

  OpEngine(Transport& transport, Arbiter& arbiter, GroupOf group_of);
  OpEngine(const OpEngine&) = delete;
  OpEngine& operator=(const OpEngine&) = delete;

  // Any thread. The operation starts on the transport thread; its handle ends it.
  void submit(std::shared_ptr<Collective> op);

  // Transport thread.
  void onDecision(std::uint64_t epoch, std::uint64_t op_id, bool commit);
  // A view of `epoch` arrived. Admissions happen only at sync points, so a new epoch while
  // operations run means a member left: operations of older epochs that have not reported done
  // can never commit, and fail now rather than wait on a frozen peer until their timeout.
  void onEpoch(std::uint64_t epoch);
  // This peer left or lost the group: no verdict will come for anything in flight.
  void abortEverything(const Status& why);
  // Fails every operation that has not reported done (those that have wait for their verdict).
  void failAll(const Status& why);
  std::size_t inFlight() const { return ops_.size(); }
  // Runs before each "done" report (topology measurement: the coordinator then has it at the
  // next sync point).
  void setBeforeReport(std::function<void()> fn) { before_report_ = std::move(fn); }

  Transport& transport() { return transport_; }
  BufferPool& pool() { return pool_; }
  // Any thread.
  std::uint64_t bytesSent() const { return bytes_sent_.load(std::memory_order_relaxed); }

 private:
  friend class Collective;
  struct Entry {
    std::shared_ptr<Collective> op;
    std::unique_ptr<Alarm> alarm;
  };
  void begin(const std::shared_ptr<Collective>& op);
  void dataDone(Collective& op);
  void fail(Collective& op, const Status& why);
  void finish(Collective& op, Status st);

  Transport& transport_;
  Arbiter& arbiter_;
  GroupOf group_of_;
  BufferPool pool_;
  std::function<void()> before_report_;
  std::map<std::uint64_t, Entry> ops_;  // by op id
  static constexpr std::size_t kMaxEarlyAborts = 1024;
  // (epoch, op id) the group aborted before this peer issued it (e.g. another peer's call failed
  // its own checks): the operation ends at once when it is issued here.
  std::set<std::pair<std::uint64_t, std::uint64_t>> early_aborts_;
  std::atomic<std::uint64_t> bytes_sent_{0};
};

}  // namespace loco::collectives
