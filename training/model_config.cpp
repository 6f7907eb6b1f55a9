#include "training/model_config.h"

#include <fmt/format.h>

namespace loco::training {
namespace {

// Bounds keep paramCount far from overflow and reject typos (width 1280000) before any
// allocation; the largest model anyone trains on CPU with loco is orders of magnitude smaller.
constexpr std::uint32_t kMaxWidth = 1u << 16;
constexpr std::uint32_t kMaxLayers = 1024;
constexpr std::uint32_t kMaxHeads = 1024;
constexpr std::uint32_t kMaxContext = 1u << 16;
constexpr std::uint64_t kMaxParams = 1ull << 34;  // 64 GiB of fp32

Status bad(std::string msg) {
  return Status(StatusCode::kInvalidArgument, "model: " + std::move(msg));
}

}  // namespace

Status validateModelConfig(const ModelConfig& c) {
  if (c.width == 0 || c.width > kMaxWidth) {
    return bad(fmt::format("width {} is out of range 1..{}", c.width, kMaxWidth));
  }
  if (c.layers == 0 || c.layers > kMaxLayers) {
    return bad(fmt::format("layers {} is out of range 1..{}", c.layers, kMaxLayers));
  }
  if (c.heads == 0 || c.heads > kMaxHeads) {
    return bad(fmt::format("heads {} is out of range 1..{}", c.heads, kMaxHeads));
  }
  if (c.width % c.heads != 0) {
    return bad(fmt::format("width {} is not a multiple of heads {} (head size must be whole)",
                           c.width, c.heads));
  }
  if (c.context == 0 || c.context > kMaxContext) {
    return bad(fmt::format("context {} is out of range 1..{}", c.context, kMaxContext));
  }
  if (c.vocab != kVocabSize) {
    return bad(fmt::format("vocab {} is not {}: the tokenizer is byte-level", c.vocab, kVocabSize));
  }
  if (paramCount(c) > kMaxParams) {
    return bad(fmt::format("{} has {} parameters, more than the limit {}", describe(c),
                           paramCount(c), kMaxParams));
  }
  return Status::ok();
}

std::uint64_t paramCount(const ModelConfig& c) {
  const std::uint64_t d = c.width;
  const std::uint64_t per_block = 12 * d * d + 13 * d;  // 2 LNs, qkv, proj, fc (4d), fc_proj
  return std::uint64_t{c.vocab} * d + std::uint64_t{c.context} * d + c.layers * per_block + 2 * d;
}

std::string describe(const ModelConfig& c) {
  return fmt::format("width={} layers={} heads={} context={} vocab={}", c.width, c.layers, c.heads,
                     c.context, c.vocab);
}

Status checkSameShape(const ModelConfig& expected, const ModelConfig& found,
                      std::string_view what) {
  std::string diff;
  auto field = [&](std::string_view name, std::uint32_t e, std::uint32_t f) {
    if (e == f) return;
    if (!diff.empty()) diff += ", ";
    diff += fmt::format("{} {} (found) vs {} (expected)", name, f, e);
  };
  field("width", expected.width, found.width);
  field("layers", expected.layers, found.layers);
  field("heads", expected.heads, found.heads);
  field("context", expected.context, found.context);
  field("vocab", expected.vocab, found.vocab);
  if (diff.empty()) return Status::ok();
  return Status(
      StatusCode::kInvalidArgument,
      fmt::format(
          "{}: model shape mismatch: {}; start from a checkpoint of the same model or change the "
          "model flags to match",
          what, diff));
}

}  // namespace loco::training
