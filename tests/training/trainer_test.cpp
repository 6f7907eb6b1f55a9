// LocalTrainer: flat buffers, learning, determinism, checkpoints, and the throughput figure.

#include <gtest/gtest.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include <unistd.h>

#include "temp_dir.h"
#include "training/checkpoint.h"
#include "training/local_trainer.h"
#include "training/optimizers.h"
#include "training/train_bench.h"

namespace loco::training {
namespace {

using testing::sampleText;
using testing::TempDir;

// A model small enough that 50 steps take well under a second.
TrainConfig tinyConfig() {
  TrainConfig c;
  c.model = ModelConfig{.width = 32, .layers = 2, .heads = 2, .context = 16, .vocab = kVocabSize};
  c.batch_size = 8;
  c.seed = 42;
  c.inner.schedule =
      LrSchedule{.lr = 1e-2f, .min_lr_ratio = 0.1f, .warmup_steps = 5, .total_steps = 60};
  c.eval = EvalConfig{.batches = 4, .batch_size = 8};
  c.threads = 1;
  return c;
}

std::shared_ptr<const TextCorpus> tinyCorpus() {
  static std::shared_ptr<const TextCorpus> corpus = [] {
    auto r = TextCorpus::fromBytes(encodeText(sampleText(20000)), 0.05, 16, "sample text");
    EXPECT_TRUE(r.isOk()) << r.status().toString();
    return *r;
  }();
  return corpus;
}

std::unique_ptr<LocalTrainer> makeTrainer(const TrainConfig& c = tinyConfig()) {
  auto r = LocalTrainer::create(c, tinyCorpus());
  EXPECT_TRUE(r.isOk()) << r.status().toString();
  return r.isOk() ? std::move(r).value() : nullptr;
}

std::vector<float> runSteps(LocalTrainer& t, std::uint64_t from, std::uint64_t to) {
  std::vector<float> losses;
  for (std::uint64_t s = from; s < to; ++s) {
    auto loss = t.innerStep(s);
    EXPECT_TRUE(loss.isOk()) << loss.status().toString();
    losses.push_back(loss.isOk() ? *loss : NAN);
  }
  return losses;
}

bool bitEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Trainer, ParameterCountMatchesTheShapeFormulaAndLayoutCoversTheBuffer) {
  auto t = makeTrainer();
  ASSERT_TRUE(t);
  EXPECT_EQ(t->numParams(), paramCount(tinyConfig().model));
  std::size_t next = 0;
  for (const ParamInfo& p : t->paramLayout()) {
    EXPECT_EQ(p.offset, next) << p.name;
    next += p.count;
  }
  EXPECT_EQ(next, t->numParams());
  EXPECT_EQ(t->paramLayout().front().name, "wte.weight");
  EXPECT_EQ(t->paramLayout().back().name, "ln_f.bias");
  int max_layer = -1;
  for (const ParamInfo& p : t->paramLayout()) max_layer = std::max(max_layer, p.layer);
  EXPECT_EQ(max_layer, 1);
}

TEST(Trainer, RefusesBadConfigsClearly) {
  TrainConfig c = tinyConfig();
  c.model.width = 33;
  auto r = LocalTrainer::create(c, tinyCorpus());
  ASSERT_FALSE(r.isOk());
  EXPECT_NE(r.status().message().find("multiple of heads"), std::string::npos)
      << r.status().toString();
  c = tinyConfig();
  c.rank = 2;
  c.world = 2;
  EXPECT_EQ(LocalTrainer::create(c, tinyCorpus()).status().code(), StatusCode::kInvalidArgument);
  c = tinyConfig();
  c.data.path = "/nonexistent/loco/corpus";
  auto missing = LocalTrainer::create(c);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/loco/corpus"), std::string::npos);
}

TEST(Trainer, FlatBufferAliasesTheModelParameters) {
  auto t = makeTrainer();
  ASSERT_TRUE(t);
  auto before = t->validationLoss();
  ASSERT_TRUE(before.isOk()) << before.status().toString();
  // Scale the token embedding (the tied head too) through the raw buffer: the model must see it.
  const ParamInfo& wte = t->paramLayout().front();
  std::vector<float> saved(t->paramData(), t->paramData() + t->numParams());
  for (std::size_t i = 0; i < wte.count; ++i) t->paramData()[wte.offset + i] *= 50.0f;
  auto changed = t->validationLoss();
  ASSERT_TRUE(changed.isOk());
  EXPECT_GT(std::fabs(*changed - *before), 0.1f) << *before << " vs " << *changed;
  std::memcpy(t->paramData(), saved.data(), saved.size() * sizeof(float));
  auto restored = t->validationLoss();
  ASSERT_TRUE(restored.isOk());
  EXPECT_EQ(*restored, *before);
}

TEST(Trainer, GradientsLandInTheFlatGradBuffer) {
  auto t = makeTrainer();
  ASSERT_TRUE(t);
  std::span<const float> grads(t->gradData(), t->numParams());
  EXPECT_EQ(globalNorm(grads), 0.0);
  ASSERT_TRUE(t->computeBackward(0).isOk());
  const double norm = globalNorm(grads);
  EXPECT_GT(norm, 0.0);
  // A second backward overwrites (zeroes first), it does not accumulate.
  ASSERT_TRUE(t->computeBackward(0).isOk());
  EXPECT_EQ(globalNorm(grads), norm);
  // Every tensor got a gradient (the tied head feeds wte from both ends).
  for (const ParamInfo& p : t->paramLayout()) {
    EXPECT_GT(globalNorm(grads.subspan(p.offset, p.count)), 0.0) << p.name;
  }
}

TEST(Trainer, MicroBatchesAccumulateToTheWholeBatchGradient) {
  TrainConfig big = tinyConfig();
  big.batch_size = 8;
  TrainConfig small = tinyConfig();
  small.batch_size = 4;
  auto a = makeTrainer(big);
  auto b = makeTrainer(small);
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->computeBackward(3).isOk());
  ASSERT_TRUE(b->computeBackward(3, 0, 2).isOk());
  ASSERT_TRUE(b->computeBackward(3, 1, 2).isOk());
  std::span<const float> ga(a->gradData(), a->numParams());
  std::span<const float> gb(b->gradData(), b->numParams());
  std::vector<float> diff(ga.size());
  for (std::size_t i = 0; i < ga.size(); ++i) diff[i] = ga[i] - gb[i];
  EXPECT_LT(globalNorm(diff), 1e-5 * globalNorm(ga));
  EXPECT_EQ(b->computeBackward(3, 2, 2).status().code(), StatusCode::kInvalidArgument);
}

TEST(Trainer, FiftyStepsLowerTheLoss) {
  auto t = makeTrainer();
  ASSERT_TRUE(t);
  auto before = t->validationLoss();
  ASSERT_TRUE(before.isOk());
  EXPECT_NEAR(*before, std::log(256.0f), 0.2f) << "a fresh model guesses uniformly";
  auto losses = runSteps(*t, 0, 50);
  auto after = t->validationLoss();
  ASSERT_TRUE(after.isOk());
  EXPECT_LT(*after, *before - 2.0f) << "validation " << *before << " -> " << *after;
  EXPECT_LT(losses.back(), losses.front() - 2.0f);
}

TEST(Trainer, SameSeedGivesBitIdenticalLossesAndParameters) {
  auto a = makeTrainer();
  auto b = makeTrainer();
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(bitEqual(std::vector<float>(a->paramData(), a->paramData() + a->numParams()),
                       std::vector<float>(b->paramData(), b->paramData() + b->numParams())))
      << "every peer must start from the same θ";
  auto la = runSteps(*a, 0, 15);
  auto lb = runSteps(*b, 0, 15);
  EXPECT_TRUE(bitEqual(la, lb));
  EXPECT_TRUE(bitEqual(std::vector<float>(a->paramData(), a->paramData() + a->numParams()),
                       std::vector<float>(b->paramData(), b->paramData() + b->numParams())));
  TrainConfig other = tinyConfig();
  other.seed = 43;
  auto c = makeTrainer(other);
  ASSERT_TRUE(c);
  EXPECT_NE(runSteps(*c, 0, 3), std::vector<float>(la.begin(), la.begin() + 3));
}

TEST(Trainer, OtherRanksDrawOtherBatchesFromTheSameStart) {
  TrainConfig r1 = tinyConfig();
  r1.world = 2;
  r1.rank = 1;
  TrainConfig r0 = r1;
  r0.rank = 0;
  auto a = makeTrainer(r0);
  auto b = makeTrainer(r1);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(std::memcmp(a->paramData(), b->paramData(), a->numParams() * sizeof(float)), 0);
  EXPECT_NE(*a->innerStep(0), *b->innerStep(0));
}

TEST(Trainer, NonFiniteLossLeavesParametersUntouched) {
  auto t = makeTrainer();
  ASSERT_TRUE(t);
  t->paramData()[t->paramLayout().back().offset] =
      std::numeric_limits<float>::quiet_NaN();  // ln_f bias
  std::vector<float> before(t->paramData(), t->paramData() + t->numParams());
  auto r = t->innerStep(0);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(std::memcmp(before.data(), t->paramData(), before.size() * sizeof(float)), 0);
}

TEST(Checkpoint, ResumedRunContinuesWithTheSameLosses) {
  TempDir dir;
  const std::string path = dir.file("ckpt.bin");
  auto a = makeTrainer();
  ASSERT_TRUE(a);
  runSteps(*a, 0, 10);
  TrainingState state = a->exportState();
  EXPECT_EQ(state.step, 10u);
  // Outer fields travel too (DiLoCo's θ and momentum).
  OuterSgd outer(a->numParams(), OuterSgdOptions::diloco());
  state.outer_params = state.params;
  std::vector<float> delta(a->numParams(), 1e-3f);
  ASSERT_TRUE(outer.step(state.outer_params, delta).isOk());
  state.outer_momentum = outer.momentum();
  state.outer_step = 1;
  ASSERT_TRUE(saveCheckpoint(path, state).isOk());
  const auto uninterrupted = runSteps(*a, 10, 25);
  const auto val_a = a->validationLoss();

  auto loaded = loadCheckpoint(path, tinyConfig().model);
  ASSERT_TRUE(loaded.isOk()) << loaded.status().toString();
  EXPECT_EQ(loaded->step, 10u);
  EXPECT_EQ(loaded->outer_step, 1u);
  EXPECT_EQ(loaded->seed, 42u);
  EXPECT_TRUE(bitEqual(loaded->outer_params, state.outer_params));
  EXPECT_TRUE(bitEqual(loaded->outer_momentum, state.outer_momentum));
  auto b = makeTrainer();
  ASSERT_TRUE(b);
  ASSERT_TRUE(b->importState(*loaded).isOk());
  const auto resumed = runSteps(*b, loaded->step, 25);
  EXPECT_TRUE(bitEqual(uninterrupted, resumed));
  ASSERT_TRUE(val_a.isOk());
  EXPECT_EQ(*b->validationLoss(), *val_a);
  // No temporary file is left behind.
  std::size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    ++files;
    EXPECT_EQ(e.path().filename(), "ckpt.bin");
  }
  EXPECT_EQ(files, 1u);
}

TEST(Checkpoint, DifferentModelShapeIsRefusedNamingTheField) {
  TempDir dir;
  const std::string path = dir.file("ckpt.bin");
  auto a = makeTrainer();
  ASSERT_TRUE(a);
  ASSERT_TRUE(saveCheckpoint(path, a->exportState()).isOk());
  ModelConfig wider = tinyConfig().model;
  wider.width = 64;
  auto r = loadCheckpoint(path, wider);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("width 32 (found) vs 64 (expected)"), std::string::npos)
      << r.status().toString();
  // The trainer refuses a state of another shape too.
  TrainConfig wide_config = tinyConfig();
  wide_config.model.width = 64;
  auto wide = makeTrainer(wide_config);
  ASSERT_TRUE(wide);
  Status s = wide->importState(a->exportState());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("width"), std::string::npos) << s.toString();
}

TEST(Checkpoint, CorruptTruncatedAndForeignFilesAreDataLoss) {
  TempDir dir;
  const std::string path = dir.file("ckpt.bin");
  auto a = makeTrainer();
  ASSERT_TRUE(a);
  ASSERT_TRUE(saveCheckpoint(path, a->exportState()).isOk());
  const auto size = std::filesystem::file_size(path);

  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto expectLoss = [&](const std::string& content, std::string_view needle) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
    auto r = loadCheckpoint(path);
    ASSERT_FALSE(r.isOk());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().toString();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().toString();
    EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().toString();
  };
  std::string flipped = bytes;
  flipped[size / 2] ^= 0x10;
  expectLoss(flipped, "checksum");
  expectLoss(bytes.substr(0, size - 100), "checksum");
  expectLoss(bytes.substr(0, 20), "truncated");
  expectLoss(std::string(200, 'x'), "not a loco checkpoint");
  std::string future = bytes;
  future[8] = 9;
  expectLoss(future, "version 9");

  auto missing = loadCheckpoint(dir.file("absent.bin"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(saveCheckpoint(dir.file("no/such/dir/ckpt.bin"), a->exportState()).code(),
            StatusCode::kIoError);
}

// A full disk: the write fails with ENOSPC (the temporary file is a link to /dev/full, which
// fails every write that way, root or not) and the checkpoint that was there is left whole; the
// next write, with room again, succeeds.
TEST(Checkpoint, AFullDiskFailsTheWriteAndLeavesThePreviousCheckpointWhole) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  TempDir dir;
  const std::string path = dir.file("peer-0.ckpt");
  auto a = makeTrainer();
  ASSERT_TRUE(a);
  TrainingState first = a->exportState();
  first.step = 10;
  ASSERT_TRUE(saveCheckpoint(path, first).isOk());
  runSteps(*a, 10, 12);
  TrainingState second = a->exportState();
  second.step = 12;
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::filesystem::create_symlink("/dev/full", tmp);
  Status st = saveCheckpoint(path, second);
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st.toString();
  EXPECT_NE(st.message().find(std::strerror(ENOSPC)), std::string::npos) << st.toString();
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(tmp)))
      << "the failed write leaves nothing behind";
  auto kept = loadCheckpoint(path);
  ASSERT_TRUE(kept.isOk()) << kept.status().toString();
  EXPECT_EQ(kept->step, 10u);
  EXPECT_TRUE(bitEqual(kept->params, first.params)) << "the previous checkpoint, whole";
  ASSERT_TRUE(saveCheckpoint(path, second).isOk()) << "room again: the next write succeeds";
  EXPECT_EQ(loadCheckpoint(path)->step, 12u);
}

// The figure `loco bench train` reports: the 0.43M reference model, batch 16, one thread.
TEST(Bench, ReferenceModelThroughputWithOneThread) {
  TrainBenchOptions o;  // width 128, 2 layers, 4 heads, context 64, batch 16, 1 thread
  o.steps = 20;
  auto corpus =
      TextCorpus::fromBytes(encodeText(sampleText(200000)), 0.05, o.model.context, "sample text");
  ASSERT_TRUE(corpus.isOk());
  auto r = benchTrain(o, *corpus);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  std::printf("%s\n", r->toJson().c_str());
  EXPECT_EQ(r->params, 437760u);
  EXPECT_GT(r->tokens_per_s, 0.0);
  EXPECT_LT(r->last_loss, r->first_loss);
}

}  // namespace
}  // namespace loco::training
