#pragma once
// Training over the runtime (ARCHITECTURE.md §6): DDP and DiLoCo across the members of a
// collectives::Communicator group, with peers joining and leaving mid-run.
//
// Shared state (collectives/shared_state.h) holds what every peer must agree on: DiLoCo's global
// parameters θ, its outer momentum and the run's progress (outer step, schedule position); DDP's
// parameters, AdamW moments and progress. It is synchronized after every sync point, so a joiner
// receives it before its first collective and a drifted peer is repaired.
//
// One round (DiLoCo; DDP is the same with one inner step and gradients instead of Δ, and steps 1
// and 2 only every ddp_sync_every steps):
//   1. sync point (joiners are admitted here), then syncSharedState. Overlapped methods
//      (streaming, eager/naive overlap) skip both while the membership stands: only after a
//      round in which a member saw a peer waiting for admission, after a failed round, and
//      every 8th round (run.jsonl's sync_points counts them);
//   2. two all-reduces in flight together: the statistics (who contributes, their train loss and
//      bytes) in raw fp32, and the contributions Σ Δ_m in the chosen wire format;
//   3. if anyone contributed: Δ̄ = ΣΔ_m / contributors, outer Nesterov step on θ, progress + 1;
//   4. θ_m ← θ and H inner steps give this peer's Δ_m for the next round.
// A peer contributes zeros (and is not counted) when it has no Δ for the current outer step (it
// just joined, or its Δ is from a round the group already applied) or when its Δ holds NaN/Inf
// (logged with the reason): it never poisons the others. A failed all-reduce (a peer died or
// left) restores every survivor's buffers; the survivors go back to 1 and retry the round on the
// new epoch with the same Δs. Because each all-reduce commits on every member or on none, a
// round is applied by all survivors or by none of them.
//
// The run outlives its coordinator and evictions (ARCHITECTURE.md §4). A peer that loses the
// group (coordinator gone or stalled, or it was evicted) keeps its state and its Δ: it finishes
// the inner steps it is running (they need no coordinator), then waits at the next sync point
// while its communicator registers again, and is admitted with the others (a rebuilt group
// retries the round with every Δ) or as a newcomer of a group that went on (it downloads what
// changed and contributes from its next round). A committed round advances the shared-state
// revision, so if a coordinator died while a commit was on its way, the peers that applied the
// round win the next election and the others catch up: no round is lost or applied twice.
//
// Determinism: the same seed, membership and ring order give bit-identical results; sampling
// depends on (seed, rank, step), where rank is this peer's fixed data rank, not its ring position.
// Without an explicit rank (derive_data_rank) the stream is a hash of the peer id instead: unique
// per peer, reproducible only with a fixed identity file.
//
// Thread rules: runDistributed blocks the calling thread (the training thread) for the whole
// run; `stop` may be set from any thread and ends the run at the next round boundary.

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "collectives/codec.h"
#include "collectives/compress.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "training/allocation.h"
#include "training/batch_test.h"
#include "training/local_trainer.h"
#include "training/multi_instance.h"
#include "training/optimizers.h"
#include "training/switch_mode.h"
#include "training/sync_methods.h"

namespace loco::collectives {
class Communicator;
}

namespace loco::training {

// ddp and diloco as above; streaming (Streaming DiLoCo: one fragment of the parameters per sync,
// overlapped with τ inner steps) and noloco (no all-reduce: pairwise gossip) are described in
// training/sync_methods.h and the README.
enum class Method : std::uint8_t { kDdp, kDiloco, kStreaming, kNoloco };
std::string_view methodName(Method m);
Result<Method> parseMethod(std::string_view name);

struct DistributedConfig {
  TrainConfig
      train;  // model, data, batch, seed, inner schedule, threads; train.rank is the data rank
  Method method = Method::kDiloco;
  std::uint32_t inner_steps = 30;                    // H (DiLoCo)
  std::uint64_t steps = 600;                         // inner steps per peer for the whole run
  OuterSgdOptions outer;                             // DiLoCo's outer optimizer
  collectives::Wire wire = collectives::Wire::kRaw;  // how Δ (DDP: gradients) travel
  std::uint32_t quant_block =
      1024;  // int8/int4: values per scale (codec.h); Δ tolerates large blocks
  collectives::Compress compress = collectives::Compress::kAuto;  // zstd stage (compress.h)
  // DDP: steps between sync points (where joiners enter and the shared state is compared) and
  // checkpoints; the steps between are bare all-reduces. A failed step always syncs.
  std::uint32_t ddp_sync_every = 10;
  std::uint32_t eval_every = 1;  // rounds (DDP: steps) between validation losses
  // "" = none; else DIR/peer-<rank>.ckpt after every round. A write that fails (a full disk) is
  // warned about and retried at the next round; training goes on.
  std::string checkpoint_dir;
  bool resume = false;             // start from DIR/peer-<rank>.ckpt
  std::size_t wait_for_world = 1;  // before the first round, wait until this many peers are members
  Millis op_timeout{300000};       // one sync point, state sync or all-reduce
  std::uint32_t max_failed_attempts = 50;  // consecutive failed rounds before giving up
  std::int64_t inject_nan_at_round =
      -1;  // fault injection for tests: a NaN in this peer's Δ at that outer step
  // No --rank given: this peer's data rank, world and i.i.d. stream come from the membership and
  // its peer id (data_assignment.h), re-derived at every sync point; checkpoints are named after
  // the peer id. false: train.rank/world as given (an explicit rank; duplicates are warned about).
  bool derive_data_rank = false;
  // Adaptive batch (batch_test.h): the test, its tolerances, the cap and the micro-batch size.
  // With a test on, the per-peer batch is shared state ("batch"): a joiner receives the current
  // one. The sum of the peers' last unclipped mini-batch gradients travels as a third buffer of
  // the round's all-reduces (int8, DiLoCo; DDP's contributions are those gradients already) and
  // Σ‖g_m‖² with the statistics; the inner-product test adds one all-reduce of a few floats.
  BatchTestConfig batch;
  // kSpeed: each peer's windows per step in proportion to its throughput, Δ weighted by windows
  // (allocation.h). Not bit-reproducible (throughput is measured), hence kEqual by default.
  Allocation allocation = Allocation::kEqual;
  // Switch mode (switch_mode.h): how a batch is split into micro-batches, from this peer's
  // measured limits (calibrate.h's calibrateForRun fills micro_limits before the run; kNone:
  // --max-micro-batch as given). memory_budget_mib: --memory-budget-mib (0: no budget).
  SwitchMode switch_mode = SwitchMode::kNone;
  // Under a batch test: the learning-rate schedule counts samples per peer (batch_state.h; true)
  // or steps, as without a test (--lr-schedule steps).
  bool schedule_in_samples = true;
  std::uint64_t memory_budget_mib = 0;
  MicroLimits micro_limits;
  Overlap overlap = Overlap::kNone;  // diloco: whole-round overlap (sync_methods.h)
  std::uint32_t fragments = 2;       // streaming: P (the model needs at least P blocks)
  std::uint32_t overlap_steps = 2;   // streaming: τ, inner steps its all-reduce overlaps
  float merge_alpha = 0.5f;          // streaming: θ_m,p ← α·θ_m,p + (1−α)·θ̃_p
  NolocoOptions noloco;              // noloco: α, β, γ
  // Multi-instance training (multi_instance.h): K instances per peer, merged pairwise every R
  // rounds. diloco with --overlap none only; checkpoints are written once one instance remains.
  MultiInstanceConfig multi;
};

// Validates the combination (kInvalidArgument naming the flag-level problem).
Status validateDistributedConfig(const DistributedConfig& c);

// What one applied (or consistently skipped) round looked like on this peer.
struct RoundRecord {
  std::uint64_t outer_step = 0;    // rounds applied so far (DDP: steps)
  std::uint64_t inner_step = 0;    // schedule position after the round
  std::uint64_t epoch = 0;         // the membership epoch the round's all-reduces ran in
  std::size_t world = 0;           // members in the round's epoch
  std::size_t contributors = 0;    // peers whose Δ counted
  double train_loss = 0;           // mean over contributors of their inner losses (nats/byte)
  std::optional<double> val_loss;  // on the global parameters; only the evaluating peer
  double bytes_sent = 0;      // all peers' collective bytes so far (shared-state repairs included)
  std::uint32_t retries = 0;  // failed attempts before this round went through
  double tokens_per_s = 0;    // this peer's inner-loop throughput in the last round
  double compute_s = 0;  // this peer's local phase (inner steps, or the gradient) before the round
  double reduce_s = 0;   // the round's all-reduces (statistics and contributions, in flight
                         // together), the attempt that went through
  std::uint64_t state_digest = 0;  // hash of the shared state after the round was applied
  double wall_s = 0;               // since runDistributed started
  double blocked_s = 0;            // this round: the training thread waited for the network
  double compute_total_s = 0;      // inner steps (or gradients) since the start
  double blocked_total_s = 0;      // waits for collectives since the start
  double round_bytes = 0;          // this peer's collective bytes in this round
  double peak_round_bytes = 0;     // the most this peer sent in one round so far
  std::uint64_t sync_points = 0;   // group sync points this peer passed since the start
  double e2e_tokens_per_s = 0;     // tokens this peer trained / wall_s (waits included)
  double utilization = 0;          // compute_total_s over the wall time since the first round began
  std::uint64_t checkpoint_failures = 0;  // checkpoint writes that failed so far (this process)
  std::uint32_t data_rank = 0;            // this peer's data rank in the round (given or derived)
  double local_loss = 0;  // this peer's own mean inner loss in the round; NaN: it contributed none
  std::uint32_t batch = 0;          // the per-peer batch (windows per inner step) from now on
  std::uint32_t micro_batches = 1;  // backward passes per inner step from now on
  double batch_wanted = 0;          // what the batch test asked for this round; 0: no test ran
  double tokens = 0;                // tokens all contributors processed for this round
  std::uint32_t share = 0;          // this peer's windows per inner step from now on
  std::uint32_t b_max = 0;          // switch mode: this peer's measured b_max (0: not measured)
  std::uint32_t b_mem = 0;          // switch mode: its measured b_mem (0: no memory budget)
  std::uint32_t instances = 1;      // multi-instance: instances active from now on
  // Multi-instance, while more than one is active: each instance's validation loss (evaluating
  // peer; val_loss is the best of them) and each one's batch (batch is instance 0's).
  std::vector<double> instance_val_losses;
  std::vector<std::uint32_t> instance_batches;
};

// Runs the whole training on an admitted (or pending) communicator. Returns when the schedule
// is done (everyone reaches the same final round, or the coordinator says the group finished it
// while this peer was away: OK, logged), `stop` is set, or on a fatal error:
// kInvalidArgument (config, or a checkpoint of another shape), kDataLoss (the group's state
// disagrees beyond repair), kUnavailable (no coordinator came back within the communicator's
// coordinator_timeout), kAlreadyExists (another process took this peer's identity), kAborted.
// `on_round` runs on the calling thread after every round.
Status runDistributed(collectives::Communicator& comm, LocalTrainer& trainer,
                      const DistributedConfig& config, const std::atomic<bool>& stop,
                      const std::function<void(const RoundRecord&)>& on_round);

}  // namespace loco::training
