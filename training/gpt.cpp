#include "training/gpt.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>
#include <string>

namespace loco::training {

GptBlockImpl::GptBlockImpl(const ModelConfig& c) : width_(c.width), heads_(c.heads) {
  const std::int64_t d = c.width;
  ln1_ = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  attn_qkv_ = register_module("attn_qkv", torch::nn::Linear(d, 3 * d));
  attn_proj_ = register_module("attn_proj", torch::nn::Linear(d, d));
  ln2_ = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  mlp_fc_ = register_module("mlp_fc", torch::nn::Linear(d, 4 * d));
  mlp_proj_ = register_module("mlp_proj", torch::nn::Linear(4 * d, d));
}

torch::Tensor GptBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const std::int64_t b = x.size(0);
  const std::int64_t t = x.size(1);
  const std::int64_t hd = width_ / heads_;
  // LibTorch 1.13 has no public scaled-dot-product attention: matmul + additive mask + softmax.
  auto qkv = attn_qkv_->forward(ln1_->forward(x)).split(width_, -1);
  auto q = qkv[0].view({b, t, heads_, hd}).transpose(1, 2);  // [B, H, T, hd]
  auto k = qkv[1].view({b, t, heads_, hd}).transpose(1, 2);
  auto v = qkv[2].view({b, t, heads_, hd}).transpose(1, 2);
  // Scaling q (B·T·d values) is cheaper than scaling the scores (B·H·T² values).
  auto scores = torch::matmul(q * (1.0 / std::sqrt(static_cast<double>(hd))), k.transpose(-2, -1));
  auto att = torch::softmax(scores + mask, -1);
  auto y = torch::matmul(att, v).transpose(1, 2).contiguous().view({b, t, width_});
  auto h = x + attn_proj_->forward(y);
  return h + mlp_proj_->forward(torch::gelu(mlp_fc_->forward(ln2_->forward(h))));
}

GptImpl::GptImpl(const ModelConfig& c) : config_(c) {
  const std::int64_t d = c.width;
  wte_ = register_module("wte", torch::nn::Embedding(c.vocab, d));
  wpe_ = register_module("wpe", torch::nn::Embedding(c.context, d));
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (std::uint32_t i = 0; i < c.layers; ++i) blocks_->push_back(GptBlock(c));
  ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  // Not a parameter: never in the flat buffer, never synchronised.
  const std::int64_t t = c.context;
  mask_ =
      register_buffer("mask", torch::full({t, t}, -std::numeric_limits<float>::infinity()).triu(1));
}

void GptImpl::initialize(std::uint64_t seed) {
  torch::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const double residual_std = 0.02 / std::sqrt(2.0 * config_.layers);
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    auto endsWith = [&](std::string_view s) {
      return name.size() >= s.size() && name.ends_with(s);
    };
    if (name.find(".ln") != std::string::npos || name.rfind("ln_f.", 0) == 0) {
      if (endsWith(".weight"))
        p.fill_(1.0);
      else
        p.zero_();
    } else if (endsWith(".bias")) {
      p.zero_();
    } else if (endsWith("attn_proj.weight") || endsWith("mlp_proj.weight")) {
      p.normal_(0.0, residual_std, gen);
    } else {
      p.normal_(0.0, 0.02, gen);
    }
  }
}

torch::Tensor GptImpl::forward(const torch::Tensor& tokens) {
  const std::int64_t t = tokens.size(1);
  auto pos = torch::arange(t, torch::kLong);
  auto x = wte_->forward(tokens) + wpe_->forward(pos);
  auto mask = mask_.slice(0, 0, t).slice(1, 0, t);
  for (const auto& block : *blocks_) x = block->as<GptBlock>()->forward(x, mask);
  x = ln_f_->forward(x);
  return torch::matmul(x, wte_->weight.t());  // tied head
}

FlatBuffers flattenParameters(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  FlatBuffers flat;
  auto named = model.named_parameters();
  std::int64_t total = 0;
  for (const auto& item : named) total += item.value().numel();
  flat.params = torch::empty({total}, torch::kFloat32);
  flat.grads = torch::zeros({total}, torch::kFloat32);
  std::int64_t offset = 0;
  for (auto& item : named) {
    torch::Tensor p = item.value();
    const std::int64_t n = p.numel();
    auto view = flat.params.narrow(0, offset, n).view(p.sizes());
    view.copy_(p);
    p.set_data(view);
    p.mutable_grad() = flat.grads.narrow(0, offset, n).view(p.sizes());

    ParamInfo info;
    info.name = item.key();
    info.offset = static_cast<std::size_t>(offset);
    info.count = static_cast<std::size_t>(n);
    if (info.name.rfind("blocks.", 0) == 0) info.layer = std::stoi(info.name.substr(7));
    info.decayed = p.dim() >= 2;  // matrices and embeddings; not biases or LN gains
    flat.layout.push_back(std::move(info));
    flat.tensors.push_back(p);
    offset += n;
  }
  return flat;
}

std::size_t reattachGradients(FlatBuffers& flat) {
  torch::NoGradGuard no_grad;
  std::size_t fixed = 0;
  float* base = flat.grads.data_ptr<float>();
  for (std::size_t i = 0; i < flat.tensors.size(); ++i) {
    torch::Tensor& p = flat.tensors[i];
    const ParamInfo& info = flat.layout[i];
    const torch::Tensor& g = p.grad();
    if (g.defined() && g.data_ptr<float>() == base + info.offset && g.is_contiguous()) continue;
    auto view = flat.grads
                    .narrow(0, static_cast<std::int64_t>(info.offset),
                            static_cast<std::int64_t>(info.count))
                    .view(p.sizes());
    if (g.defined())
      view.copy_(g);
    else
      view.zero_();
    p.mutable_grad() = view;
    ++fixed;
  }
  return fixed;
}

}  // namespace loco::training
