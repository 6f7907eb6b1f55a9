#include "training/distributed.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "collectives/communicator.h"
#include "collectives/shared_state.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/reconnect.h"
#include "training/checkpoint.h"

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
// its MB sent since its last report]. Padded so that every ring segment holds an element.
constexpr std::size_t kStatsLen = 64;
enum Stat : std::size_t { kContributes, kLoss, kMegabytesSent };

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
        diloco_(config.method == Method::kDiloco),
        outer_(P_, config.outer) {}

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
    synced = true;  // left the loop at a sync point (or at admission)
    std::uint32_t failed = 0;
    bool sync_round =
        true;  // every peer decides alike: from the shared progress and the group's verdicts
    while (!stop_.load()) {
      if (!synced && sync_round) {
        auto epoch = comm_.syncPoint(deadline());
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
        Status st = syncState();
        if (st.code() == StatusCode::kInvalidArgument) return st;
        if (!st.isOk()) {
          LOG_WARN(kLogTrain, "shared-state sync failed ({}); retrying at the next sync point",
                   st.message());
          if (!lostGroup(st) && ++failed > cfg_.max_failed_attempts)
            return st.withContext("too many failed rounds");
          continue;
        }
      }
      if (done()) break;  // a peer that arrives after the last round
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
      sync_round = diloco_ || progress_[kOuterStep] % cfg_.ddp_sync_every == 0;
      if (done()) break;
      LOCO_RETURN_IF_ERROR(localPhase());
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
    if (diloco_) {
      theta_.assign(trainer_.paramData(), trainer_.paramData() + P_);
      momentum_.assign(P_, 0.0f);
      LOCO_RETURN_IF_ERROR(state_.add("outer.params", DType::kF32, theta_.data(), P_));
      LOCO_RETURN_IF_ERROR(state_.add("outer.momentum", DType::kF32, momentum_.data(), P_));
    } else {
      // DDP peers apply identical updates, so the parameters and AdamW's moments are group state.
      adam_m_.assign(P_, 0.0f);
      adam_v_.assign(P_, 0.0f);
      LOCO_RETURN_IF_ERROR(state_.add("params", DType::kF32, trainer_.paramData(), P_));
      LOCO_RETURN_IF_ERROR(state_.add("adam.m", DType::kF32, adam_m_.data(), P_));
      LOCO_RETURN_IF_ERROR(state_.add("adam.v", DType::kF32, adam_v_.data(), P_));
    }
    LOCO_RETURN_IF_ERROR(state_.add("progress", DType::kI64, progress_.data(), progress_.size()));
    contribution_.assign(P_, 0.0f);
    reduce_buf_.assign(P_, 0.0f);
    return Status();
  }

  std::string checkpointPath() const {
    return fmt::format("{}/peer-{}.ckpt", cfg_.checkpoint_dir, cfg_.train.rank);
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
      theta_ = s.outer_params;
      if (!s.outer_momentum.empty()) momentum_ = s.outer_momentum;
      progress_[kMomentumStarted] = s.outer_momentum.empty() ? 0 : 1;
    }
    progress_[kOuterStep] = static_cast<std::int64_t>(s.outer_step);
    progress_[kInnerStep] = static_cast<std::int64_t>(s.step);
    // DiLoCo's AdamW is each peer's own (inner) state, never the group's: the shared progress
    // keeps 0 there, as in the run that wrote the checkpoint, so that a resumed peer's shared
    // state is bit for bit what the group held at that step.
    if (!diloco_) progress_[kAdamSteps] = static_cast<std::int64_t>(s.adam_steps);
    LOG_INFO(kLogTrain, "resumed from {}: outer step {}, inner step {}", checkpointPath(),
             s.outer_step, s.step);
    // How far this peer is: the coordinator compares it with how far the run got, so that a
    // peer behind a group that is gone does not train those rounds again alone.
    comm_.setRegistrationReport(state_.revision(), state_.digest(), s.outer_step, done());
    return Status();
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
    if (have_contribution_ && contribution_for_ != progress_[kOuterStep])
      have_contribution_ = false;
    return Status();
  }

  std::uint64_t bytesSentSoFar() const { return comm_.bytesSent() + state_bytes_sent_; }

  struct Reduced {
    std::array<float, kStatsLen> stats;
    std::size_t world;
    std::uint64_t epoch;
  };

  // Both all-reduces of a round, in flight together. On failure the buffers are as before.
  Result<Reduced> reduce() {
    Reduced r;
    r.stats.fill(0.0f);
    const std::uint64_t sent = bytesSentSoFar();
    if (have_contribution_) {
      r.stats[kContributes] = 1.0f;
      r.stats[kLoss] = static_cast<float>(contribution_loss_);
      std::copy(contribution_.begin(), contribution_.end(), reduce_buf_.begin());
    } else {
      std::fill(reduce_buf_.begin(), reduce_buf_.end(), 0.0f);
    }
    r.stats[kMegabytesSent] = static_cast<float>((sent - sent_reported_) / 1e6);
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
        comm_.allReduce(reduce_buf_.data(), P_, DType::kF32, ReduceOp::kSum, cfg_.wire, options);
    Status a = (*stats_op)->wait(deadline());
    if (!data_op) return data_op.status();
    Status b = (*data_op)->wait(deadline());
    LOCO_RETURN_IF_ERROR(a);
    LOCO_RETURN_IF_ERROR(b);
    sent_reported_ = sent;
    total_megabytes_ += r.stats[kMegabytesSent];
    last_reduce_s_ = toSeconds(Clock::now() - t0);
    return r;
  }

  Status apply(const Reduced& r) {
    const float contributors = r.stats[kContributes];
    RoundRecord rec;
    rec.world = r.world;
    rec.epoch = r.epoch;
    rec.contributors = static_cast<std::size_t>(contributors);
    rec.retries = retries_;
    retries_ = 0;
    if (contributors > 0) {
      for (float& x : reduce_buf_) x /= contributors;
      if (diloco_) {
        // OuterSgd keeps its momentum privately; the group's copy is the shared one.
        LOCO_RETURN_IF_ERROR(
            outer_.restoreMomentum(progress_[kMomentumStarted] ? momentum_ : std::vector<float>{}));
        LOCO_RETURN_IF_ERROR(outer_.step(theta_, reduce_buf_));
        if (!outer_.momentum().empty()) {
          momentum_ = outer_.momentum();
          progress_[kMomentumStarted] = 1;
        }
        progress_[kInnerStep] =
            std::min<std::int64_t>(progress_[kInnerStep] + cfg_.inner_steps, cfg_.steps);
      } else {
        std::copy(reduce_buf_.begin(), reduce_buf_.end(), trainer_.gradData());
        auto norm = trainer_.applyGrads(static_cast<std::uint64_t>(progress_[kInnerStep]));
        if (!norm) return norm.status().withContext("applying the averaged gradient");
        progress_[kInnerStep] += 1;
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
    have_contribution_ = false;
    if (diloco_) std::copy(theta_.begin(), theta_.end(), trainer_.paramData());  // θ_m ← θ
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
      auto val = trainer_.validationLoss();
      if (!val) return val.status().withContext("validation");
      rec.val_loss = *val;
    }
    rec.wall_s = toSeconds(Clock::now() - started_);
    if (!cfg_.checkpoint_dir.empty() && contributors > 0 &&
        (diloco_ || rec.outer_step % cfg_.ddp_sync_every == 0 || done())) {
      LOCO_RETURN_IF_ERROR(checkpoint());
    }
    rec.checkpoint_failures = checkpoint_failures_;
    if (on_round_) on_round_(rec);
    return Status();
  }

  // A checkpoint that cannot be written (a full disk, a missing or read-only folder) costs
  // durability, not the run: the previous checkpoint stays whole (writes are atomic), training
  // goes on, and the next round writes again. Warned once per distinct reason; counted in
  // train.checkpoint_failures and in every RoundRecord.
  Status checkpoint() {
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
    TrainingState s = trainer_.exportState();
    s.step = static_cast<std::uint64_t>(progress_[kInnerStep]);
    s.outer_step = static_cast<std::uint64_t>(progress_[kOuterStep]);
    if (diloco_) {
      s.outer_params = theta_;
      if (progress_[kMomentumStarted]) s.outer_momentum = momentum_;
    }
    std::error_code ec;
    std::filesystem::create_directories(cfg_.checkpoint_dir, ec);
    return saveCheckpoint(checkpointPath(), s);
  }

  // DiLoCo: H inner steps from θ, then Δ_m = θ − θ_m. DDP: one gradient.
  Status localPhase() {
    const auto t0 = Clock::now();
    const auto from = static_cast<std::uint64_t>(progress_[kInnerStep]);
    double loss_sum = 0;
    std::size_t losses = 0, steps_run = 0;
    if (diloco_) {
      const std::uint64_t until = std::min<std::uint64_t>(from + cfg_.inner_steps, cfg_.steps);
      for (std::uint64_t s = from; s < until && !stop_.load(); ++s, ++steps_run) {
        auto loss = trainer_.innerStep(s);
        if (!loss) {
          if (loss.status().code() != StatusCode::kDataLoss) return loss.status();
          LOG_WARN(kLogTrain, "inner step {} skipped: {}", s, loss.status().message());
          continue;
        }
        loss_sum += *loss;
        ++losses;
      }
      pseudoGradient(theta_, std::span<const float>(trainer_.paramData(), P_), contribution_);
    } else {
      auto loss = trainer_.computeBackward(from);
      if (!loss) return loss.status();
      loss_sum = *loss;
      losses = 1;
      steps_run = 1;
      std::copy(trainer_.gradData(), trainer_.gradData() + P_, contribution_.begin());
    }
    const double seconds = toSeconds(Clock::now() - t0);
    last_compute_s_ = seconds;
    if (seconds > 0) {
      last_tokens_per_s_ = static_cast<double>(steps_run) * cfg_.train.batch_size *
                           cfg_.train.model.context / seconds;
    }
    if (cfg_.inject_nan_at_round >= 0 && progress_[kOuterStep] == cfg_.inject_nan_at_round) {
      contribution_[P_ / 2] = std::nanf("");  // fault injection (tests)
    }
    std::size_t bad = 0;
    if (!allFinite(contribution_, &bad)) {
      LOG_WARN(kLogTrain,
               "round {}: this peer's {} holds a non-finite value at element {}; dropping its "
               "contribution "
               "so it cannot poison the group",
               progress_[kOuterStep], diloco_ ? "pseudo-gradient" : "gradient", bad);
      have_contribution_ = false;
      return Status();
    }
    have_contribution_ = losses > 0;
    contribution_for_ = progress_[kOuterStep];
    contribution_loss_ = losses > 0 ? loss_sum / static_cast<double>(losses) : 0;
    return Status();
  }

  Communicator& comm_;
  LocalTrainer& trainer_;
  const DistributedConfig& cfg_;
  const std::atomic<bool>& stop_;
  const std::function<void(const RoundRecord&)>& on_round_;
  const std::size_t P_;
  const bool diloco_;
  OuterSgd outer_;
  collectives::SharedState state_;
  std::vector<float> theta_, momentum_, adam_m_, adam_v_;
  std::array<std::int64_t, kProgressFields> progress_{};
  std::vector<float> contribution_, reduce_buf_;
  bool have_contribution_ = false;
  std::int64_t contribution_for_ = -1;
  double contribution_loss_ = 0;
  std::uint64_t state_bytes_sent_ = 0, sent_reported_ = 0;
  double total_megabytes_ = 0;
  double last_tokens_per_s_ = 0;
  double last_compute_s_ = 0;
  double last_reduce_s_ = 0;
  std::uint32_t retries_ = 0;
  std::uint64_t checkpoint_failures_ = 0;
  std::string checkpoint_error_;  // the last failed write's reason; empty after a success
  bool reported_first_ = false;
  TimePoint started_ = Clock::now();
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
