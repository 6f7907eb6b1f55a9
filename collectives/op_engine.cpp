#include "collectives/op_engine.h"

#include <fmt/format.h>

#include <algorithm>

#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/base/text.h"

namespace loco::collectives {

// ---- Operation handle --------------------------------------------------------------------------

void Operation::State::finish(Status st) {
  std::lock_guard lock(mu);
  if (finished) return;
  finished = true;
  status = std::move(st);
  cv.notify_all();
}

Status Operation::wait(Deadline deadline) {
  std::unique_lock lock(state_->mu);
  if (!state_->cv.wait_until(lock, deadline.at(), [&] { return state_->finished; })) {
    return Status(StatusCode::kTimeout, "operation still running at the deadline");
  }
  return state_->status;
}

bool Operation::finished() const {
  std::lock_guard lock(state_->mu);
  return state_->finished;
}

// ---- Collective --------------------------------------------------------------------------------

Transport& Collective::transport() {
  return engine_->transport();
}

BufferPool& Collective::pool() {
  return engine_->pool();
}

void Collective::countSent(std::size_t bytes) {
  engine_->bytes_sent_.fetch_add(bytes, std::memory_order_relaxed);
}

void Collective::fail(const Status& why) {
  engine_->fail(*this, why);
}

void Collective::checkDescriptors(const Descriptor& mine, const std::vector<std::size_t>& to,
                                  const std::vector<std::size_t>& from) {
  mine_ = mine;
  desc_out_ = encodeDescriptor(mine);
  auto self = shared_from_this();
  for (std::size_t peer : from) {
    if (peer == group.rank) continue;
    descriptors_[peer].bytes.assign(kDescriptorBytes, 0);
  }
  unchecked_ = descriptors_.size();
  for (std::size_t peer : from) {
    if (peer == group.rank || ended) continue;
    transport().recv(peer, tag(0, 0), descriptors_[peer].bytes, [self, peer](const Status& st) {
      if (self->ended) return;
      if (!st.isOk()) return self->fail(st);
      self->onDescriptor(peer);
    });
  }
  for (std::size_t peer : to) {
    if (peer == group.rank || ended) continue;
    transport().send(peer, tag(0, 0), desc_out_, [self](const Status& st) {
      if (!self->ended && !st.isOk()) self->fail(st);
    });
  }
}

void Collective::onDescriptor(std::size_t peer) {
  PeerDescriptor& d = descriptors_[peer];
  auto theirs = decodeDescriptor(d.bytes);
  if (!theirs) return fail(theirs.status());
  if (Status cmp = compareDescriptors(mine_, *theirs); !cmp.isOk()) return fail(cmp);
  d.checked = true;
  --unchecked_;
  auto waiting = std::move(d.waiting);
  d.waiting.clear();
  for (auto& fn : waiting) {
    if (ended) return;
    fn();
  }
  if (!ended && unchecked_ == 0 && data_complete_) engine_->dataDone(*this);
}

void Collective::afterDescriptor(std::size_t peer, std::function<void()> fn) {
  auto it = descriptors_.find(peer);
  if (it == descriptors_.end() || it->second.checked) return fn();
  it->second.waiting.push_back(std::move(fn));
}

void Collective::dataComplete() {
  data_complete_ = true;
  if (unchecked_ == 0) engine_->dataDone(*this);
}

// ---- OpEngine ----------------------------------------------------------------------------------

OpEngine::OpEngine(Transport& transport, Arbiter& arbiter, GroupOf group_of)
    : transport_(transport), arbiter_(arbiter), group_of_(std::move(group_of)) {}

void OpEngine::submit(std::shared_ptr<Collective> op) {
  transport_.post([this, op = std::move(op)] { begin(op); });
}

void OpEngine::begin(const std::shared_ptr<Collective>& op) {
  op->engine_ = this;
  if (ops_.count(op->op_id) != 0) {
    // Only a collision of two exchanges' hashed ids can get here; never reuse the running one's
    // tags.
    op->ended = true;
    op->release();
    op->handle->finish(Status(StatusCode::kInternal,
                              fmt::format("operation id {:x} is already in flight", op->op_id)));
    return;
  }
  ops_[op->op_id] = Entry{op, nullptr};
  if (early_aborts_.erase({op->epoch, op->op_id}) != 0) {
    op->reported_done = true;  // the group has decided already
    return fail(*op, Status(StatusCode::kAborted,
                            "the group aborted this operation before this peer issued it (a peer "
                            "failed it); the buffer is restored"));
  }
  std::weak_ptr<Collective> weak = op;
  ops_[op->op_id].alarm = transport_.after(op->timeout, [this, weak, t = op->timeout] {
    if (auto o = weak.lock()) {
      fail(*o, Status(StatusCode::kTimeout,
                      fmt::format("operation did not finish within {} ms", t.count())));
    }
  });
  auto g = group_of_(op->epoch);
  if (!g) return fail(*op, g.status());
  op->group = std::move(g.value());
  for (const auto& m : op->members) {
    if (std::find(op->group.ids.begin(), op->group.ids.end(), m) == op->group.ids.end()) {
      return fail(
          *op, Status(StatusCode::kInvalidArgument,
                      fmt::format("peer {} is not a member of epoch {}", shortId(m), op->epoch)));
    }
  }
  op->start();
}

void OpEngine::dataDone(Collective& op) {
  if (op.ended || op.reported_done) return;
  if (before_report_) before_report_();
  op.reported_done = true;
  arbiter_.report(op.epoch, op.op_id, true, op.members);
}

void OpEngine::onDecision(std::uint64_t epoch, std::uint64_t op_id, bool commit) {
  auto it = ops_.find(op_id);
  if (it == ops_.end()) {
    // Another peer failed this operation before this peer issued it (e.g. a zero-length call):
    // remember the verdict, or the operation would wait for peers that gave up on it.
    if (!commit) {
      if (early_aborts_.size() >= kMaxEarlyAborts) early_aborts_.erase(early_aborts_.begin());
      early_aborts_.insert({epoch, op_id});
    }
    return;
  }
  auto op = it->second.op;
  if (op->epoch != epoch) return;
  if (commit && op->reported_done) {
    op->commit();
    return finish(*op, Status());
  }
  fail(*op, Status(StatusCode::kAborted,
                   "the group aborted this operation (a peer failed or left); the buffer is "
                   "restored"));
}

void OpEngine::onEpoch(std::uint64_t epoch) {
  std::vector<std::shared_ptr<Collective>> stale;
  for (auto& [id, e] : ops_) {
    if (e.op->epoch < epoch && !e.op->reported_done) stale.push_back(e.op);
  }
  for (auto& op : stale) {
    fail(*op, Status(StatusCode::kAborted,
                     fmt::format("the group changed during the operation (epoch {} -> {}); the "
                                 "buffer is restored",
                                 op->epoch, epoch)));
  }
}

void OpEngine::fail(Collective& op, const Status& why) {
  if (op.ended) return;
  auto keep = op.shared_from_this();
  op.restore();
  if (!op.reported_done) arbiter_.report(op.epoch, op.op_id, false, op.members);
  static Counter& failed = counter("collectives.allreduce_failed");
  failed.inc();
  LOG_WARN(kLogP2p, "operation {}:{} failed: {}", op.epoch, op.op_id & 0xFFFFFFFF, why.message());
  finish(op, why);
  // Bytes of this operation may still be in flight: later operations start on fresh links.
  transport_.abort(Status(StatusCode::kAborted, "an operation in flight failed: " + why.message()));
  failAll(Status(StatusCode::kAborted, "another operation in flight failed: " + why.message()));
}

void OpEngine::finish(Collective& op, Status st) {
  if (op.ended) return;
  auto keep = op.shared_from_this();
  op.ended = true;
  op.release();
  ops_.erase(op.op_id);  // drops the alarm
  op.handle->finish(std::move(st));
}

void OpEngine::abortEverything(const Status& why) {
  std::vector<std::shared_ptr<Collective>> all;
  for (auto& [id, e] : ops_) all.push_back(e.op);
  for (auto& op : all) {
    op->reported_done = true;  // nothing to report any more
    fail(*op, why);
  }
  transport_.abort(why);
}

void OpEngine::failAll(const Status& why) {
  std::vector<std::shared_ptr<Collective>> all;
  for (auto& [id, e] : ops_) {
    // An operation that reported done waits for the arbiter's verdict: it may have committed.
    if (!e.op->reported_done) all.push_back(e.op);
  }
  for (auto& op : all) fail(*op, why);
}

}  // namespace loco::collectives
