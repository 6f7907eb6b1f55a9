#include "training/sync_methods.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "training/local_trainer.h"

namespace loco::training {

std::string_view overlapName(Overlap o) {
  switch (o) {
    case Overlap::kNone:
      return "none";
    case Overlap::kEager:
      return "eager";
    case Overlap::kNaive:
      return "naive";
  }
  return "?";
}

Result<Overlap> parseOverlap(std::string_view name) {
  if (name == "none") return Overlap::kNone;
  if (name == "eager") return Overlap::kEager;
  if (name == "naive") return Overlap::kNaive;
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown overlap '{}' (use none, eager or naive)", name));
}

void outerNesterovStep(std::span<float> theta, std::span<float> momentum,
                       std::span<const float> delta, const OuterSgdOptions& o) {
  const float lr = o.lr, mu = o.momentum;
  const bool nesterov = o.nesterov && mu > 0;
  for (std::size_t i = 0; i < theta.size(); ++i) {
    const float b = mu * momentum[i] + delta[i];
    momentum[i] = b;
    theta[i] -= nesterov ? lr * (delta[i] + mu * b) : lr * b;
  }
}

EagerCorrection::EagerCorrection(std::size_t n, OuterSgdOptions options)
    : options_(options), c_(n, 0.0f), momentum_(n, 0.0f), last_own_(n, 0.0f), d_(n, 0.0f) {}

void EagerCorrection::add(std::span<const float> own) {
  for (std::size_t i = 0; i < d_.size(); ++i) d_[i] = own[i] - last_own_[i];
  outerNesterovStep(c_, momentum_, d_, options_);
  std::copy(own.begin(), own.end(), last_own_.begin());
}

void EagerCorrection::startPoint(std::span<const float> consensus, std::span<float> start) const {
  for (std::size_t i = 0; i < c_.size(); ++i) start[i] = consensus[i] + c_[i];
}

void EagerCorrection::reset() {
  std::fill(c_.begin(), c_.end(), 0.0f);
  std::fill(momentum_.begin(), momentum_.end(), 0.0f);
  std::fill(last_own_.begin(), last_own_.end(), 0.0f);
}

Result<std::vector<std::vector<Range>>> fragmentRanges(const std::vector<ParamInfo>& layout,
                                                       std::uint32_t fragments) {
  int blocks = 0;
  for (const ParamInfo& p : layout) blocks = std::max(blocks, p.layer + 1);
  if (fragments == 0 || static_cast<int>(fragments) > blocks) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("--fragments {} must be in 1..{} (the model's blocks)", fragments, blocks));
  }
  std::vector<std::vector<Range>> out(fragments);
  for (const ParamInfo& p : layout) {
    std::uint32_t f = 0;
    if (p.layer >= 0) {
      f = static_cast<std::uint32_t>(p.layer) % fragments;
    } else if (p.name.rfind("wte", 0) == 0 || p.name.rfind("wpe", 0) == 0) {
      f = 0;
    } else {
      f = fragments - 1;
    }
    auto& r = out[f];
    if (!r.empty() && r.back().offset + r.back().count == p.offset) {
      r.back().count += p.count;
    } else {
      r.push_back({p.offset, p.count});
    }
  }
  return out;
}

std::size_t rangesSize(const std::vector<Range>& ranges) {
  std::size_t n = 0;
  for (const Range& r : ranges) n += r.count;
  return n;
}

void gatherRanges(std::span<const float> all, const std::vector<Range>& ranges,
                  std::span<float> out) {
  std::size_t at = 0;
  for (const Range& r : ranges) {
    std::copy_n(all.begin() + static_cast<std::ptrdiff_t>(r.offset), r.count,
                out.begin() + static_cast<std::ptrdiff_t>(at));
    at += r.count;
  }
}

void scatterRanges(std::span<const float> in, const std::vector<Range>& ranges,
                   std::span<float> all) {
  std::size_t at = 0;
  for (const Range& r : ranges) {
    std::copy_n(in.begin() + static_cast<std::ptrdiff_t>(at), r.count,
                all.begin() + static_cast<std::ptrdiff_t>(r.offset));
    at += r.count;
  }
}

std::uint32_t streamingFragment(std::uint64_t round, std::uint32_t fragments) {
  return static_cast<std::uint32_t>((round + 1) % fragments);
}

void mergeFragment(std::span<float> local, std::span<const float> global, float alpha) {
  const float beta = 1.0f - alpha;
  for (std::size_t i = 0; i < local.size(); ++i) local[i] = alpha * local[i] + beta * global[i];
}

Status validateNoloco(const NolocoOptions& o) {
  for (float v : {o.alpha, o.beta, o.gamma}) {
    if (!std::isfinite(v) || v < 0 || v > 2) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("--noloco-alpha/beta/gamma must be in [0, 2], got {}/{}/{}",
                                o.alpha, o.beta, o.gamma));
    }
  }
  return Status();
}

namespace {

std::uint64_t splitmix(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<std::vector<std::string>> nolocoGroups(std::vector<std::string> members,
                                                   std::uint64_t round) {
  std::sort(members.begin(), members.end());
  members.erase(std::unique(members.begin(), members.end()), members.end());
  // FNV-1a over the ids (with separators), mixed with the round: the seed of the permutation.
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const std::string& m : members) {
    for (unsigned char ch : m) h = (h ^ ch) * 0x100000001b3ULL;
    h = (h ^ 0xffu) * 0x100000001b3ULL;
  }
  std::uint64_t state = h ^ (round * 0xd6e8feb86659fd93ULL);
  for (std::size_t i = members.size(); i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(splitmix(state) % i);
    std::swap(members[i - 1], members[j]);
  }
  std::vector<std::vector<std::string>> groups;
  const std::size_t n = members.size();
  if (n <= 1) {
    if (n == 1) groups.push_back(members);
    return groups;
  }
  const std::size_t pairs = n / 2;
  for (std::size_t g = 0; g < pairs; ++g) groups.push_back({members[2 * g], members[2 * g + 1]});
  if (n % 2 == 1) groups.back().push_back(members[n - 1]);  // odd: one group of three
  for (auto& g : groups) std::sort(g.begin(), g.end());
  return groups;
}

std::vector<std::string> nolocoGroupOf(const std::vector<std::string>& members, std::uint64_t round,
                                       const std::string& me) {
  for (auto& g : nolocoGroups(members, round)) {
    if (std::find(g.begin(), g.end(), me) != g.end()) return g;
  }
  return {};
}

void nolocoStep(std::span<float> phi, std::span<float> delta_momentum,
                std::span<const float> mean_delta, std::span<const float> mean_phi,
                const NolocoOptions& o) {
  for (std::size_t i = 0; i < phi.size(); ++i) {
    const float d =
        o.alpha * delta_momentum[i] + o.beta * mean_delta[i] - o.gamma * (phi[i] - mean_phi[i]);
    delta_momentum[i] = d;
    phi[i] += d;
  }
}

}  // namespace loco::training
