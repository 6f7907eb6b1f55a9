#include "cli/training_flags.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "training/text_data.h"

namespace loco::cli {

std::vector<FlagSpec> trainingFlagSpecs() {
  return {
      {"data", "text file or directory to train on", std::string(training::kDefaultCorpusPath)},
      {"sharding", "iid (every peer samples the whole corpus) or contiguous (a slice per peer)",
       "iid"},
      {"method",
       "auto (Streaming DiLoCo with 2 fragments, 5 overlapped steps and int4 Δ, the fastest on a "
       "wide-area network at DiLoCo's loss; blocking diloco where streaming does not apply, said "
       "at start), ddp (gradients all-reduced every step), diloco, streaming (Streaming DiLoCo: "
       "one fragment per sync, overlapped) or noloco (pairwise gossip, no all-reduce)",
       "auto"},
      {"overlap",
       "diloco: none (the all-reduce blocks), eager (it runs while the next round trains; "
       "this peer's fresh Δ stands in for its share) or naive (WARNING: applies the average one "
       "round late, which hurts the loss badly; for comparison only)",
       "none"},
      {"fragments", "streaming: P fragments, strided over the blocks (P must divide H)", "2"},
      {"overlap-steps",
       "streaming: τ inner steps each fragment's all-reduce overlaps (0..5; default 5, or H/P - 1 "
       "where that is less)",
       ""},
      {"merge-alpha", "streaming: local fragment ← α·local + (1−α)·global", "0.5"},
      {"noloco-alpha", "noloco: momentum of the outer update δ", "0.5"},
      {"noloco-beta", "noloco: weight of the group's mean Δ", "0.7"},
      {"noloco-gamma", "noloco: pull toward the group's mean φ", "0.7"},
      {"inner-steps", "DiLoCo: inner steps per round (H)", "30"},
      {"steps", "inner steps per peer for the whole run", "600"},
      {"wire",
       "how Δ (DDP: gradients) travel: raw, fp16, bf16, int8 or int4 (default: int4 under --method "
       "auto when it picks streaming, else raw)",
       ""},
      {"quant-block",
       "int8/int4: values per 2-byte scale (1024: 3.99x / 7.96x fewer bytes than fp32; 16: more "
       "exact)",
       "1024"},
      {"compress",
       "zstd over Δ's encoded pieces (fp16, bf16, int8, int4): auto (on wide-area links, round "
       "trip >= 2 ms, measured below 1 Gbit/s), zstd or off",
       "auto"},
      {"outer-lr",
       "DiLoCo outer learning rate (FedAvg: 1); default 0.7, 0.5 with --overlap eager (its "
       "stand-in for the late average overshoots at 0.7)",
       ""},
      {"outer-momentum", "DiLoCo outer Nesterov momentum (FedAvg: 0)", "0.9"},
      {"width", "model width", "128"},
      {"layers", "transformer blocks", "2"},
      {"heads", "attention heads", "4"},
      {"context", "context length in bytes", "64"},
      {"batch", "sequences per inner step", "16"},
      {"lr", "inner AdamW peak learning rate", "0.003"},
      {"warmup", "inner warm-up steps (default: a third of --steps, at most 2000)", ""},
      {"seed", "model initialisation and sampling seed", "1"},
      {"threads", "LibTorch threads per peer", "1"},
      {"eval-every",
       "rounds between validation losses (default 1; DDP: 10 steps; streaming: P fragment syncs, "
       "once per H inner steps like DiLoCo)",
       ""},
      {"checkpoint-dir", "write DIR/peer-<rank>.ckpt after every round", ""},
      {"resume", "start from the checkpoints in --checkpoint-dir", "", true},
      {"batch-test",
       "adaptive batch: none, norm (grow the batch while the gradient noise exceeds --batch-eta "
       "of its norm) or inner-product",
       "none"},
      {"batch-eta", "norm test tolerance (> 0)", "0.8"},
      {"batch-theta", "inner-product test tolerance (> 0)", "0.9"},
      {"batch-nu", "inner-product test's orthogonality tolerance (> 0)", "5"},
      {"max-batch", "cap on the adaptive per-peer batch (default: max(--batch, 1024))", ""},
      {"allocation",
       "speed (windows per step in proportion to each peer's tokens/s; not bit-reproducible) or "
       "equal",
       "equal"},
      {"max-micro-batch",
       "windows per backward pass; a larger batch is accumulated over several (0: never split)",
       "0"},
      {"lr-schedule",
       "under --batch-test: the learning-rate schedule counts samples per peer (warm-up and decay "
       "spent after warmup·--batch and steps·--batch samples) or steps",
       "samples"},
      {"switch-mode",
       "none (--max-micro-batch as given), threshold (accumulate micro-batches of the measured "
       "b_max once the batch exceeds 2·b_max), accumulate (as soon as it exceeds b_max) or loader "
       "(one pass while it fits the memory budget); default: threshold with --memory-budget-mib, "
       "else none",
       ""},
      {"memory-budget-mib",
       "switch mode: this peer's memory (peak resident set) for training; bounds the measured "
       "micro-batch",
       ""},
      {"instances",
       "multi-instance training: K model instances per peer (1..8), each its own DiLoCo "
       "trajectory on its own data stream, merged pairwise every --merge-every rounds until one "
       "remains (--method diloco)",
       "1"},
      {"merge-every", "multi-instance: rounds between two merges", "5"},
      {"merge-policy",
       "multi-instance: which instances merge, by their training loss in the round: "
       "worst-with-worst or best-with-worst; weighted by each one's batch demand",
       "worst-with-worst"},
  };
}

std::vector<FlagSpec> trainingPeerFlagSpecs() {
  auto specs = trainingFlagSpecs();
  specs.push_back(
      {"rank",
       "this peer's data rank (its sampling stream and, with contiguous sharding, its slice); "
       "default: a stream of its own from its peer id, and its position among the members",
       "0"});
  specs.push_back({"world-hint", "number of data shards for contiguous sharding", "1"});
  specs.push_back(
      {"wait-for", "before the first round, wait until this many peers are members", "1"});
  specs.push_back({"metrics", "append one JSON line per round to this file", ""});
  specs.push_back({"measure-topology",
                   "measure links and let the coordinator reorder the ring (on|off)", "on"});
  specs.push_back({"inject-nan-at-round",
                   "fault injection: a NaN in this peer's contribution at that outer step", "-1"});
  return specs;
}

namespace {

Result<double> getDouble(const Flags& flags, const std::string& name, double min, double max) {
  const std::string v = flags.get(name);
  char* end = nullptr;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end == nullptr || *end != '\0' || !std::isfinite(d) || d < min || d > max) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--{} ({}) must be a number in [{}, {}], got '{}'", name,
                              envName(name), min, max, v));
  }
  return d;
}

// --batch-test and its tolerances; a tolerance given for a test that does not use it is an error
// (a typo would otherwise go unnoticed).
Status batchTestFromFlags(const Flags& flags, training::DistributedConfig& c) {
  training::BatchTestConfig& b = c.batch;
  auto test = training::parseBatchTest(flags.get("batch-test"));
  if (!test) return test.status().withContext("--batch-test");
  b.test = *test;
  auto eta = getDouble(flags, "batch-eta", 0, 1e6);
  auto theta = getDouble(flags, "batch-theta", 0, 1e6);
  auto nu = getDouble(flags, "batch-nu", 0, 1e6);
  for (const auto* r : {&eta, &theta, &nu}) {
    if (!*r) return r->status();
  }
  b.eta = *eta;
  b.theta = *theta;
  b.nu = *nu;
  const bool norm = b.test == training::BatchTest::kNorm;
  const bool ip = b.test == training::BatchTest::kInnerProduct;
  if (flags.isSet("batch-eta") && !norm)
    return Status(StatusCode::kInvalidArgument, "--batch-eta is for --batch-test norm");
  if ((flags.isSet("batch-theta") || flags.isSet("batch-nu")) && !ip) {
    return Status(StatusCode::kInvalidArgument,
                  "--batch-theta and --batch-nu are for --batch-test inner-product");
  }
  if (flags.isSet("max-batch") && b.test == training::BatchTest::kNone)
    return Status(StatusCode::kInvalidArgument,
                  "--max-batch is for --batch-test norm|inner-product");
  if (flags.get("max-batch").empty()) {
    b.max_batch = std::max<std::uint32_t>(c.train.batch_size, 1024);
  } else {
    auto v = flags.getInt("max-batch", 1, 65536);
    if (!v) return v.status();
    b.max_batch = static_cast<std::uint32_t>(*v);
  }
  auto allocation = training::parseAllocation(flags.get("allocation"));
  if (!allocation) return allocation.status().withContext("--allocation");
  c.allocation = *allocation;
  auto micro = flags.getInt("max-micro-batch", 0, 65536);
  if (!micro) return micro.status();
  b.max_micro_batch = static_cast<std::uint32_t>(*micro);
  if (flags.isSet("memory-budget-mib")) {
    auto mib = flags.getInt("memory-budget-mib", 1, std::int64_t{1} << 30);
    if (!mib) return mib.status();
    c.memory_budget_mib = static_cast<std::uint64_t>(*mib);
  }
  const std::string schedule = flags.get("lr-schedule");
  if (schedule != "samples" && schedule != "steps") {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--lr-schedule takes samples or steps, got '{}'", schedule));
  }
  if (flags.isSet("lr-schedule") && b.test == training::BatchTest::kNone) {
    return Status(StatusCode::kInvalidArgument,
                  "--lr-schedule is for --batch-test norm|inner-product (a fixed batch counts "
                  "both alike)");
  }
  c.schedule_in_samples = schedule == "samples";
  if (flags.get("switch-mode").empty()) {
    c.switch_mode =
        c.memory_budget_mib > 0 ? training::SwitchMode::kThreshold : training::SwitchMode::kNone;
  } else {
    auto mode = training::parseSwitchMode(flags.get("switch-mode"));
    if (!mode) return mode.status().withContext("--switch-mode");
    c.switch_mode = *mode;
  }
  return Status();
}

// --instances and its merge schedule; a merge setting without instances to merge is an error.
Status multiInstanceFromFlags(const Flags& flags, training::DistributedConfig& c) {
  auto instances = flags.getInt("instances", 1, training::kMaxInstances);
  if (!instances) return instances.status();
  auto every = flags.getInt("merge-every", 1, 1000000);
  if (!every) return every.status();
  auto policy = training::parseMergePolicy(flags.get("merge-policy"));
  if (!policy) return policy.status();
  c.multi.instances = static_cast<std::uint32_t>(*instances);
  c.multi.merge_every = static_cast<std::uint32_t>(*every);
  c.multi.policy = *policy;
  if (c.multi.instances == 1 && (flags.isSet("merge-every") || flags.isSet("merge-policy"))) {
    return Status(StatusCode::kInvalidArgument,
                  "--merge-every and --merge-policy are for --instances 2 or more");
  }
  return Status();
}

// --method auto is the configuration measured fastest in the wide-area lab at blocking DiLoCo's
// loss (README, "Which method by default"): Streaming DiLoCo, 2 fragments (the --fragments
// default), 5 overlapped steps, int4 Δ.
constexpr std::int64_t kAutoOverlapSteps = 5;
constexpr collectives::Wire kAutoWire = collectives::Wire::kInt4;

// Why --method auto cannot run Streaming DiLoCo with these flags (it runs blocking DiLoCo then),
// or "" when it can. Every peer decides alike: the flags and model shape are the group's.
std::string autoStreamingBlocker(const Flags& flags, std::int64_t inner, std::int64_t layers,
                                 std::int64_t fragments) {
  if (flags.isSet("overlap")) return "--overlap is a mode of blocking DiLoCo";
  if (auto k = flags.getInt("instances", 1, training::kMaxInstances); k && *k > 1)
    return "each of several instances trains whole rounds";
  if (flags.get("batch-test") != "none") return "the batch test samples whole rounds";
  if (flags.get("allocation") == "speed") return "--allocation speed weights whole-round Δ";
  if (layers < fragments)
    return fmt::format("the model has {} block(s) (--layers), fewer than {} fragments", layers,
                       fragments);
  if (inner % fragments != 0)
    return fmt::format("--inner-steps {} is not a multiple of {} fragments", inner, fragments);
  if (inner / fragments < 2)
    return fmt::format("--inner-steps {} leaves no step to overlap a fragment's sync with", inner);
  return "";
}

std::string autoBlocker(const Flags& flags, const training::DistributedConfig& c) {
  return autoStreamingBlocker(flags, c.inner_steps, c.train.model.layers, c.fragments);
}

}  // namespace

std::string methodDescription(const Flags& flags, const training::DistributedConfig& c) {
  const std::string name(training::methodName(c.method));
  if (flags.get("method") != "auto") return name;
  if (c.method == training::Method::kStreaming) {
    return fmt::format("{} (--method auto: {} fragments, {} overlapped steps, {} Δ)", name,
                       c.fragments, c.overlap_steps, collectives::wireName(c.wire));
  }
  return fmt::format("{} (--method auto, not streaming: {})", name, autoBlocker(flags, c));
}

Result<training::DistributedConfig> trainingConfigFromFlags(const Flags& flags) {
  training::DistributedConfig c;
  auto overlap = training::parseOverlap(flags.get("overlap"));
  if (!overlap) return overlap.status().withContext("--overlap");
  c.overlap = *overlap;
  auto compress = collectives::parseCompress(flags.get("compress"));
  if (!compress) return compress.status().withContext("--compress");
  c.compress = *compress;
  auto sharding = training::parseSharding(flags.get("sharding"));
  if (!sharding) return sharding.status().withContext("--sharding");
  c.train.sharding = *sharding;
  struct IntFlag {
    const char* name;
    std::int64_t min, max;
    std::int64_t* out;
  };
  std::int64_t inner = 0, steps = 0, width = 0, layers = 0, heads = 0, context = 0, batch = 0,
               warmup = 0, seed = 0, threads = 0, quant_block = 0, fragments = 0, overlap_steps = 0;
  for (const IntFlag& f : std::vector<IntFlag>{
           {"inner-steps", 1, 1000000, &inner},
           {"steps", 1, 100000000, &steps},
           {"width", 1, 65536, &width},
           {"layers", 1, 1024, &layers},
           {"heads", 1, 1024, &heads},
           {"context", 2, 65536, &context},
           {"batch", 1, 65536, &batch},
           {"seed", 0, (std::int64_t{1} << 62), &seed},
           {"threads", 1, 256, &threads},
           {"fragments", 1, 1024, &fragments},
           {"quant-block", 1, static_cast<std::int64_t>(collectives::kMaxQuantBlock),
            &quant_block}}) {
    auto v = flags.getInt(f.name, f.min, f.max);
    if (!v) return v.status();
    *f.out = *v;
  }
  const bool auto_method = flags.get("method") == "auto";
  bool auto_streaming = false;
  if (auto_method) {
    auto_streaming = autoStreamingBlocker(flags, inner, layers, fragments).empty();
    c.method = auto_streaming ? training::Method::kStreaming : training::Method::kDiloco;
  } else {
    auto method = training::parseMethod(flags.get("method"));
    if (!method) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("--method: unknown method '{}' (use auto, ddp, diloco, streaming "
                                "or noloco)",
                                flags.get("method")));
    }
    c.method = *method;
  }
  if (flags.get("wire").empty()) {
    c.wire = auto_streaming ? kAutoWire : collectives::Wire::kRaw;
  } else {
    auto wire = collectives::parseWire(flags.get("wire"));
    if (!wire) return wire.status().withContext("--wire");
    c.wire = *wire;
  }
  // τ: as many overlapped steps as measured best, but below a fragment's H/P steps.
  if (flags.get("overlap-steps").empty()) {
    overlap_steps = std::clamp<std::int64_t>(inner / fragments - 1, 0, kAutoOverlapSteps);
  } else {
    auto v = flags.getInt("overlap-steps", 0, 5);
    if (!v) return v.status();
    overlap_steps = *v;
  }
  // A long warm-up keeps DiLoCo's outer momentum from amplifying the large early Δ (with 20 steps
  // of 600, H=10 stalled near 2.8 nats; with 200 it reaches 2.19, see the README). The cap keeps
  // long runs from spending most of their first thousands of steps warming up.
  if (flags.get("warmup").empty()) {
    warmup = std::min<std::int64_t>(steps / 3, 2000);
  } else {
    auto v = flags.getInt("warmup", 0, 100000000);
    if (!v) return v.status();
    warmup = *v;
  }
  // Eager overlap starts each round from a consensus one round stale plus this peer's own fresh
  // Δ standing in for the missing average; a full outer step on that stand-in overshoots (600
  // steps, 4 peers: +6.7 % val loss at 0.7, +3.5 % at 0.5 against blocking DiLoCo at 0.7).
  auto outer_lr = flags.get("outer-lr").empty()
                      ? Result<double>(c.overlap == training::Overlap::kEager ? 0.5 : 0.7)
                      : getDouble(flags, "outer-lr", 1e-6, 100);
  auto outer_momentum = getDouble(flags, "outer-momentum", 0, 0.999);
  auto lr = getDouble(flags, "lr", 1e-8, 10);
  auto merge_alpha = getDouble(flags, "merge-alpha", 0, 1);
  auto noloco_alpha = getDouble(flags, "noloco-alpha", 0, 2);
  auto noloco_beta = getDouble(flags, "noloco-beta", 0, 2);
  auto noloco_gamma = getDouble(flags, "noloco-gamma", 0, 2);
  for (const auto* r : {&outer_lr, &outer_momentum, &lr, &merge_alpha, &noloco_alpha, &noloco_beta,
                        &noloco_gamma}) {
    if (!*r) return r->status();
  }
  if (flags.isSet("quant-block") && c.wire != collectives::Wire::kInt8 &&
      c.wire != collectives::Wire::kInt4) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--quant-block is for --wire int8 or int4, not {}",
                              collectives::wireName(c.wire)));
  }
  c.quant_block = static_cast<std::uint32_t>(quant_block);
  c.inner_steps = static_cast<std::uint32_t>(inner);
  c.steps = static_cast<std::uint64_t>(steps);
  c.outer.lr = static_cast<float>(*outer_lr);
  c.outer.momentum = static_cast<float>(*outer_momentum);
  c.outer.nesterov = *outer_momentum > 0;
  c.train.model.width = static_cast<std::uint32_t>(width);
  c.train.model.layers = static_cast<std::uint32_t>(layers);
  c.train.model.heads = static_cast<std::uint32_t>(heads);
  c.train.model.context = static_cast<std::uint32_t>(context);
  c.train.batch_size = static_cast<std::uint32_t>(batch);
  c.train.seed = static_cast<std::uint64_t>(seed);
  c.train.threads = static_cast<int>(threads);
  c.train.data.path = flags.get("data");
  c.train.inner.schedule.lr = static_cast<float>(*lr);
  c.train.inner.schedule.warmup_steps = static_cast<std::uint64_t>(warmup);
  c.train.inner.schedule.total_steps = c.steps;
  c.fragments = static_cast<std::uint32_t>(fragments);
  c.overlap_steps = static_cast<std::uint32_t>(overlap_steps);
  c.merge_alpha = static_cast<float>(*merge_alpha);
  c.noloco.alpha = static_cast<float>(*noloco_alpha);
  c.noloco.beta = static_cast<float>(*noloco_beta);
  c.noloco.gamma = static_cast<float>(*noloco_gamma);
  for (const char* f : {"fragments", "overlap-steps", "merge-alpha"}) {
    if (flags.isSet(f) && c.method != training::Method::kStreaming) {
      return Status(
          StatusCode::kInvalidArgument,
          fmt::format(
              "--{} is for --method streaming{}", f,
              auto_method ? "; --method auto runs diloco here: " + autoBlocker(flags, c) : ""));
    }
  }
  for (const char* f : {"noloco-alpha", "noloco-beta", "noloco-gamma"}) {
    if (flags.isSet(f) && c.method != training::Method::kNoloco)
      return Status(StatusCode::kInvalidArgument, fmt::format("--{} is for --method noloco", f));
  }
  c.checkpoint_dir = flags.get("checkpoint-dir");
  c.resume = flags.getBool("resume");
  if (c.method == training::Method::kDdp && flags.isSet("inner-steps")) {
    return Status(StatusCode::kInvalidArgument,
                  "--inner-steps is for --method diloco; DDP synchronizes every step");
  }
  if (c.method == training::Method::kDdp &&
      (flags.isSet("outer-lr") || flags.isSet("outer-momentum"))) {
    return Status(StatusCode::kInvalidArgument,
                  "--outer-lr and --outer-momentum are for --method diloco");
  }
  // Validation costs the evaluating peer (and so the whole group, which waits for it at the next
  // sync) a forward pass over the held-out text. DDP rounds are single steps: evaluating after
  // each would cost more than the training. A streaming sync is 1/P of a round: once per H
  // inner steps, as for DiLoCo (after every sync it took about a tenth of the evaluating peer's
  // time: utilization 0.87 against 0.96 for the others, 4 peers on loopback).
  if (flags.get("eval-every").empty()) {
    c.eval_every = c.method == training::Method::kDdp         ? 10
                   : c.method == training::Method::kStreaming ? c.fragments
                                                              : 1;
  } else {
    auto v = flags.getInt("eval-every", 1, 1000000);
    if (!v) return v.status();
    c.eval_every = static_cast<std::uint32_t>(*v);
  }
  if (c.train.inner.schedule.warmup_steps >= c.steps) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--warmup {} must be shorter than --steps {}",
                              c.train.inner.schedule.warmup_steps, c.steps));
  }
  LOCO_RETURN_IF_ERROR(batchTestFromFlags(flags, c));
  LOCO_RETURN_IF_ERROR(multiInstanceFromFlags(flags, c));
  LOCO_RETURN_IF_ERROR(training::validateDistributedConfig(c));
  return c;
}

std::vector<std::string> forwardedTrainingFlags(const Flags& flags) {
  std::vector<std::string> out;
  for (const FlagSpec& spec : trainingFlagSpecs()) {
    if (!flags.isSet(spec.name)) continue;
    out.push_back("--" + spec.name);
    if (!spec.is_bool) out.push_back(flags.get(spec.name));
  }
  return out;
}

}  // namespace loco::cli
