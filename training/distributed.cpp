#include "training/distributed.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>

#include "collectives/communicator.h"
#include "collectives/shared_state.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/reconnect.h"
#include "training/accumulate.h"
#include "training/batch_state.h"
#include "training/checkpoint.h"
#include "training/data_assignment.h"

namespace loco::training {

namespace {

using collectives::Communicator;
using collectives::DType;
using collectives::ReduceOp;
using p2p::LogThrottle;

// The shared progress of the run (one I64 buffer of the shared state).
enum Progress : std::size_t {
  kOuterStep,
  kInnerStep,
  kMomentumStarted,
  kAdamSteps,
  kProgressFields
};

// Round statistics travel beside the contributions, raw, summed: [contributes, its train loss,
// its MB sent since its last report, it wants the next round to begin with a sync point]. Padded
// so that every ring segment holds an element.
constexpr std::size_t kStatsLen = 64;
enum Stat : std::size_t { kContributes, kLoss, kMegabytesSent, kWantsSyncPoint };
// Overlapped methods (streaming, eager and naive overlap) begin a round with a sync point and a
// shared-state sync (two coordinator round trips the overlap cannot hide) only when a member saw
// a peer waiting to be admitted, after a failed round, and at least every this many rounds (so a
// better ring order from the topology is taken up).
constexpr std::int64_t kRoundsBetweenSyncPoints = 8;
// Slots from the top of the statistics (other features number theirs from the bottom): the
// explicit-rank buckets of data_assignment.h.
constexpr std::size_t kStatRankSlots = kStatsLen - kRankSlots;
// Below them, the adaptive batch's: peers that sent a gradient, Σ‖g_m‖², tokens processed.
constexpr std::size_t kStatGradPeers = kStatRankSlots - 1;
constexpr std::size_t kStatGradSqNorms = kStatRankSlots - 2;
constexpr std::size_t kStatTokens = kStatRankSlots - 3;
// Speed-aware allocation: Σ throughput of the contributors, Σ windows per step (the weights).
constexpr std::size_t kStatTokensPerS = kStatRankSlots - 4;
constexpr std::size_t kStatWindows = kStatRankSlots - 5;
// Under both: Σ w_m of the peers that sent a gradient for the batch test (batch_test.h's
// weighted sums; w_m = the windows behind the gradient).
constexpr std::size_t kStatGradWeight = kStatRankSlots - 6;
// Multi-instance training, from the bottom: each instance's training loss (summed over the
// contributors), then the squared gradient norms of instances 1.. (instance 0's is
// kStatGradSqNorms, as with one instance).
constexpr std::size_t kStatInstanceLoss = kWantsSyncPoint + 1;
constexpr std::size_t kStatInstanceGradSq = kStatInstanceLoss + kMaxInstances;
static_assert(kStatInstanceGradSq + kMaxInstances - 1 < kStatGradWeight);
constexpr std::size_t gradSqSlot(std::uint32_t instance) {
  return instance == 0 ? kStatGradSqNorms : kStatInstanceGradSq + instance - 1;
}

double squaredNorm(std::span<const float> v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return s;
}

// This peer is out of the group (its coordinator was lost, or it was evicted): it registers
// again on its own, and waitForMembership brings it back.
bool lostGroup(const Status& st) {
  return st.code() == StatusCode::kEvicted || st.code() == StatusCode::kPeerLost;
}

bool fatal(const Status& st) {
  return st.code() == StatusCode::kAborted || st.code() == StatusCode::kInvalidArgument ||
         st.code() == StatusCode::kUnavailable || st.code() == StatusCode::kAlreadyExists ||
         st.code() == StatusCode::kCompleted;
}

// Waiting states (admission, missing peers) say what they wait for at most this often.
constexpr Millis kWaitLogEvery{10000};
// Waits are cut into slices of this length so that a stop request is seen promptly.
constexpr Millis kWaitSlice{250};

class Run {
 public:
  Run(Communicator& comm, LocalTrainer& trainer, const DistributedConfig& config,
      const std::atomic<bool>& stop, const std::function<void(const RoundRecord&)>& on_round)
      : comm_(comm),
        trainer_(trainer),
        cfg_(config),
        stop_(stop),
        on_round_(on_round),
        P_(trainer.numParams()),
        diloco_(config.method != Method::kDdp),
        streaming_(config.method == Method::kStreaming),
        noloco_(config.method == Method::kNoloco),
        overlap_(config.method == Method::kDiloco ? config.overlap : Overlap::kNone),
        K_(config.multi.instances),
        outer_(P_ * config.multi.instances, config.outer),
        eager_(overlap_ == Overlap::kEager ? P_ : 0, config.outer) {}

  Status run() {
    LOCO_RETURN_IF_ERROR(setUpState());
    if (cfg_.resume) LOCO_RETURN_IF_ERROR(resume());
    LOCO_RETURN_IF_ERROR(waitForAdmission());
    bool synced = true;  // admission is this peer's first sync point
    // Start together: every member sees the same world at the same barrier, so all leave this
    // loop after the same sync point.
    LogThrottle waiting_log(kWaitLogEvery);
    for (Deadline until = deadline(); comm_.world() < cfg_.wait_for_world && !stop_.load();) {
      if (until.expired()) {
        return Status(StatusCode::kTimeout, fmt::format("only {} of {} peers joined", comm_.world(),
                                                        cfg_.wait_for_world));
      }
      if (waiting_log.shouldLog(Clock::now())) {
        LOG_INFO(kLogTrain, "waiting for {} peers before the first round (--wait-for): {} now",
                 cfg_.wait_for_world, comm_.world());
      }
      synced = false;
      auto epoch = comm_.syncPoint(deadline());
      if (epoch) continue;
      if (lostGroup(epoch.status())) {
        LOCO_RETURN_IF_ERROR(waitForAdmission());
      } else if (fatal(epoch.status())) {
        return epoch.status();
      }
    }
    synced = true;                     // left the loop at a sync point (or at admission)
    training_started_ = Clock::now();  // utilization counts from here, not from the admission
    std::uint32_t failed = 0;
    bool sync_round =
        true;  // every peer decides alike: from the shared progress and the group's verdicts
    while (!stop_.load()) {
      if (!synced && sync_round) {
        const auto sync_t0 = Clock::now();
        auto epoch = comm_.syncPoint(deadline());
        addBlocked(sync_t0);
        if (!epoch) {
          if (lostGroup(epoch.status())) {
            // Out of the group: back in at its next sync point (admission is one), as a
            // newcomer that keeps its state and its Δ; the shared-state sync decides the rest.
            LOCO_RETURN_IF_ERROR(rejoin(epoch.status()));
            synced = true;
            continue;
          }
          if (fatal(epoch.status())) return epoch.status();
          if (++failed > cfg_.max_failed_attempts)
            return epoch.status().withContext("too many failed rounds");
          continue;
        }
      }
      synced = false;
      if (sync_round) {
        const auto state_t0 = Clock::now();
        Status st = syncState();
        addBlocked(state_t0);
        if (st.code() == StatusCode::kInvalidArgument) return st;
        if (!st.isOk()) {
          LOG_WARN(kLogTrain, "shared-state sync failed ({}); retrying at the next sync point",
                   st.message());
          if (!lostGroup(st) && ++failed > cfg_.max_failed_attempts)
            return st.withContext("too many failed rounds");
          continue;
        }
        LOCO_RETURN_IF_ERROR(assignDataShard());
        ++sync_points_;
      }
      if (done()) break;  // a peer that arrives after the last round
      if (noloco_) {
        LOCO_RETURN_IF_ERROR(nolocoRound());
        failed = 0;
        continue;
      }
      auto reduced = reduce();
      if (!reduced) {
        ++retries_;
        LOG_WARN(kLogTrain, "round {} failed ({}); retrying with the survivors",
                 progress_[kOuterStep], reduced.status().message());
        if (!lostGroup(reduced.status()) && ++failed > cfg_.max_failed_attempts)
          return reduced.status().withContext("too many failed rounds");
        sync_round = true;  // survivors meet at a sync point before they retry
        continue;
      }
      failed = 0;
      LOCO_RETURN_IF_ERROR(apply(*reduced));
      sync_round = nextRoundSyncs(*reduced);
      if (done()) break;
      LOCO_RETURN_IF_ERROR(afterApply());
    }
    return Status();
  }

 private:
  Deadline deadline() const { return Deadline::after(cfg_.op_timeout); }

  // Blocks until this peer is a member (again) or the run stops; the communicator bounds the
  // wait for a coordinator (--coordinator-timeout). Says what it waits for every kWaitLogEvery.
  Status waitForAdmission() {
    const TimePoint since = Clock::now();
    LogThrottle say(kWaitLogEvery);
    (void)say.shouldLog(since);  // the first line after one interval: most admissions take less
    while (!stop_.load()) {
      Status st = comm_.waitForMembership(Deadline::after(kWaitSlice));
      if (st.isOk()) return st;
      if (st.code() != StatusCode::kTimeout) return st;
      if (say.shouldLog(Clock::now())) {
        LOG_INFO(kLogTrain, "{} (waiting {:.0f} s)", st.message(), toSeconds(Clock::now() - since));
      }
    }
    return Status();
  }

  Status rejoin(const Status& why) {
    const TimePoint t0 = Clock::now();
    LOG_WARN(kLogTrain,
             "out of the group at outer step {} ({}); keeping this peer's state{} until it is "
             "admitted again",
             progress_[kOuterStep], why.message(),
             have_contribution_ ? " and its contribution to the round" : "");
    LOCO_RETURN_IF_ERROR(waitForAdmission());
    if (stop_.load()) return Status();
    LOG_INFO(kLogTrain, "back in the group after {:.1f} s: epoch {}, world {}",
             toSeconds(Clock::now() - t0), comm_.epoch(), comm_.world());
    return Status();
  }
  bool done() const { return static_cast<std::uint64_t>(progress_[kInnerStep]) >= cfg_.steps; }

  Status setUpState() {
    if (noloco_) {
      // NoLoCo's φ and δ are this peer's own (replicas differ by design): only the progress is
      // group state.
      theta_.assign(trainer_.paramData(), trainer_.paramData() + P_);
      momentum_.assign(P_, 0.0f);
      exchange_delta_.assign(P_, 0.0f);
      exchange_phi_.assign(P_ + 1, 0.0f);
      mean_delta_.assign(P_, 0.0f);
      mean_phi_.assign(P_ + 1, 0.0f);
    } else if (diloco_) {
      // Every instance starts from the same θ_0 (multi_instance.h); one instance: θ is P long.
      theta_.resize(P_ * K_);
      for (std::uint32_t k = 0; k < K_; ++k) {
        std::copy(trainer_.paramData(), trainer_.paramData() + P_, theta_.begin() + k * P_);
      }
      momentum_.assign(P_ * K_, 0.0f);
      LOCO_RETURN_IF_ERROR(state_.add("outer.params", DType::kF32, theta_.data(), theta_.size()));
      LOCO_RETURN_IF_ERROR(
          state_.add("outer.momentum", DType::kF32, momentum_.data(), momentum_.size()));
      LOCO_RETURN_IF_ERROR(createInstances());
      if (streaming_) {
        auto frags = fragmentRanges(trainer_.paramLayout(), cfg_.fragments);
        if (!frags) return frags.status();
        fragments_ = std::move(*frags);
        fragment_theta_.assign(P_, 0.0f);
        fragment_momentum_.assign(P_, 0.0f);
        fragment_local_.assign(P_, 0.0f);
      }
      if (overlap_ != Overlap::kNone) next_contribution_.assign(P_, 0.0f);
      start_.assign(P_, 0.0f);
    } else {
      // DDP peers apply identical updates, so the parameters and AdamW's moments are group state.
      adam_m_.assign(P_, 0.0f);
      adam_v_.assign(P_, 0.0f);
      LOCO_RETURN_IF_ERROR(state_.add("params", DType::kF32, trainer_.paramData(), P_));
      LOCO_RETURN_IF_ERROR(state_.add("adam.m", DType::kF32, adam_m_.data(), P_));
      LOCO_RETURN_IF_ERROR(state_.add("adam.v", DType::kF32, adam_v_.data(), P_));
    }
    LOCO_RETURN_IF_ERROR(state_.add("progress", DType::kI64, progress_.data(), progress_.size()));
    if (perInstanceBatch()) {
      batch_state_.assign(kBatchStateFields * K_, 0);
      for (std::uint32_t k = 0; k < K_; ++k) batchOf(k) = cfg_.train.batch_size;
      LOCO_RETURN_IF_ERROR(
          state_.add("batch", DType::kI64, batch_state_.data(), batch_state_.size()));
    }
    if (testing()) {
      grad_buf_.assign(P_ * K_, 0.0f);
      if (diloco_) last_grad_.assign(P_ * K_, 0.0f);
    }
    contribution_.assign(P_ * K_, 0.0f);
    reduce_buf_.assign(P_ * K_, 0.0f);
    instance_loss_.assign(K_, 0.0);
    return Status();
  }

  // Multi-instance: the trainers of instances 1..K-1, on the same corpus as the given one, each
  // drawing from its own stream; slot k of θ is trained by slot_trainers_[k] (merges permute).
  Status createInstances() {
    slot_trainers_ = {&trainer_};
    const auto corpus =
        std::shared_ptr<const TextCorpus>(std::shared_ptr<const TextCorpus>(), &trainer_.corpus());
    for (std::uint32_t k = 1; k < K_; ++k) {
      TrainConfig tc = trainer_.config();
      tc.stream = instanceStream(tc.stream.value_or(tc.rank), k);
      auto t = LocalTrainer::create(tc, corpus);
      if (!t) return t.status().withContext(fmt::format("creating instance {}", k));
      slot_trainers_.push_back(t->get());
      instance_trainers_.push_back(std::move(*t));
    }
    return Status();
  }
  LocalTrainer& slotTrainer(std::uint32_t k) {
    return slot_trainers_.empty() ? trainer_ : *slot_trainers_[k];
  }
  // Instances active in the current round (1 unless --instances).
  std::uint32_t active() const {
    return activeInstances(cfg_.multi, static_cast<std::uint64_t>(progress_[kOuterStep]));
  }
  // Instance k's part of a buffer that lays the instances side by side (P_ values each).
  std::span<float> slice(std::vector<float>& v, std::uint32_t k) const {
    return std::span<float>(v).subspan(static_cast<std::size_t>(k) * P_, P_);
  }
  std::span<const float> slice(const std::vector<float>& v, std::uint32_t k) const {
    return std::span<const float>(v).subspan(static_cast<std::size_t>(k) * P_, P_);
  }

  std::string checkpointPath() const {
    if (cfg_.derive_data_rank) {  // no rank to name it by: the identity, stable across restarts
      return fmt::format("{}/peer-{:016x}.ckpt", cfg_.checkpoint_dir, streamOf(comm_.peerId()));
    }
    return fmt::format("{}/peer-{}.ckpt", cfg_.checkpoint_dir, cfg_.train.rank);
  }

  // Without --rank: this peer's slice and stream from the current membership (data_assignment.h).
  // Called at every sync point, where every member sees the same membership.
  Status assignDataShard() {
    if (!cfg_.derive_data_rank) return Status();
    const auto ring = comm_.ring();
    const DataAssignment a = assignData(ring, comm_.peerId());
    if (assigned_ && *assigned_ == a) return Status();
    LOCO_RETURN_IF_ERROR(trainer_.setShard(a.rank, a.world, a.stream));
    for (std::size_t i = 0; i < instance_trainers_.size(); ++i) {
      LOCO_RETURN_IF_ERROR(instance_trainers_[i]->setShard(
          a.rank, a.world, instanceStream(a.stream, static_cast<std::uint32_t>(i + 1))));
    }
    LOG_INFO(kLogTrain, "data: rank {} of {} ({} sharding), stream {:016x}", a.rank, a.world,
             shardingName(cfg_.train.sharding), a.stream);
    assigned_ = a;
    return Status();
  }

  Status resume() {
    auto loaded = loadCheckpoint(checkpointPath(), cfg_.train.model);
    if (!loaded) return loaded.status().withContext("--resume");
    TrainingState& s = *loaded;
    LOCO_RETURN_IF_ERROR(trainer_.importState(s));
    if (diloco_) {
      if (s.outer_params.size() != P_) {
        return Status(StatusCode::kInvalidArgument,
                      checkpointPath() + " holds no DiLoCo outer parameters (a DDP run?)");
      }
      if (activeInstances(cfg_.multi, s.outer_step) > 1) {
        return Status(
            StatusCode::kInvalidArgument,
            fmt::format("{} was written at outer step {}, while {} instances were "
                        "active (--instances): those checkpoints are not written",
                        checkpointPath(), s.outer_step, activeInstances(cfg_.multi, s.outer_step)));
      }
      // With --instances the merged instance is slot 0; the other slots stay zero.
      std::copy(s.outer_params.begin(), s.outer_params.end(), theta_.begin());
      if (!s.outer_momentum.empty()) {
        std::copy(s.outer_momentum.begin(), s.outer_momentum.end(), momentum_.begin());
      }
      noloco_has_phi_ = noloco_;
      progress_[kMomentumStarted] = s.outer_momentum.empty() ? 0 : 1;
    }
    progress_[kOuterStep] = static_cast<std::int64_t>(s.outer_step);
    progress_[kInnerStep] = static_cast<std::int64_t>(s.step);
    // DiLoCo's AdamW is each peer's own (inner) state, never the group's: the shared progress
    // keeps 0 there, as in the run that wrote the checkpoint, so that a resumed peer's shared
    // state is bit for bit what the group held at that step.
    if (!diloco_) progress_[kAdamSteps] = static_cast<std::int64_t>(s.adam_steps);
    if (streaming_ && s.local_step > s.step) {
      // The parameters are this peer's merged fragments τ steps past the sync: go on from there
      // if the group is still where the checkpoint was written (apply() decides).
      overlap_ran_ = true;
      local_step_ = s.local_step;
      pending_ = Trained{};
      pending_.steps_run = s.pending_steps;
      pending_.losses = s.pending_losses;
      pending_.loss_sum = s.pending_loss_sum;
      resumed_local_for_ = progress_[kOuterStep];
    }
    resumeBatch(s);
    LOG_INFO(kLogTrain, "resumed from {}: outer step {}, inner step {}{}", checkpointPath(),
             s.outer_step, s.step,
             testing()
                 ? fmt::format(", batch {} ({} samples per peer)", currentBatch(), samplesOf(0))
                 : "");
    // How far this peer is: the coordinator compares it with how far the run got, so that a
    // peer behind a group that is gone does not train those rounds again alone.
    comm_.setRegistrationReport(state_.revision(), state_.digest(), s.outer_step, done());
    return Status();
  }

  // The adaptive batch from a checkpoint: the group's batch and schedule position when it was
  // written. A checkpoint without them (version 1, or a run without a batch test) resumes with
  // --batch, the schedule at its step.
  void resumeBatch(const TrainingState& s) {
    if (!perInstanceBatch()) return;
    if (s.batch > 0) {
      batchOf(0) = static_cast<std::int64_t>(s.batch);
      samplesOf(0) = static_cast<std::int64_t>(s.schedule_samples);
    } else {
      samplesOf(0) = static_cast<std::int64_t>(advanceSamples(0, s.step, cfg_.train.batch_size));
    }
  }

  Status syncState() {
    if (!diloco_) {
      TrainingState s = trainer_.exportState();
      std::copy(s.adam_m.begin(), s.adam_m.end(), adam_m_.begin());
      std::copy(s.adam_v.begin(), s.adam_v.end(), adam_v_.begin());
      progress_[kAdamSteps] = static_cast<std::int64_t>(s.adam_steps);
    }
    auto rep = comm_.syncSharedState(state_, collectives::SyncOptions{}, deadline());
    if (!rep) return rep.status();
    state_bytes_sent_ += rep->bytes_sent;
    if (rep->bytes_received > 0) {
      LOG_INFO(kLogTrain,
               "received {:.2f} MB of shared state from {} peer(s): outer step {}, inner step {}",
               rep->bytes_received / 1e6, rep->sources_used, progress_[kOuterStep],
               progress_[kInnerStep]);
      if (!diloco_) {
        TrainingState s = trainer_.exportState();
        s.adam_m = adam_m_;
        s.adam_v = adam_v_;
        s.adam_steps = static_cast<std::uint64_t>(progress_[kAdamSteps]);
        s.step = static_cast<std::uint64_t>(progress_[kInnerStep]);
        LOCO_RETURN_IF_ERROR(trainer_.importState(s));
      }
    }
    // A contribution counts only for the round it was computed in.
    if (have_contribution_ && contribution_for_ != progress_[kOuterStep]) {
      have_contribution_ = false;
      overlap_ran_ = false;  // the Δ trained on top of it is as stale
      have_next_ = false;
    }
    return Status();
  }

  std::uint64_t bytesSentSoFar() const { return comm_.bytesSent() + state_bytes_sent_; }

  struct Reduced {
    std::array<float, kStatsLen> stats;
    std::size_t world;
    std::uint64_t epoch;
  };

  // Whether the round after `r` begins with a sync point and a shared-state sync. Decided from
  // what every member holds alike (the round's summed statistics, the shared progress), so the
  // whole group meets at the same sync points. Skipping one loses nothing while the membership
  // stands: every member applied the same committed round, so the shared state is equal
  // everywhere, and a lost member fails the next operation, which brings a sync point anyway.
  bool nextRoundSyncs(const Reduced& r) const {
    if (!diloco_) return progress_[kOuterStep] % cfg_.ddp_sync_every == 0;
    if (!streaming_ && overlap_ == Overlap::kNone) return true;  // blocking DiLoCo: every round
    return r.stats[kWantsSyncPoint] > 0 || progress_[kOuterStep] % kRoundsBetweenSyncPoints == 0;
  }

  // Both all-reduces of a round, in flight together. On failure the buffers are as before.
  Result<Reduced> reduce() {
    Reduced r;
    r.stats.fill(0.0f);
    const std::uint64_t sent = bytesSentSoFar();
    const std::size_t count = dataLen();
    if (have_contribution_) {
      r.stats[kContributes] = 1.0f;
      r.stats[kLoss] = static_cast<float>(contribution_loss_);
      if (speedSplit()) {
        // Weighted by the windows behind it: the average is Σ n_m·Δ_m / Σ n_m.
        const float n = static_cast<float>(contribution_windows_);
        std::transform(contribution_.begin(), contribution_.begin() + count, reduce_buf_.begin(),
                       [n](float x) { return x * n; });
        r.stats[kStatWindows] = n;
        r.stats[kStatTokensPerS] = static_cast<float>(speed_tokens_per_s_);
      } else {
        std::copy_n(contribution_.begin(), count, reduce_buf_.begin());
      }
    } else {
      std::fill_n(reduce_buf_.begin(), count, 0.0f);
    }
    r.stats[kMegabytesSent] = static_cast<float>((sent - sent_reported_) / 1e6);
    r.stats[kWantsSyncPoint] = comm_.pending() > 0 ? 1.0f : 0.0f;
    if (!cfg_.derive_data_rank) {
      markExplicitRank(std::span<float>(r.stats).subspan(kStatRankSlots), cfg_.train.rank);
    }
    if (have_contribution_) r.stats[kStatTokens] = static_cast<float>(contribution_tokens_);
    // The batch test's sample: this peer's last unclipped mini-batch gradient (DDP: its
    // contribution itself).
    // Under the speed split the peers' batches differ: every per-peer sum is weighted by the
    // windows behind the gradient (batch_test.h).
    const std::uint32_t instances = active();
    sent_grad_ = testing() && have_contribution_ && (!diloco_ || have_grad_);
    const float grad_weight = speedSplit() ? static_cast<float>(contribution_windows_) : 1.0f;
    if (sent_grad_) {
      r.stats[kStatGradPeers] = 1.0f;
      r.stats[kStatGradWeight] = grad_weight;
      for (std::uint32_t k = 0; k < instances; ++k) {
        std::span<const float> g =
            diloco_ ? slice(last_grad_, k) : std::span<const float>(contribution_);
        r.stats[gradSqSlot(k)] = static_cast<float>(grad_weight * squaredNorm(g));
      }
    }
    if (K_ > 1 && have_contribution_) {
      for (std::uint32_t k = 0; k < instances; ++k) {
        r.stats[kStatInstanceLoss + k] = static_cast<float>(instance_loss_[k]);
      }
    }
    const std::size_t grad_count = instances * P_;
    if (testing() && diloco_) {
      if (sent_grad_) {
        std::transform(last_grad_.begin(), last_grad_.begin() + grad_count, grad_buf_.begin(),
                       [grad_weight](float x) { return x * grad_weight; });
      } else {
        std::fill_n(grad_buf_.begin(), grad_count, 0.0f);
      }
    }
    r.world = comm_.world();
    r.epoch = comm_.epoch();
    collectives::AllReduceOptions options;
    options.timeout = cfg_.op_timeout;
    const auto t0 = Clock::now();
    auto stats_op = comm_.allReduce(r.stats.data(), kStatsLen, DType::kF32, ReduceOp::kSum,
                                    collectives::Wire::kRaw, options);
    if (!stats_op) return stats_op.status();
    options.quant_block = cfg_.quant_block;
    options.compress = cfg_.compress;
    auto data_op =
        comm_.allReduce(reduce_buf_.data(), count, DType::kF32, ReduceOp::kSum, cfg_.wire, options);
    std::optional<Result<std::shared_ptr<collectives::Operation>>> grad_op;
    if (data_op && testing() && diloco_) {
      grad_op.emplace(comm_.allReduce(grad_buf_.data(), grad_count, DType::kF32, ReduceOp::kSum,
                                      collectives::Wire::kInt8, options));
    }
    // The training thread's work while the round's all-reduces run (overlapped methods); a
    // failure of the training itself still waits for the operations, which use our buffers.
    Status overlapped = data_op ? overlapPhase() : Status();
    const auto wait_t0 = Clock::now();
    Status a = (*stats_op)->wait(deadline());
    if (!data_op) {
      addBlocked(wait_t0);
      return data_op.status();
    }
    Status b = (*data_op)->wait(deadline());
    Status c;
    if (grad_op) c = *grad_op ? (**grad_op)->wait(deadline()) : grad_op->status();
    addBlocked(wait_t0);
    LOCO_RETURN_IF_ERROR(overlapped);
    LOCO_RETURN_IF_ERROR(a);
    LOCO_RETURN_IF_ERROR(b);
    LOCO_RETURN_IF_ERROR(c);
    sent_reported_ = sent;
    total_megabytes_ += r.stats[kMegabytesSent];
    last_reduce_s_ = toSeconds(Clock::now() - t0);
    return r;
  }

  Status apply(const Reduced& r) {
    const float contributors = r.stats[kContributes];
    if (!cfg_.derive_data_rank && warned_rank_epoch_ != r.epoch &&
        sharesExplicitRank(std::span<const float>(r.stats).subspan(kStatRankSlots),
                           cfg_.train.rank)) {
      warned_rank_epoch_ = r.epoch;
      LOG_WARN(kLogTrain,
               "another live peer also runs with --rank {}: both draw the same batches and one of "
               "them computes nothing new. Give each peer its own --rank, or leave --rank out and "
               "let every peer draw its own samples",
               cfg_.train.rank);
    }
    const std::uint32_t trained = active();  // the instances behind this round's Δ
    RoundRecord rec;
    rec.world = r.world;
    rec.epoch = r.epoch;
    rec.contributors = static_cast<std::size_t>(contributors);
    rec.retries = retries_;
    retries_ = 0;
    const bool contributed = have_contribution_;
    rec.local_loss = contributed ? contribution_loss_ : std::nan("");
    if (contributors > 0) {
      const std::size_t count = dataLen();
      const float divisor = speedSplit() ? r.stats[kStatWindows] : contributors;
      for (std::size_t i = 0; i < count; ++i) reduce_buf_[i] /= divisor;
      if (streaming_) {
        applyFragment(count, contributed);
      } else if (diloco_) {
        // OuterSgd keeps its momentum privately; the group's copy is the shared one.
        LOCO_RETURN_IF_ERROR(
            outer_.restoreMomentum(progress_[kMomentumStarted] ? momentum_ : std::vector<float>{}));
        LOCO_RETURN_IF_ERROR(outer_.step(theta_, reduce_buf_));
        if (!outer_.momentum().empty()) {
          momentum_ = outer_.momentum();
          progress_[kMomentumStarted] = 1;
        }
        advanceInnerStep(std::min<std::int64_t>(progress_[kInnerStep] + roundSteps(), cfg_.steps));
      } else {
        std::copy(reduce_buf_.begin(), reduce_buf_.end(), trainer_.gradData());
        const auto step = static_cast<std::uint64_t>(progress_[kInnerStep]);
        auto norm = trainer_.applyGrads(lrStep(step));
        if (!norm) return norm.status().withContext("applying the averaged gradient");
        advanceInnerStep(progress_[kInnerStep] + 1);
      }
      progress_[kOuterStep] += 1;
      rec.train_loss = r.stats[kLoss] / contributors;
      // Every member applied this round: a newer revision, so that a peer that missed the
      // commit (its coordinator died while the verdict was on its way) loses the next election
      // instead of tying with the others (collectives/shared_state.h).
      state_.advanceRevision();
    } else {
      rec.train_loss = std::nan("");
    }
    rec.tokens = r.stats[kStatTokens];
    if (testing() && contributors > 0) rec.batch_wanted = batchTest(r, trained);
    if (contributors > 0 && active() < trained) mergeInstances(r, trained);
    if (speedSplit()) {
      // A peer without a contribution this round (a joiner) takes the mean share.
      share_ = speedShare(currentBatch(), contributors, contributed ? speed_tokens_per_s_ : 0,
                          r.stats[kStatTokensPerS]);
    }
    have_contribution_ = false;
    if (streaming_) {
      // A peer without a Δ in this round (the first round, a joiner, a dropped Δ) starts from
      // the global copies; the others keep their merged fragments. So does a peer resumed from
      // its checkpoint while the group is still at that checkpoint's outer step (a whole group
      // stopped and started again): its merged fragments are what it would hold had it not
      // stopped.
      const bool resumed_current = resumed_local_for_ == progress_[kOuterStep];
      resumed_local_for_ = -1;
      if (!contributed && !resumed_current) {
        std::copy(theta_.begin(), theta_.end(), trainer_.paramData());
        overlap_ran_ = false;  // steps past a sync the group has moved beyond
      }
    } else if (diloco_) {
      for (std::uint32_t k = 0; k < active(); ++k) {  // θ_m ← θ
        std::span<const float> th = slice(theta_, k);
        std::copy(th.begin(), th.end(), slotTrainer(k).paramData());
      }
    }
    rec.outer_step = static_cast<std::uint64_t>(progress_[kOuterStep]);
    rec.inner_step = static_cast<std::uint64_t>(progress_[kInnerStep]);
    rec.bytes_sent = total_megabytes_ * 1e6;
    rec.tokens_per_s = last_tokens_per_s_;
    rec.compute_s = last_compute_s_;
    rec.reduce_s = last_reduce_s_;
    rec.state_digest = state_.digest();
    comm_.setRegistrationReport(state_.revision(), rec.state_digest, rec.outer_step, done());
    const auto ring = comm_.ring();
    const bool evaluator = !ring.empty() && ring.front() == comm_.peerId();
    const bool first = !reported_first_;
    if (contributors == 0 && !first) return Status();  // nothing happened worth a line
    reported_first_ = true;
    if (evaluator && (first || done() || rec.outer_step % cfg_.eval_every == 0)) {
      for (std::uint32_t k = 0; k < active(); ++k) {
        auto val = k == 0 ? validateGlobal() : slotTrainer(k).validationLoss();
        if (!val) return val.status().withContext("validation");
        rec.val_loss = rec.val_loss ? std::min<double>(*rec.val_loss, *val) : *val;
        if (active() > 1) rec.instance_val_losses.push_back(*val);
      }
    }
    fillTiming(rec);
    if (!cfg_.checkpoint_dir.empty() && contributors > 0 &&
        (diloco_ || rec.outer_step % cfg_.ddp_sync_every == 0 || done())) {
      LOCO_RETURN_IF_ERROR(checkpoint());
    }
    rec.checkpoint_failures = checkpoint_failures_;
    rec.data_rank = trainer_.config().rank;
    rec.batch = currentBatch();
    rec.micro_batches = plan().micro_batches;
    rec.share = plan().total();
    rec.b_max = cfg_.micro_limits.b_max;
    rec.b_mem = cfg_.micro_limits.b_mem;
    rec.instances = active();
    if (active() > 1) {
      for (std::uint32_t k = 0; k < active(); ++k) rec.instance_batches.push_back(currentBatch(k));
    }
    if (on_round_) on_round_(rec);
    return Status();
  }

  // Multi-instance: the round that was just applied ends a merge period. The `trained`
  // instances merge pairwise (multi_instance.h's plan, by their mean training loss in the
  // round) into active() ones: θ and the outer momentum of each pair become their average
  // weighted by batch demand (each instance's batch, which its test grew; equal without a test).
  // The merged instance trains the windows of both (b_a + b_b, within --max-batch), so a peer's
  // samples per step do not drop with a merge; its schedule position is the further of the two.
  // Every member computes this from what it holds alike.
  void mergeInstances(const Reduced& r, std::uint32_t trained) {
    const float contributors = r.stats[kContributes];
    std::vector<double> losses(trained);
    for (std::uint32_t k = 0; k < trained; ++k) {
      losses[k] = r.stats[kStatInstanceLoss + k] / contributors;
    }
    const std::vector<MergeGroup> plan = mergePlan(losses, cfg_.multi.policy);
    const std::vector<float> theta(theta_), momentum(momentum_);
    const std::vector<std::int64_t> batches(batch_state_);
    auto field = [&](std::uint32_t k, std::size_t f) { return batches[k * kBatchStateFields + f]; };
    const std::vector<LocalTrainer*> trainers(slot_trainers_);
    std::vector<std::string> said;
    auto weight = [&](std::uint32_t k) { return static_cast<double>(field(k, kBatchSize)); };
    for (std::uint32_t p = 0; p < plan.size(); ++p) {
      const MergeGroup& g = plan[p];
      const std::uint32_t a = g.first, b = g.pair ? g.second : g.first;
      const double wa = weight(a), wb = weight(b);
      mergeWeighted(slice(theta, a), wa, slice(theta, b), wb, slice(theta_, p));
      mergeWeighted(slice(momentum, a), wa, slice(momentum, b), wb, slice(momentum_, p));
      std::int64_t batch = field(a, kBatchSize);
      if (g.pair) {
        batch += field(b, kBatchSize);
        if (testing()) batch = std::min<std::int64_t>(batch, cfg_.batch.max_batch);
      }
      batchOf(p) = batch;
      samplesOf(p) = std::max(field(a, kScheduleSamples), field(b, kScheduleSamples));
      // The heavier instance's trainer goes on with the merged one (its AdamW moments and
      // data stream); the other is retired.
      slot_trainers_[p] = trainers[wb > wa ? b : a];
      said.push_back(g.pair ? fmt::format("{}+{} (loss {:.4f}/{:.4f}, weight {:g}/{:g})", a, b,
                                          losses[a], losses[b], wa, wb)
                            : fmt::format("{} alone", a));
    }
    const std::size_t keep = plan.size() * P_;
    std::fill(theta_.begin() + keep, theta_.end(), 0.0f);
    std::fill(momentum_.begin() + keep, momentum_.end(), 0.0f);
    std::fill(reduce_buf_.begin() + keep, reduce_buf_.end(), 0.0f);
    std::fill(batch_state_.begin() + plan.size() * kBatchStateFields, batch_state_.end(), 0);
    LOG_INFO(kLogTrain, "round {}: merged {} instances into {} ({}): {}", progress_[kOuterStep],
             trained, plan.size(), mergePolicyName(cfg_.multi.policy), fmt::join(said, ", "));
  }

  // A checkpoint that cannot be written (a full disk, a missing or read-only folder) costs
  // durability, not the run: the previous checkpoint stays whole (writes are atomic), training
  // goes on, and the next round writes again. Warned once per distinct reason; counted in
  // train.checkpoint_failures and in every RoundRecord.
  Status checkpoint() {
    if (active() > 1) {
      // A checkpoint holds one model; the instances are the group's shared state meanwhile, so
      // a peer restarted now comes back as a newcomer and receives them.
      if (!said_no_checkpoint_) {
        LOG_INFO(kLogTrain, "checkpoints begin once the {} instances are merged into one",
                 active());
        said_no_checkpoint_ = true;
      }
      return Status();
    }
    Status st = writeCheckpoint();
    if (st.isOk()) {
      if (!checkpoint_error_.empty()) {
        LOG_INFO(kLogTrain, "checkpoint {} written again (after {} failed write(s) in all)",
                 checkpointPath(), checkpoint_failures_);
      }
      checkpoint_error_.clear();
      return st;
    }
    if (st.code() != StatusCode::kIoError) return st;  // not the disk: a bug to report
    static Counter& failures = counter("train.checkpoint_failures");
    failures.inc();
    ++checkpoint_failures_;
    if (st.message() != checkpoint_error_) {
      checkpoint_error_ = st.message();
      LOG_WARN(kLogTrain,
               "could not write checkpoint {} ({}); training goes on, the previous checkpoint is "
               "kept as it was, and the next round tries again. Free space on that disk, or "
               "point --checkpoint-dir at one with room",
               checkpointPath(), st.message());
    }
    return Status();
  }

  Status writeCheckpoint() {
    TrainingState s = slotTrainer(0).exportState();
    s.step = static_cast<std::uint64_t>(progress_[kInnerStep]);
    s.outer_step = static_cast<std::uint64_t>(progress_[kOuterStep]);
    if (diloco_) {  // with --instances, the one left: slot 0
      s.outer_params.assign(theta_.begin(), theta_.begin() + P_);
      if (progress_[kMomentumStarted])
        s.outer_momentum.assign(momentum_.begin(), momentum_.begin() + P_);
    }
    if (perInstanceBatch()) {
      s.batch = static_cast<std::uint64_t>(batchOf(0));
      s.schedule_samples = static_cast<std::uint64_t>(samplesOf(0));
    }
    if (streaming_ && overlap_ran_) {  // written after a fragment sync: τ steps trained past it
      s.local_step = local_step_;
      s.pending_steps = pending_.steps_run;
      s.pending_losses = pending_.losses;
      s.pending_loss_sum = pending_.loss_sum;
    }
    std::error_code ec;
    std::filesystem::create_directories(cfg_.checkpoint_dir, ec);
    return saveCheckpoint(checkpointPath(), s);
  }

  // Inner steps [from, until) on the trainer's parameters as they are; adds to compute time.
  struct Trained {
    double loss_sum = 0;
    std::size_t losses = 0, steps_run = 0;
    double seconds = 0;
    std::uint32_t windows = 0;  // per step (the micro plan's total)
    double tokens = 0;
    bool grad_kept = false;  // keep_last: the last step's gradient is in last_grad_, finite
  };
  // `keep_last`: the batch test samples the gradient of step until-1, before clipping. `k`: the
  // instance (multi_instance.h) whose trainer, batch and schedule position it trains.
  Result<Trained> train(std::uint64_t from, std::uint64_t until, bool keep_last = false,
                        std::uint32_t k = 0) {
    Trained t;
    const auto t0 = Clock::now();
    const MicroPlan micro = plan(k);
    LocalTrainer& trainer = slotTrainer(k);
    for (std::uint64_t s = from; s < until && !stop_.load(); ++s, ++t.steps_run) {
      const bool keep = keep_last && s + 1 == until;
      std::span<float> grad = keep ? slice(last_grad_, k) : std::span<float>();
      auto loss = accumulatedInnerStep(trainer, s, micro, grad, lrStep(s, k));
      if (keep) t.grad_kept = loss.isOk() && allFinite(grad, nullptr);
      if (!loss) {
        if (loss.status().code() != StatusCode::kDataLoss) return loss.status();
        LOG_WARN(kLogTrain, "inner step {} skipped: {}", s, loss.status().message());
        continue;
      }
      t.loss_sum += *loss;
      ++t.losses;
    }
    t.seconds = toSeconds(Clock::now() - t0);
    compute_total_s_ += t.seconds;
    t.tokens = static_cast<double>(t.steps_run) * micro.total() * cfg_.train.model.context;
    tokens_trained_ += t.tokens;
    t.windows = micro.total();
    return t;
  }

  // Inner steps of one round (streaming: between two fragment syncs).
  std::uint64_t roundSteps() const {
    return streaming_ ? cfg_.inner_steps / cfg_.fragments : cfg_.inner_steps;
  }
  // Elements of this round's data all-reduce (streaming: the round's fragment).
  std::size_t dataLen() const {
    if (!streaming_) return active() * P_;
    return rangesSize(fragments_[currentFragment()]);
  }
  std::uint32_t currentFragment() const {
    return streamingFragment(static_cast<std::uint64_t>(progress_[kOuterStep]), cfg_.fragments);
  }

  void addBlocked(TimePoint since) {
    const double s = toSeconds(Clock::now() - since);
    blocked_total_s_ += s;
    round_blocked_s_ += s;
  }

  void fillTiming(RoundRecord& rec) {
    rec.wall_s = toSeconds(Clock::now() - started_);
    rec.compute_total_s = compute_total_s_;
    rec.blocked_total_s = blocked_total_s_;
    rec.blocked_s = round_blocked_s_;
    round_blocked_s_ = 0;
    const double sent = static_cast<double>(comm_.bytesSent());
    rec.round_bytes = sent - bytes_at_last_record_;
    bytes_at_last_record_ = sent;
    peak_round_bytes_ = std::max(peak_round_bytes_, rec.round_bytes);
    rec.peak_round_bytes = peak_round_bytes_;
    rec.sync_points = sync_points_;
    rec.e2e_tokens_per_s = rec.wall_s > 0 ? tokens_trained_ / rec.wall_s : 0;
    const double training_s = toSeconds(Clock::now() - training_started_);
    rec.utilization = training_s > 0 ? std::min(1.0, compute_total_s_ / training_s) : 0;
  }

  // The validation loss of what the group holds in common: θ (DiLoCo, DDP), the global copies θ̃
  // of every fragment (streaming), this peer's φ (NoLoCo: there is no common model).
  Result<float> validateGlobal() {
    if (!streaming_) return slotTrainer(0).validationLoss();
    std::copy(trainer_.paramData(), trainer_.paramData() + P_, fragment_local_.begin());
    std::copy(theta_.begin(), theta_.end(), trainer_.paramData());
    auto val = trainer_.validationLoss();
    std::copy(fragment_local_.begin(), fragment_local_.end(), trainer_.paramData());
    return val;
  }

  // Streaming: the outer step on the round's fragment of θ̃ and, where this peer contributed,
  // the merge of its local fragment; progress moves to the step the fragment's Δ was taken at.
  void applyFragment(std::size_t count, bool contributed) {
    const auto& ranges = fragments_[currentFragment()];
    std::span<float> th(fragment_theta_.data(), count), mo(fragment_momentum_.data(), count);
    gatherRanges(theta_, ranges, th);
    gatherRanges(momentum_, ranges, mo);
    outerNesterovStep(th, mo, std::span<const float>(reduce_buf_.data(), count), cfg_.outer);
    scatterRanges(th, ranges, theta_);
    scatterRanges(mo, ranges, momentum_);
    progress_[kMomentumStarted] = 1;
    if (contributed) {
      std::span<float> params(trainer_.paramData(), P_);
      std::span<float> local(fragment_local_.data(), count);
      gatherRanges(params, ranges, local);
      mergeFragment(local, th, cfg_.merge_alpha);
      scatterRanges(local, ranges, params);
    }
    advanceInnerStep(std::min<std::int64_t>(progress_[kInnerStep] + roundSteps(), cfg_.steps));
  }

  // Runs while the round's all-reduces are in flight (reduce()): streaming trains τ steps past
  // the fragment's sync point; DiLoCo with --overlap trains the whole next round from θ (+ this
  // peer's eager correction). Runs once per round, also when the round is retried.
  Status overlapPhase() {
    if (!have_contribution_ || overlap_ran_) return Status();
    const auto inner = static_cast<std::uint64_t>(progress_[kInnerStep]);
    if (streaming_) {
      const std::uint64_t at = std::min<std::uint64_t>(inner + roundSteps(), cfg_.steps);
      const std::uint64_t until = std::min<std::uint64_t>(at + cfg_.overlap_steps, cfg_.steps);
      auto t = train(at, until);
      if (!t) return t.status();
      pending_ = *t;
      local_step_ = until;
      overlap_ran_ = true;
      return Status();
    }
    if (overlap_ == Overlap::kNone) return Status();
    const std::uint64_t from = inner + cfg_.inner_steps;
    if (from >= cfg_.steps) return Status();  // the last round: nothing left to overlap
    const std::uint64_t until = std::min<std::uint64_t>(from + cfg_.inner_steps, cfg_.steps);
    if (overlap_ == Overlap::kEager) {
      eager_.add(contribution_);
      eager_.startPoint(theta_, start_);
    } else {
      start_ = theta_;  // naive: the average of this round arrives one round late
    }
    std::copy(start_.begin(), start_.end(), trainer_.paramData());
    auto t = train(from, until);
    if (!t) return t.status();
    overlap_ran_ = true;
    pseudoGradient(start_, std::span<const float>(trainer_.paramData(), P_), next_contribution_);
    have_next_ = finishContribution(*t, next_contribution_, progress_[kOuterStep] + 1);
    next_loss_ = t->losses > 0 ? t->loss_sum / static_cast<double>(t->losses) : 0;
    return Status();
  }

  bool testing() const { return cfg_.batch.test != BatchTest::kNone; }
  // The per-peer batch: the shared one under a batch test, else --batch.
  std::uint32_t currentBatch(std::uint32_t k = 0) const {
    return perInstanceBatch() ? static_cast<std::uint32_t>(batchOf(k)) : cfg_.train.batch_size;
  }
  // The batch is shared state, per instance: under a batch test, and with several instances
  // (a merged instance trains the windows of both; mergeInstances).
  bool perInstanceBatch() const { return testing() || K_ > 1; }
  // Instance k's fields of the shared batch state (one instance: k = 0).
  std::int64_t& batchOf(std::uint32_t k) {
    return batch_state_[k * kBatchStateFields + kBatchSize];
  }
  std::int64_t batchOf(std::uint32_t k) const {
    return batch_state_[k * kBatchStateFields + kBatchSize];
  }
  std::int64_t& samplesOf(std::uint32_t k) {
    return batch_state_[k * kBatchStateFields + kScheduleSamples];
  }
  std::int64_t samplesOf(std::uint32_t k) const {
    return batch_state_[k * kBatchStateFields + kScheduleSamples];
  }
  // The learning-rate schedule's position for inner step `step` of the current round: it counts
  // samples per peer (batch_state.h). Without a batch test the batch is --batch throughout and
  // the position is `step` itself; --lr-schedule steps keeps it at the step under a test too.
  std::uint64_t lrStep(std::uint64_t step, std::uint32_t k = 0) const {
    if (!testing() || !cfg_.schedule_in_samples) return step;
    const auto start = static_cast<std::uint64_t>(progress_[kInnerStep]);
    return scheduleStepOf(step, start, static_cast<std::uint64_t>(samplesOf(k)), currentBatch(k),
                          cfg_.train.batch_size);
  }
  // Moves the progress to inner step `to` and, under a batch test, the schedule by the samples
  // of the steps in between (at the batch they were trained with: the test runs after this).
  void advanceInnerStep(std::int64_t to) {
    if (testing() && to > progress_[kInnerStep]) {
      for (std::uint32_t k = 0; k < active(); ++k) {
        samplesOf(k) = static_cast<std::int64_t>(advanceSamples(
            static_cast<std::uint64_t>(samplesOf(k)),
            static_cast<std::uint64_t>(to - progress_[kInnerStep]), currentBatch(k)));
      }
    }
    progress_[kInnerStep] = to;
  }
  bool speedSplit() const { return cfg_.allocation == Allocation::kSpeed; }
  // This peer's windows per inner step: its speed share, or the per-peer batch.
  MicroPlan plan(std::uint32_t k = 0) const {
    const std::uint32_t mine = speedSplit() && share_ > 0 ? share_ : currentBatch(k);
    return switchPlan(cfg_.switch_mode, mine, cfg_.micro_limits, cfg_.batch.max_micro_batch);
  }

  // The round's batch test, on values every member holds bit for bit (the all-reduced sums), so
  // every member reaches the same batch; it goes into the shared state. Returns what the test
  // asked for (0 when it did not run).
  double batchTest(const Reduced& r, std::uint32_t instances) {
    const float peers = r.stats[kStatGradPeers];
    // Σ w_m g_m / Σ w_m; equal batches: w_m = 1, the plain mean over the peers.
    const float weight = speedSplit() ? r.stats[kStatGradWeight] : peers;
    std::vector<GradientMoments> g(instances);
    std::vector<std::span<float>> means(instances);
    for (std::uint32_t k = 0; k < instances; ++k) {
      g[k].peers = peers;
      if (speedSplit()) g[k].weight = weight;
      g[k].sq_norms = r.stats[gradSqSlot(k)];
      // DiLoCo: grad_buf_ holds Σ g_m per instance; DDP: reduce_buf_ already holds the mean.
      means[k] = diloco_ ? slice(grad_buf_, k) : std::span<float>(reduce_buf_).first(P_);
    }
    if (peers >= kMinTestPeers) {
      for (std::uint32_t k = 0; k < instances; ++k) {
        if (diloco_) {
          const float inv = 1.0f / weight;
          for (float& x : means[k]) x *= inv;
        }
        g[k].mean_sq_norm = squaredNorm(means[k]);
      }
      if (cfg_.batch.test == BatchTest::kInnerProduct && !innerProducts(means, g)) {
        return 0;  // logged; the batch stays, on every member alike
      }
    }
    double wanted = 0;
    for (std::uint32_t k = 0; k < instances; ++k) {
      const std::uint32_t before = currentBatch(k);
      const BatchDecision d = decideBatch(cfg_.batch, g[k], before);
      if (d.batch != before) {
        const MicroPlan p =
            switchPlan(cfg_.switch_mode, d.batch, cfg_.micro_limits, cfg_.batch.max_micro_batch);
        LOG_INFO(kLogTrain, "round {}: {}{} test asks for {:.1f}: batch {} -> {}{}",
                 progress_[kOuterStep], K_ > 1 ? fmt::format("instance {}: ", k) : "",
                 batchTestName(cfg_.batch.test), d.wanted, before, d.batch,
                 p.micro_batches > 1
                     ? fmt::format(" ({} micro-batches of {})", p.micro_batches, p.micro_size)
                     : "");
      }
      batchOf(k) = d.batch;
      wanted = std::max(wanted, d.wanted);
    }
    return wanted;
  }

  // Σ⟨g_m, ḡ⟩ and Σ⟨g_m, ḡ⟩² need ḡ, which exists only after the round's all-reduce: one more
  // all-reduce of a few floats (two per instance). It commits on every member or on none, so on
  // failure every member keeps its batch alike (false).
  bool innerProducts(const std::vector<std::span<float>>& means, std::vector<GradientMoments>& g) {
    std::array<float, kStatsLen> dots{};
    if (sent_grad_) {
      for (std::size_t k = 0; k < means.size(); ++k) {
        std::span<const float> mine = diloco_ ? slice(last_grad_, static_cast<std::uint32_t>(k))
                                              : std::span<const float>(contribution_);
        double d = 0;
        for (std::size_t i = 0; i < P_; ++i) d += static_cast<double>(mine[i]) * means[k][i];
        const double w = speedSplit() ? contribution_windows_ : 1.0;
        dots[2 * k] = static_cast<float>(w * d);
        dots[2 * k + 1] = static_cast<float>(w * d * d);
      }
    }
    collectives::AllReduceOptions options;
    options.timeout = cfg_.op_timeout;
    auto op = comm_.allReduce(dots.data(), kStatsLen, DType::kF32, ReduceOp::kSum,
                              collectives::Wire::kRaw, options);
    Status st = op ? (*op)->wait(deadline()) : op.status();
    if (!st.isOk()) {
      LOG_WARN(kLogTrain, "round {}: the inner-product test's all-reduce failed ({}); batch stays",
               progress_[kOuterStep], st.message());
      return false;
    }
    for (std::size_t k = 0; k < g.size(); ++k) {
      g[k].dots = dots[2 * k];
      g[k].sq_dots = dots[2 * k + 1];
    }
    return true;
  }

  // After a round is applied: the local work until the next round's all-reduce.
  Status afterApply() {
    if (!streaming_ && overlap_ran_) {
      overlap_ran_ = false;
      have_contribution_ = have_next_;
      have_next_ = false;
      if (have_contribution_) {
        std::swap(contribution_, next_contribution_);
        contribution_for_ = progress_[kOuterStep];
        contribution_loss_ = next_loss_;
      }
      return Status();
    }
    return localPhase();
  }

  // The finite check and fault injection of a fresh Δ for round `round`; false: drop it.
  bool finishContribution(const Trained& t, std::vector<float>& delta, std::int64_t round) {
    if (cfg_.inject_nan_at_round >= 0 && round == cfg_.inject_nan_at_round) {
      delta[dataLenFor(round) / 2] = std::nanf("");  // fault injection (tests)
    }
    if (t.seconds > 0) {
      last_compute_s_ = t.seconds;
      last_tokens_per_s_ = t.tokens / t.seconds;
      speed_tokens_per_s_ = smoothedSpeed(speed_tokens_per_s_, last_tokens_per_s_);
    }
    contribution_tokens_ = t.tokens;
    contribution_windows_ = t.windows;
    std::size_t bad = 0;
    if (!allFinite(std::span<const float>(delta.data(), dataLenFor(round)), &bad)) {
      LOG_WARN(kLogTrain,
               "round {}: this peer's {} holds a non-finite value at element {}; dropping its "
               "contribution so it cannot poison the group",
               round, diloco_ ? "pseudo-gradient" : "gradient", bad);
      return false;
    }
    return t.losses > 0;
  }
  std::size_t dataLenFor(std::int64_t round) const {
    if (!streaming_) return activeInstances(cfg_.multi, static_cast<std::uint64_t>(round)) * P_;
    return rangesSize(
        fragments_[streamingFragment(static_cast<std::uint64_t>(round), cfg_.fragments)]);
  }

  // DiLoCo: H inner steps from θ (+ the eager correction), then Δ_m = θ − θ_m. Streaming: the
  // rest of the round, then Δ of the next fragment against its global copy. DDP: one gradient.
  Status localPhase() {
    const auto from = static_cast<std::uint64_t>(progress_[kInnerStep]);
    Trained t;
    if (streaming_) {
      const std::uint64_t until = std::min<std::uint64_t>(from + roundSteps(), cfg_.steps);
      auto r = train(overlap_ran_ ? local_step_ : from, until);
      if (!r) return r.status();
      t = *r;
      if (overlap_ran_) {
        t.loss_sum += pending_.loss_sum;
        t.losses += pending_.losses;
        t.steps_run += pending_.steps_run;
        t.seconds += pending_.seconds;
        t.tokens += pending_.tokens;
      }
      overlap_ran_ = false;
      const auto& ranges = fragments_[currentFragment()];
      const std::size_t n = rangesSize(ranges);
      std::span<float> g(fragment_theta_.data(), n), l(fragment_local_.data(), n);
      gatherRanges(theta_, ranges, g);
      gatherRanges(std::span<const float>(trainer_.paramData(), P_), ranges, l);
      pseudoGradient(g, l, std::span<float>(contribution_.data(), n));
    } else if (diloco_) {
      // A peer without an overlapped Δ (the first round, a joiner, a dropped Δ) has no eager
      // correction either.
      if (overlap_ == Overlap::kEager) eager_.reset();
      const std::uint64_t until = std::min<std::uint64_t>(from + cfg_.inner_steps, cfg_.steps);
      // Each instance in turn (one, without --instances): H steps from its θ_k, then its Δ_k.
      bool grads = true;
      for (std::uint32_t k = 0; k < active(); ++k) {
        LocalTrainer& trainer = slotTrainer(k);
        std::span<const float> start = slice(theta_, k);
        std::copy(start.begin(), start.end(), trainer.paramData());
        auto r = train(from, until, testing(), k);
        if (!r) return r.status();
        pseudoGradient(start, std::span<const float>(trainer.paramData(), P_),
                       slice(contribution_, k));
        instance_loss_[k] =
            r->losses > 0 ? r->loss_sum / static_cast<double>(r->losses) : std::nan("");
        grads = grads && r->grad_kept;
        t.loss_sum += r->loss_sum;
        t.losses += r->losses;
        t.steps_run += r->steps_run;
        t.seconds += r->seconds;
        t.tokens += r->tokens;
        // Every instance's windows per step: what this peer computes per step. (Read only by
        // the speed split, which --instances refuses: one instance there.)
        t.windows += r->windows;
      }
      have_grad_ = grads;
    } else {
      const auto t0 = Clock::now();
      const MicroPlan micro = plan();
      auto loss = accumulateGradients(trainer_, from, micro);
      if (!loss) return loss.status();
      t.loss_sum = *loss;
      t.losses = 1;
      t.steps_run = 1;
      t.windows = micro.total();
      t.seconds = toSeconds(Clock::now() - t0);
      compute_total_s_ += t.seconds;
      t.tokens = static_cast<double>(t.windows) * cfg_.train.model.context;
      tokens_trained_ += t.tokens;
      std::copy(trainer_.gradData(), trainer_.gradData() + P_, contribution_.begin());
    }
    have_contribution_ = finishContribution(t, contribution_, progress_[kOuterStep]);
    contribution_for_ = progress_[kOuterStep];
    contribution_loss_ = t.losses > 0 ? t.loss_sum / static_cast<double>(t.losses) : 0;
    return Status();
  }

  // One NoLoCo round: H inner steps from φ, then (Δ, φ) averaged with this round's group over
  // the exchange, and the modified Nesterov step on φ. A joiner that has no φ of the group's
  // yet contributes nothing (weight 0) and adopts its group's φ. A failed exchange (a partner
  // died or left) leaves this peer with its own φ and Δ for the round (logged); the round is
  // not retried and nobody waits for the lost partner.
  Status nolocoRound() {
    const std::int64_t round = progress_[kOuterStep];
    const auto from = static_cast<std::uint64_t>(progress_[kInnerStep]);
    const std::uint64_t until = std::min<std::uint64_t>(from + cfg_.inner_steps, cfg_.steps);
    const bool fresh = !noloco_has_phi_ && round > 0;
    bool contributes = false;
    Trained t;
    std::span<float> params(trainer_.paramData(), P_);
    if (!fresh) {
      std::copy(theta_.begin(), theta_.end(), params.begin());
      auto r = train(from, until);
      if (!r) return r.status();
      t = *r;
      for (std::size_t i = 0; i < P_; ++i) exchange_delta_[i] = params[i] - theta_[i];
      contributes = finishContribution(t, exchange_delta_, round);
    }
    noloco_has_phi_ = true;
    if (contributes) {
      std::copy(theta_.begin(), theta_.end(), exchange_phi_.begin());
      exchange_phi_[P_] = 1.0f;
    } else {
      std::fill(exchange_delta_.begin(), exchange_delta_.end(), 0.0f);
      std::fill(exchange_phi_.begin(), exchange_phi_.end(), 0.0f);
    }
    const std::vector<std::string> group =
        nolocoGroupOf(comm_.ring(), static_cast<std::uint64_t>(round), comm_.peerId());
    Status st;
    const auto wait_t0 = Clock::now();
    if (group.size() > 1) st = nolocoExchange(group);
    addBlocked(wait_t0);
    std::size_t counted = contributes ? 1 : 0;
    if (group.size() > 1 && st.isOk()) {
      const float w = mean_phi_[P_];  // the share of the group that contributed
      counted = static_cast<std::size_t>(std::lround(w * static_cast<float>(group.size())));
      if (w > 0 && w != 1.0f) {
        for (std::size_t i = 0; i < P_; ++i) {
          mean_delta_[i] /= w;
          mean_phi_[i] /= w;
        }
      }
      if (contributes) {
        nolocoStep(theta_, momentum_, mean_delta_, std::span<const float>(mean_phi_.data(), P_),
                   cfg_.noloco);
      } else if (w > 0) {
        std::copy_n(mean_phi_.begin(), P_, theta_.begin());  // adopt the group's φ
        std::fill(momentum_.begin(), momentum_.end(), 0.0f);
        LOG_INFO(kLogTrain, "round {}: took φ from the group {}", round, fmt::join(group, ","));
      }
    } else {
      if (group.size() > 1) {
        LOG_WARN(kLogTrain,
                 "round {}: the exchange with {} failed ({}); keeping this peer's own φ and Δ for "
                 "the round",
                 round, fmt::join(group, ","), st.message());
      }
      if (contributes) nolocoStep(theta_, momentum_, exchange_delta_, theta_, cfg_.noloco);
    }
    std::copy(theta_.begin(), theta_.end(), params.begin());
    progress_[kOuterStep] += 1;
    advanceInnerStep(static_cast<std::int64_t>(until));
    state_.advanceRevision();
    RoundRecord rec;
    rec.world = comm_.world();
    rec.epoch = comm_.epoch();
    rec.contributors = counted;
    rec.train_loss = t.losses > 0 ? t.loss_sum / static_cast<double>(t.losses) : std::nan("");
    rec.outer_step = static_cast<std::uint64_t>(progress_[kOuterStep]);
    rec.inner_step = static_cast<std::uint64_t>(progress_[kInnerStep]);
    total_megabytes_ = static_cast<double>(bytesSentSoFar()) / 1e6;  // this peer's only
    rec.bytes_sent = total_megabytes_ * 1e6;
    rec.tokens_per_s = last_tokens_per_s_;
    rec.compute_s = last_compute_s_;
    rec.reduce_s = toSeconds(Clock::now() - wait_t0);
    rec.state_digest = state_.digest();
    comm_.setRegistrationReport(state_.revision(), rec.state_digest, rec.outer_step, done());
    const auto ring = comm_.ring();
    if (!ring.empty() && ring.front() == comm_.peerId() &&
        (rec.outer_step == 1 || done() || rec.outer_step % cfg_.eval_every == 0)) {
      auto val = trainer_.validationLoss();
      if (!val) return val.status().withContext("validation");
      rec.val_loss = *val;
    }
    fillTiming(rec);
    if (!cfg_.checkpoint_dir.empty()) LOCO_RETURN_IF_ERROR(checkpoint());
    rec.checkpoint_failures = checkpoint_failures_;
    if (on_round_) on_round_(rec);
    return Status();
  }

  // Δ (in the run's wire format) and [φ, weight] (raw: φ is the model itself) averaged over
  // the group, both in flight together. On failure mean_delta_/mean_phi_ are unspecified.
  Status nolocoExchange(const std::vector<std::string>& group) {
    collectives::ExchangeOptions options;
    options.mode = collectives::ExchangeMode::kAverage;
    options.quant_block = cfg_.quant_block;
    auto a = comm_.exchange(group, exchange_delta_, mean_delta_, cfg_.wire, deadline(), options);
    if (!a) return a.status();
    auto b = comm_.exchange(group, exchange_phi_, mean_phi_, collectives::Wire::kRaw, deadline(),
                            options);
    Status sa = (*a)->wait(deadline());
    if (!b) return b.status();
    Status sb = (*b)->wait(deadline());
    LOCO_RETURN_IF_ERROR(sa);
    return sb;
  }

  Communicator& comm_;
  LocalTrainer& trainer_;
  const DistributedConfig& cfg_;
  const std::atomic<bool>& stop_;
  const std::function<void(const RoundRecord&)>& on_round_;
  const std::size_t P_;
  const bool diloco_;     // an outer loop over inner steps (diloco, streaming, noloco)
  const bool streaming_;  // Streaming DiLoCo
  const bool noloco_;     // NoLoCo
  const Overlap overlap_;
  const std::uint32_t K_;  // --instances (multi_instance.h); 1: one model per peer
  OuterSgd outer_;
  EagerCorrection eager_;
  collectives::SharedState state_;
  // θ: DiLoCo's global parameters, streaming's global copies θ̃, NoLoCo's φ; momentum_: the
  // outer momentum (NoLoCo: δ).
  std::vector<float> theta_, momentum_, adam_m_, adam_v_;
  std::array<std::int64_t, kProgressFields> progress_{};
  std::vector<float> contribution_, reduce_buf_;
  bool have_contribution_ = false;
  std::int64_t contribution_for_ = -1;
  double contribution_loss_ = 0;
  // Overlap: the starting point of the round being trained, and the Δ of the round after the
  // one in flight (--overlap eager/naive).
  std::vector<float> start_, next_contribution_;
  bool overlap_ran_ = false;  // this round's overlap phase ran (not again when it is retried)
  bool have_next_ = false;
  double next_loss_ = 0;
  // Streaming: the fragments' ranges and scratch space for one fragment.
  std::vector<std::vector<Range>> fragments_;
  std::vector<float> fragment_theta_, fragment_momentum_, fragment_local_;
  std::uint64_t local_step_ = 0;         // the next inner step after the overlap phase
  std::int64_t resumed_local_for_ = -1;  // streaming: the outer step a checkpoint resumed at
  Trained pending_;                      // the overlap phase's steps, reported with the round's
  // NoLoCo
  std::vector<float> exchange_delta_, exchange_phi_, mean_delta_, mean_phi_;
  bool noloco_has_phi_ = false;
  std::uint64_t state_bytes_sent_ = 0, sent_reported_ = 0;
  double total_megabytes_ = 0;
  double last_tokens_per_s_ = 0;
  double speed_tokens_per_s_ = 0;  // --allocation speed goes by this average (allocation.h)
  double last_compute_s_ = 0;
  double last_reduce_s_ = 0;
  double compute_total_s_ = 0, blocked_total_s_ = 0, round_blocked_s_ = 0;
  double bytes_at_last_record_ = 0, peak_round_bytes_ = 0;
  std::uint64_t sync_points_ = 0;  // rounds that began with a sync point and shared-state sync
  double tokens_trained_ = 0;
  std::uint32_t retries_ = 0;
  std::uint64_t checkpoint_failures_ = 0;
  std::string checkpoint_error_;  // the last failed write's reason; empty after a success
  bool reported_first_ = false;
  std::optional<DataAssignment> assigned_;  // derive_data_rank: the current one
  // Adaptive batch: the shared per-peer batch, this peer's last unclipped gradient (DiLoCo) and
  // the buffer Σ g_m travels in.
  // Multi-instance: kBatchStateFields per instance.
  std::vector<std::int64_t> batch_state_;
  std::vector<float> last_grad_, grad_buf_;
  bool have_grad_ = false, sent_grad_ = false;
  double contribution_tokens_ = 0;
  std::uint32_t contribution_windows_ = 0;  // windows per step behind the contribution
  std::uint32_t share_ = 0;                 // speed allocation: windows per step; 0 = the batch
  std::uint64_t warned_rank_epoch_ = ~std::uint64_t{0};
  // Multi-instance (K_ > 1): the trainers of instances 1..K-1, which trainer trains each slot of
  // θ (slot 0 is the given trainer until a merge), and this peer's mean inner loss per slot in
  // the round.
  std::vector<std::unique_ptr<LocalTrainer>> instance_trainers_;
  std::vector<LocalTrainer*> slot_trainers_;
  std::vector<double> instance_loss_;
  bool said_no_checkpoint_ = false;
  TimePoint started_ = Clock::now();
  TimePoint training_started_ = Clock::now();
};

}  // namespace

Status runDistributed(collectives::Communicator& comm, LocalTrainer& trainer,
                      const DistributedConfig& config, const std::atomic<bool>& stop,
                      const std::function<void(const RoundRecord&)>& on_round) {
  LOCO_RETURN_IF_ERROR(validateDistributedConfig(config));
  if (trainer.numParams() == 0)
    return Status(StatusCode::kInvalidArgument, "the model has no parameters");
  Run run(comm, trainer, config, stop, on_round);
  Status st = run.run();
  if (st.code() == StatusCode::kCompleted) {
    // The group finished the schedule while this peer was away: the run is done.
    LOG_WARN(kLogTrain, "{}; exiting", st.message());
    return Status();
  }
  return st;
}

}  // namespace loco::training
