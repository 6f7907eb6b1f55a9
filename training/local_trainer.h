#pragma once
// One peer's local training: the byte-level GPT, its data, and its inner AdamW (ARCHITECTURE.md
// §6). The distributed loops (DDP, DiLoCo and its family) drive it and move its flat buffers
// through collectives::Communicator; this header keeps LibTorch out of their translation units.
//
// Flat buffers: every parameter of the model is a view into ONE contiguous fp32 buffer
// (paramData(), numParams() long), and so is every gradient (gradData()). Writing the buffer
// changes the model, and an all-reduce can work on it in place without copies. The layout
// (paramLayout()) is fixed by the model shape: equal on every peer.
//
// Determinism: with the same TrainConfig (seed included) and thread count, two trainers produce
// bit-identical parameters and losses. Initial parameters depend only on (model, seed), so every
// peer of a run starts from the same θ. Batch b of step s is a pure function of (seed, rank, s).
//
// DDP:    computeBackward(s) → all-reduce gradData() (avg) → applyGrads(s)
// DiLoCo: innerStep(s) H times → Δ = θ − paramData() (optimizers.h) → all-reduce → outer step
//         on θ → copy θ into paramData()
//
// Threads: LibTorch's intra-op thread count is per process (setThreads); create() applies
// config.threads. A LocalTrainer belongs to one thread; several trainers in one process may
// run on different threads. Every call blocks for the computation it does (an inner step of the
// 0.43M model with one thread: tens of milliseconds). No call throws: LibTorch errors become
// Status (kInternal, with torch's message).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "p2p/base/status.h"
#include "training/checkpoint.h"
#include "training/model_config.h"
#include "training/optimizers.h"
#include "training/text_data.h"

namespace loco::training {

inline constexpr std::string_view kLogTrain = "train";

struct InnerConfig {
  LrSchedule schedule;     // lr 3e-3, warm-up 20 steps, cosine to 10% at total_steps
  AdamWOptions adam;       // betas 0.9/0.95, weight decay 0.1 on matrices and embeddings
  float grad_clip = 1.0f;  // global L2 norm; <= 0 disables
};

// The fixed validation set: `batches` batches of `batch_size` windows at evenly spaced offsets
// of the validation split (identical on every peer and every run).
struct EvalConfig {
  std::uint32_t batches = 8;
  std::uint32_t batch_size = 16;
};

struct TrainConfig {
  ModelConfig model;
  // Path and validation fraction; ignored by the create() that takes a loaded corpus.
  CorpusOptions data;
  Sharding sharding = Sharding::kIid;
  std::uint32_t rank = 0;  // this peer's data shard / random stream
  std::uint32_t world = 1;
  std::optional<std::uint64_t> stream;  // i.i.d. sampling stream; unset: rank (text_data.h)
  std::uint32_t batch_size = 16;        // windows per step (per micro-batch, see computeBackward)
  std::uint64_t seed = 1;               // model init and batch sampling
  InnerConfig inner;
  EvalConfig eval;
  int threads = 1;  // LibTorch intra-op threads for the whole process
};

// kInvalidArgument naming the first bad field.
Status validateTrainConfig(const TrainConfig& c);

// One tensor of the model inside the flat buffers.
struct ParamInfo {
  std::string name;        // "blocks.0.attn_qkv.weight", "wte.weight", ...
  std::size_t offset = 0;  // elements from the start of paramData()/gradData()
  std::size_t count = 0;
  int layer = -1;        // transformer block index; -1 for embeddings and the final LN
  bool decayed = false;  // gets AdamW weight decay
};

class LocalTrainer {
 public:
  // Loads the corpus (config.data) and builds the model. Errors: everything validateTrainConfig
  // and TextCorpus::load return, checkShard's kInvalidArgument, kInternal from LibTorch.
  static Result<std::unique_ptr<LocalTrainer>> create(const TrainConfig& config);
  // Same with an already loaded corpus (shared by in-process peers; the trainer holds a
  // reference). Its context check is redone for config.model.context.
  static Result<std::unique_ptr<LocalTrainer>> create(const TrainConfig& config,
                                                      std::shared_ptr<const TextCorpus> corpus);
  ~LocalTrainer();
  LocalTrainer(const LocalTrainer&) = delete;
  LocalTrainer& operator=(const LocalTrainer&) = delete;

  // computeBackward(step) then applyGrads(step): one AdamW step on step's batch. Returns the
  // batch's training loss (mean cross-entropy, nats per byte) before the update.
  // kDataLoss when the loss or the gradient norm is not finite: the parameters are left as they
  // were, so the caller can skip the step or restore.
  Result<float> innerStep(std::uint64_t step);

  // Gradients of step's batch into gradData(), returning its loss. With micro_count > 1 the
  // batch is split into micro_count micro-batches of batch_size windows each (rows
  // [micro·batch_size, (micro+1)·batch_size) of step's draw); micro 0 overwrites gradData(),
  // later ones add to it, each scaled by 1/micro_count, so the sum is the mean gradient of the
  // whole batch (gradient accumulation beyond what memory allows).
  // The loss (and so the gradients) may be NaN/Inf: check before an all-reduce (findNonFinite).
  // Errors: kInvalidArgument (micro >= micro_count), kInternal.
  Result<float> computeBackward(std::uint64_t step, std::uint32_t micro = 0,
                                std::uint32_t micro_count = 1);

  // Clips gradData() to the global norm limit and applies AdamW with the learning rate of
  // `step`. Returns the gradient norm before clipping. kDataLoss (nothing applied) when the norm
  // is not finite.
  Result<double> applyGrads(std::uint64_t step);

  // Mean loss over the fixed validation set (EvalConfig), no gradients. Deterministic.
  Result<float> validationLoss();

  float* paramData();
  const float* paramData() const;
  float* gradData();
  std::size_t numParams() const;
  const std::vector<ParamInfo>& paramLayout() const;

  const TrainConfig& config() const;
  const TextCorpus& corpus() const;
  float learningRate(std::uint64_t step) const { return config().inner.schedule.at(step); }

  // Windows per (micro-)batch from now on (adaptive batch size); 1..65536.
  Status setBatchSize(std::uint32_t batch_size);
  // Which samples this trainer draws from now on (rank/world: contiguous slice; stream: i.i.d.
  // stream, unset = rank). kInvalidArgument (nothing changed) when checkShard refuses it.
  Status setShard(std::uint32_t rank, std::uint32_t world, std::optional<std::uint64_t> stream);

  // This trainer's part of a checkpoint: model, seed, params, AdamW state; `step` is one past
  // the last step applied. The caller adds the outer fields.
  TrainingState exportState() const;
  // Restores params and AdamW state. kInvalidArgument when the model shape differs (naming the
  // field) or a vector has the wrong length. A seed different from config.seed is accepted
  // (warned): the run then continues, but not reproducibly.
  Status importState(const TrainingState& state);

  // at::set_num_threads(n) for the process; the inter-op pool is pinned to 1 thread on the
  // first call (LibTorch allows setting it only once). kInvalidArgument outside 1..256.
  static Status setThreads(int n);

  class Impl;

 private:
  explicit LocalTrainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace loco::training
