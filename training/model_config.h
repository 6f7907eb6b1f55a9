#pragma once
// The shape of loco's byte-level GPT (ARCHITECTURE.md §6). A plain struct with no LibTorch in
// sight, so the CLI, checkpoints and shared-state code can talk about a model without compiling
// torch.
//
// Architecture (training/gpt.h builds it): token + learned position embeddings; `layers` pre-LN
// blocks (LN → causal self-attention → residual, LN → MLP 4×width with GELU → residual); final
// LN; the output head is TIED to the token embedding (logits = x·Wteᵀ, no bias). Tying is what
// makes the reference configuration (width 128, 2 layers, 4 heads, context 64) come out at the
// ≈0.43M parameters that the reference step times and losses (README) were taken with: 437,760
// tied versus 470,528 untied.
//
// Pure functions; thread-safe.

#include <cstdint>
#include <string>

#include "p2p/base/status.h"

namespace loco::training {

// Bytes 0..255 are the tokens; nothing else is ever produced.
inline constexpr std::uint32_t kVocabSize = 256;

struct ModelConfig {
  std::uint32_t width = 128;   // embedding width d; a multiple of `heads`
  std::uint32_t layers = 2;    // transformer blocks
  std::uint32_t heads = 4;     // attention heads; head size = width / heads
  std::uint32_t context = 64;  // longest sequence (position embeddings)
  std::uint32_t vocab = kVocabSize;

  bool operator==(const ModelConfig&) const = default;
};

// kInvalidArgument naming the first bad field and the allowed range, e.g.
// "model: width 130 is not a multiple of heads 4 (head size must be whole)".
Status validateModelConfig(const ModelConfig& c);

// Number of fp32 parameters: V·d + T·d + L·(12d² + 13d) + 2d (tied head). Call after validation.
std::uint64_t paramCount(const ModelConfig& c);

// "width=128 layers=2 heads=4 context=64 vocab=256"
std::string describe(const ModelConfig& c);

// Ok when equal; otherwise kInvalidArgument naming every differing field, e.g.
// "model shape mismatch: width 256 (found) vs 128 (expected)". `what` says where `found` came
// from ("checkpoint /x/ckpt.bin").
Status checkSameShape(const ModelConfig& expected, const ModelConfig& found, std::string_view what);

}  // namespace loco::training
