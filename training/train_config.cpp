// The torch-free checks of a training configuration (local_trainer.h, distributed.h): `loco`
// runs them before it starts any peer, without linking LibTorch.
#include <fmt/format.h>

#include <cmath>

#include "training/distributed.h"
#include "training/local_trainer.h"

namespace loco::training {
namespace {

constexpr std::uint32_t kMaxBatch = 1u << 16;  // as LocalTrainer::setBatchSize
constexpr int kMaxThreads = 256;               // as LocalTrainer::setThreads

Status bad(std::string msg) {
  return Status(StatusCode::kInvalidArgument, std::move(msg));
}

}  // namespace

Status validateTrainConfig(const TrainConfig& c) {
  LOCO_RETURN_IF_ERROR(validateModelConfig(c.model));
  LOCO_RETURN_IF_ERROR(validateInner(c.inner.adam, c.inner.schedule));
  if (c.batch_size == 0 || c.batch_size > kMaxBatch) {
    return bad(fmt::format("batch size {} is out of range 1..{}", c.batch_size, kMaxBatch));
  }
  if (c.eval.batches == 0 || c.eval.batch_size == 0 || c.eval.batch_size > kMaxBatch ||
      c.eval.batches > 4096) {
    return bad(
        fmt::format("evaluation of {} batches of {} is out of range (1..4096 batches of 1..{})",
                    c.eval.batches, c.eval.batch_size, kMaxBatch));
  }
  if (c.world == 0 || c.rank >= c.world)
    return bad(fmt::format("rank {} is not below world {}", c.rank, c.world));
  if (c.threads < 1 || c.threads > kMaxThreads) {
    return bad(fmt::format("threads {} is out of range 1..{}", c.threads, kMaxThreads));
  }
  if (!std::isfinite(c.inner.grad_clip)) return bad("gradient clip must be finite");
  return Status::ok();
}

std::string_view methodName(Method m) {
  switch (m) {
    case Method::kDdp:
      return "ddp";
    case Method::kDiloco:
      return "diloco";
    case Method::kStreaming:
      return "streaming";
    case Method::kNoloco:
      return "noloco";
  }
  return "?";
}

Result<Method> parseMethod(std::string_view name) {
  if (name == "ddp") return Method::kDdp;
  if (name == "diloco") return Method::kDiloco;
  if (name == "streaming") return Method::kStreaming;
  if (name == "noloco") return Method::kNoloco;
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown method '{}' (use ddp, diloco, streaming or noloco)", name));
}

Status validateDistributedConfig(const DistributedConfig& c) {
  LOCO_RETURN_IF_ERROR(validateTrainConfig(c.train));
  if (c.steps == 0) return Status(StatusCode::kInvalidArgument, "--steps must be at least 1");
  if (c.method != Method::kDdp) {
    if (c.inner_steps == 0)
      return Status(StatusCode::kInvalidArgument, "--inner-steps must be at least 1");
    if (c.inner_steps > c.steps) {
      return Status(
          StatusCode::kInvalidArgument,
          fmt::format("--inner-steps {} exceeds --steps {}: not even one round would finish",
                      c.inner_steps, c.steps));
    }
    LOCO_RETURN_IF_ERROR(validateOuter(c.outer));
  }
  if (c.overlap != Overlap::kNone && c.method != Method::kDiloco)
    return Status(StatusCode::kInvalidArgument, "--overlap is for --method diloco");
  if (c.method == Method::kStreaming) {
    if (c.fragments == 0 || c.inner_steps % c.fragments != 0) {
      return Status(
          StatusCode::kInvalidArgument,
          fmt::format("--fragments {} must divide --inner-steps {}", c.fragments, c.inner_steps));
    }
    if (c.fragments > c.train.model.layers) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("--fragments {} exceeds the model's {} blocks (--layers)",
                                c.fragments, c.train.model.layers));
    }
    if (c.overlap_steps > 5 || c.overlap_steps >= c.inner_steps / c.fragments) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("--overlap-steps {} must be in 0..5 and below H/P = {}",
                                c.overlap_steps, c.inner_steps / c.fragments));
    }
    if (!(c.merge_alpha >= 0 && c.merge_alpha <= 1))
      return Status(StatusCode::kInvalidArgument, "--merge-alpha must be in [0, 1]");
  }
  if (c.method == Method::kNoloco) LOCO_RETURN_IF_ERROR(validateNoloco(c.noloco));
  // The batch tests sample the last inner step's gradient of a whole round and the speed split
  // weights a whole-model Δ: neither is defined for fragments, gossip or an overlapped round yet.
  const bool plain_round =
      c.method == Method::kDdp || (c.method == Method::kDiloco && c.overlap == Overlap::kNone);
  if (c.batch.test != BatchTest::kNone && !plain_round) {
    return Status(StatusCode::kInvalidArgument,
                  "--batch-test is for --method ddp, or diloco with --overlap none");
  }
  if (c.allocation == Allocation::kSpeed && !plain_round) {
    return Status(StatusCode::kInvalidArgument,
                  "--allocation speed is for --method ddp, or diloco with --overlap none");
  }
  LOCO_RETURN_IF_ERROR(validateMultiInstanceConfig(c.multi));
  if (c.multi.instances > 1) {
    if (c.method != Method::kDiloco || c.overlap != Overlap::kNone) {
      return Status(StatusCode::kInvalidArgument,
                    "--instances above 1 is for --method diloco with --overlap none (each "
                    "instance is a whole-round DiLoCo trajectory)");
    }
    if (c.allocation == Allocation::kSpeed) {
      return Status(StatusCode::kInvalidArgument,
                    "--instances above 1 and --allocation speed cannot be combined yet: give "
                    "--allocation equal");
    }
    // Merged instances train the windows of both: the last one trains K·--batch per step.
    if (static_cast<std::uint64_t>(c.train.batch_size) * c.multi.instances > kMaxBatch) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("--instances {} x --batch {} is over {} windows per step, which "
                                "the merged instance would train",
                                c.multi.instances, c.train.batch_size, kMaxBatch));
    }
  }
  if (c.quant_block == 0 || c.quant_block > collectives::kMaxQuantBlock) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--quant-block {} is outside 1..{}", c.quant_block,
                              collectives::kMaxQuantBlock));
  }
  if (c.ddp_sync_every == 0)
    return Status(StatusCode::kInvalidArgument, "the DDP sync interval must be at least 1");
  if (c.eval_every == 0)
    return Status(StatusCode::kInvalidArgument, "--eval-every must be at least 1");
  if (c.resume && c.checkpoint_dir.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "--resume needs --checkpoint-dir (where the checkpoints are)");
  }
  LOCO_RETURN_IF_ERROR(validateBatchTestConfig(c.batch, c.train.batch_size));
  if (c.switch_mode != SwitchMode::kNone && c.batch.max_micro_batch != 0) {
    return Status(StatusCode::kInvalidArgument,
                  "--max-micro-batch sets the micro-batch by hand and --switch-mode measures it: "
                  "give one of them");
  }
  if (c.memory_budget_mib != 0 && c.switch_mode == SwitchMode::kNone) {
    return Status(StatusCode::kInvalidArgument,
                  "--memory-budget-mib is for --switch-mode threshold|accumulate|loader");
  }
  if (c.memory_budget_mib > (std::uint64_t{1} << 30)) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--memory-budget-mib {} is more than 1 PiB", c.memory_budget_mib));
  }
  if (c.train.inner.schedule.total_steps != c.steps) {
    return Status(StatusCode::kInvalidArgument, "the learning-rate schedule must span --steps");
  }
  return Status();
}

}  // namespace loco::training
