#include "training/local_trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>

#include "p2p/base/log.h"
#include "training/gpt.h"

namespace loco::training {
namespace {

constexpr std::uint32_t kMaxBatch = 1u << 16;
constexpr int kMaxThreads = 256;

// The process-wide thread count setThreads chose. OpenMP's count is per OS thread, so each
// thread that computes applies it once (ensureThreads) — a trainer driven from a thread other
// than the one that called setThreads would otherwise run with OpenMP's default.
std::atomic<int> g_threads{1};
thread_local int t_applied_threads = 0;

void ensureThreads() {
  const int want = g_threads.load(std::memory_order_relaxed);
  if (t_applied_threads != want) {
    at::set_num_threads(want);
    t_applied_threads = want;
  }
}

// LibTorch throws; loco does not let exceptions cross module boundaries (ARCHITECTURE.md §2).
template <typename F>
auto guarded(std::string_view what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return Status(StatusCode::kInternal,
                  fmt::format("{}: LibTorch: {}", what, e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, fmt::format("{}: {}", what, e.what()));
  }
}

Status bad(std::string msg) {
  return Status(StatusCode::kInvalidArgument, std::move(msg));
}

}  // namespace

class LocalTrainer::Impl {
 public:
  TrainConfig config;
  std::shared_ptr<const TextCorpus> corpus;
  Gpt model{nullptr};
  FlatBuffers flat;
  std::unique_ptr<AdamW> adam;
  ShardSpec shard;
  std::vector<std::size_t> val_windows;
  std::uint64_t next_step = 0;

  ShardSpec shardSpec() const {
    ShardSpec s;
    s.seed = config.seed;
    s.rank = config.rank;
    s.world = config.world;
    s.sharding = config.sharding;
    s.stream = config.stream;
    return s;
  }

  // inputs/targets [rows, context] from windows of context + 1 bytes at `offsets` in `split`.
  std::pair<torch::Tensor, torch::Tensor> batch(std::span<const std::uint8_t> split,
                                                std::span<const std::size_t> offsets) const {
    const std::int64_t rows = static_cast<std::int64_t>(offsets.size());
    const std::int64_t t = config.model.context;
    auto inputs = torch::empty({rows, t}, torch::kLong);
    auto targets = torch::empty({rows, t}, torch::kLong);
    std::int64_t* in = inputs.data_ptr<std::int64_t>();
    std::int64_t* tg = targets.data_ptr<std::int64_t>();
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::uint8_t* w = split.data() + offsets[static_cast<std::size_t>(r)];
      for (std::int64_t i = 0; i < t; ++i) {
        in[r * t + i] = w[i];
        tg[r * t + i] = w[i + 1];
      }
    }
    return {inputs, targets};
  }

  torch::Tensor loss(const torch::Tensor& inputs, const torch::Tensor& targets) {
    auto logits = model->forward(inputs);
    return torch::nn::functional::cross_entropy(
        logits.view({-1, static_cast<std::int64_t>(config.model.vocab)}), targets.view({-1}));
  }
};

LocalTrainer::LocalTrainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LocalTrainer::~LocalTrainer() = default;

Result<std::unique_ptr<LocalTrainer>> LocalTrainer::create(const TrainConfig& config) {
  LOCO_RETURN_IF_ERROR(validateTrainConfig(config));
  auto corpus = TextCorpus::load(config.data, config.model.context);
  if (!corpus.isOk()) return corpus.status();
  return create(config, std::move(corpus).value());
}

Result<std::unique_ptr<LocalTrainer>> LocalTrainer::create(
    const TrainConfig& config, std::shared_ptr<const TextCorpus> corpus) {
  LOCO_RETURN_IF_ERROR(validateTrainConfig(config));
  if (!corpus) return bad("trainer: no corpus");
  const std::size_t window = std::size_t{config.model.context} + 1;
  if (corpus->validation().size() < window) {
    return bad(fmt::format(
        "trainer: the validation split of {} has {} bytes, fewer than one window of {} for "
        "context {}",
        corpus->origin(), corpus->validation().size(), window, config.model.context));
  }
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->corpus = std::move(corpus);
  LOCO_RETURN_IF_ERROR(
      checkShard(impl->shardSpec(), impl->corpus->train().size(), config.model.context));
  LOCO_RETURN_IF_ERROR(setThreads(config.threads));
  return guarded("trainer: building the model", [&]() -> Result<std::unique_ptr<LocalTrainer>> {
    ensureThreads();
    impl->model = Gpt(config.model);
    impl->model->initialize(config.seed);
    impl->flat = flattenParameters(*impl->model);
    const std::size_t n = static_cast<std::size_t>(impl->flat.params.numel());
    if (n != paramCount(config.model)) {
      return Status(StatusCode::kInternal,
                    fmt::format("trainer: the model has {} parameters, paramCount says {}", n,
                                paramCount(config.model)));
    }
    std::vector<std::uint8_t> mask(n, 0);
    for (const ParamInfo& p : impl->flat.layout) {
      if (p.decayed) std::fill(mask.begin() + p.offset, mask.begin() + p.offset + p.count, 1);
    }
    impl->adam = std::make_unique<AdamW>(std::move(mask), config.inner.adam);
    impl->val_windows = evenWindows(impl->corpus->validation().size(), config.model.context,
                                    std::size_t{config.eval.batches} * config.eval.batch_size);
    LOG_INFO(kLogTrain,
             "model {} params={} corpus={} bytes ({} train, {} validation) rank={}/{} sharding={}",
             describe(config.model), n, impl->corpus->totalBytes(), impl->corpus->train().size(),
             impl->corpus->validation().size(), config.rank, config.world,
             shardingName(config.sharding));
    return std::unique_ptr<LocalTrainer>(new LocalTrainer(std::move(impl)));
  });
}

Result<float> LocalTrainer::innerStep(std::uint64_t step) {
  Result<float> loss = computeBackward(step);
  if (!loss.isOk()) return loss;
  if (!std::isfinite(*loss)) {
    return Status(
        StatusCode::kDataLoss,
        fmt::format("inner step {}: training loss is {}; parameters left unchanged", step, *loss));
  }
  Result<double> norm = applyGrads(step);
  if (!norm.isOk()) return norm.status();
  return loss;
}

Result<float> LocalTrainer::computeBackward(std::uint64_t step, std::uint32_t micro,
                                            std::uint32_t micro_count) {
  if (micro_count == 0 || micro >= micro_count) {
    return bad(fmt::format("computeBackward: micro-batch {} of {}", micro, micro_count));
  }
  Impl& m = *impl_;
  return guarded(fmt::format("inner step {}", step), [&]() -> Result<float> {
    ensureThreads();
    const std::size_t rows = m.config.batch_size;
    std::vector<std::size_t> windows(rows * (micro + 1));
    sampleWindows(m.shardSpec(), m.corpus->train().size(), m.config.model.context, step, windows);
    auto [inputs, targets] = m.batch(
        m.corpus->train(), std::span<const std::size_t>(windows).subspan(rows * micro, rows));
    if (micro == 0) m.flat.grads.zero_();
    auto loss = m.loss(inputs, targets);
    (micro_count > 1 ? loss / static_cast<double>(micro_count) : loss).backward();
    if (std::size_t fixed = reattachGradients(m.flat); fixed > 0) {
      LOG_WARN(kLogTrain,
               "step {}: {} gradients were not accumulated in the flat buffer; copied back", step,
               fixed);
    }
    return loss.item<float>();
  });
}

Result<double> LocalTrainer::applyGrads(std::uint64_t step) {
  Impl& m = *impl_;
  const std::size_t n = numParams();
  std::span<float> grads(gradData(), n);
  const double norm = clipGlobalNorm(grads, m.config.inner.grad_clip);
  if (!std::isfinite(norm)) {
    return Status(
        StatusCode::kDataLoss,
        fmt::format("inner step {}: gradient norm is {}; parameters left unchanged", step, norm));
  }
  m.adam->step(std::span<float>(paramData(), n), grads, learningRate(step));
  m.next_step = step + 1;
  return norm;
}

Result<float> LocalTrainer::validationLoss() {
  Impl& m = *impl_;
  return guarded("validation loss", [&]() -> Result<float> {
    ensureThreads();
    torch::NoGradGuard no_grad;
    const std::size_t rows = m.config.eval.batch_size;
    double sum = 0;
    for (std::uint32_t b = 0; b < m.config.eval.batches; ++b) {
      auto [inputs, targets] =
          m.batch(m.corpus->validation(),
                  std::span<const std::size_t>(m.val_windows).subspan(b * rows, rows));
      sum += m.loss(inputs, targets).item<double>();
    }
    return static_cast<float>(sum / m.config.eval.batches);
  });
}

float* LocalTrainer::paramData() {
  return impl_->flat.params.data_ptr<float>();
}
const float* LocalTrainer::paramData() const {
  return impl_->flat.params.data_ptr<float>();
}
float* LocalTrainer::gradData() {
  return impl_->flat.grads.data_ptr<float>();
}
std::size_t LocalTrainer::numParams() const {
  return static_cast<std::size_t>(impl_->flat.params.numel());
}
const std::vector<ParamInfo>& LocalTrainer::paramLayout() const {
  return impl_->flat.layout;
}
const TrainConfig& LocalTrainer::config() const {
  return impl_->config;
}
const TextCorpus& LocalTrainer::corpus() const {
  return *impl_->corpus;
}

Status LocalTrainer::setBatchSize(std::uint32_t batch_size) {
  if (batch_size == 0 || batch_size > kMaxBatch) {
    return bad(fmt::format("batch size {} is out of range 1..{}", batch_size, kMaxBatch));
  }
  impl_->config.batch_size = batch_size;
  return Status::ok();
}

Status LocalTrainer::setShard(std::uint32_t rank, std::uint32_t world,
                              std::optional<std::uint64_t> stream) {
  ShardSpec spec = impl_->shardSpec();
  spec.rank = rank;
  spec.world = world;
  spec.stream = stream;
  LOCO_RETURN_IF_ERROR(
      checkShard(spec, impl_->corpus->train().size(), impl_->config.model.context));
  impl_->config.rank = rank;
  impl_->config.world = world;
  impl_->config.stream = stream;
  return Status::ok();
}

TrainingState LocalTrainer::exportState() const {
  const Impl& m = *impl_;
  TrainingState s;
  s.model = m.config.model;
  s.seed = m.config.seed;
  s.step = m.next_step;
  const float* p = paramData();
  s.params.assign(p, p + numParams());
  const AdamWState& a = m.adam->state();
  s.adam_steps = a.steps;
  s.adam_m = a.m;
  s.adam_v = a.v;
  return s;
}

Status LocalTrainer::importState(const TrainingState& s) {
  Impl& m = *impl_;
  LOCO_RETURN_IF_ERROR(checkSameShape(m.config.model, s.model, "training state"));
  const std::size_t n = numParams();
  if (s.params.size() != n) {
    return bad(
        fmt::format("training state holds {} parameters, the model has {}", s.params.size(), n));
  }
  if (!s.adam_m.empty() || !s.adam_v.empty()) {
    LOCO_RETURN_IF_ERROR(m.adam->restore(AdamWState{s.adam_steps, s.adam_m, s.adam_v}));
  } else {
    LOCO_RETURN_IF_ERROR(
        m.adam->restore(AdamWState{0, std::vector<float>(n, 0.0f), std::vector<float>(n, 0.0f)}));
  }
  if (s.seed != m.config.seed) {
    LOG_WARN(kLogTrain,
             "resuming a run of seed {} with seed {}: batches will differ from the original run",
             s.seed, m.config.seed);
  }
  std::memcpy(paramData(), s.params.data(), n * sizeof(float));
  m.next_step = s.step;
  return Status::ok();
}

Status LocalTrainer::setThreads(int n) {
  if (n < 1 || n > kMaxThreads)
    return bad(fmt::format("threads {} is out of range 1..{}", n, kMaxThreads));
  static std::once_flag interop_once;
  std::call_once(interop_once, [] {
    // Throws when the pool already started (someone ran an inter-op task first): then it keeps
    // its size, which only matters for torch::jit, which loco does not use.
    try {
      at::set_num_interop_threads(1);
    } catch (const std::exception& e) {
      LOG_DEBUG(kLogTrain, "inter-op threads left as they were: {}", e.what());
    }
  });
  g_threads.store(n, std::memory_order_relaxed);
  t_applied_threads = 0;
  return guarded("setting torch threads", [&]() -> Status {
    ensureThreads();
    return Status::ok();
  });
}

}  // namespace loco::training
