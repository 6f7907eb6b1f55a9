#pragma once
// The byte-level GPT as a LibTorch module, and the flat-buffer surgery. Internal to training/:
// this header includes <torch/torch.h>, so only training/*.cpp may include it (each such
// translation unit costs ~13 s and 1.1 GiB to compile; keep them few).

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "training/local_trainer.h"
#include "training/model_config.h"

namespace loco::training {

// LN → causal self-attention → residual; LN → MLP (4×, GELU) → residual.
class GptBlockImpl : public torch::nn::Module {
 public:
  explicit GptBlockImpl(const ModelConfig& c);
  // x [B, T, d]; mask [T, T] additive (0 on and below the diagonal, −inf above).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);

 private:
  std::int64_t width_;
  std::int64_t heads_;
  torch::nn::LayerNorm ln1_{nullptr};
  torch::nn::Linear attn_qkv_{nullptr};
  torch::nn::Linear attn_proj_{nullptr};
  torch::nn::LayerNorm ln2_{nullptr};
  torch::nn::Linear mlp_fc_{nullptr};
  torch::nn::Linear mlp_proj_{nullptr};
};
TORCH_MODULE(GptBlock);

class GptImpl : public torch::nn::Module {
 public:
  // Shapes only; call initialize() before use (the torch defaults draw from the global RNG).
  explicit GptImpl(const ModelConfig& c);
  // GPT-2 initialisation from `seed` alone (a private generator, so other trainers in the
  // process do not interfere): N(0, 0.02) for embeddings and linear weights, N(0, 0.02/√(2L))
  // for the projections into the residual stream, zero biases, unit LN gains.
  void initialize(std::uint64_t seed);
  // tokens [B, T] int64 with T <= context → logits [B, T, vocab].
  torch::Tensor forward(const torch::Tensor& tokens);

 private:
  ModelConfig config_;
  torch::nn::Embedding wte_{nullptr};
  torch::nn::Embedding wpe_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm ln_f_{nullptr};
  torch::Tensor mask_;
};
TORCH_MODULE(Gpt);

// Every parameter of `model` becomes a view into `params`, every gradient a view into `grads`
// (both 1-D fp32, allocated here), in named_parameters() order. Values are kept.
struct FlatBuffers {
  torch::Tensor params;
  torch::Tensor grads;
  std::vector<torch::Tensor> tensors;  // the parameters, in layout order
  std::vector<ParamInfo> layout;
};
FlatBuffers flattenParameters(torch::nn::Module& model);

// Re-points any gradient autograd replaced by a fresh tensor (it may "steal" a new gradient
// instead of accumulating into ours) back into the flat buffer, copying its values. Returns the
// number of tensors that had to be fixed (0 in normal operation).
std::size_t reattachGradients(FlatBuffers& flat);

}  // namespace loco::training
