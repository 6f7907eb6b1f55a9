#pragma once
// Test support for training runs with real processes (`loco local`, `loco join`): a tiny corpus,
// the flags of a tiny fast model, and the peers' per-round JSON lines.

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "p2p/base/json.h"
#include "tests/support/process.h"

namespace loco::testing {

// A small text corpus: enough bytes for a context of 16 in both splits.
inline std::string writeCorpus(const TempDir& dir) {
  const std::string path = dir.file("corpus.txt");
  std::ofstream out(path);
  const char* words[] = {"the", "quick", "brown", "fox",   "jumps", "over",
                         "a",   "lazy",  "dog",   "while", "peers", "train"};
  for (int i = 0; i < 6000; ++i)
    out << words[(i * 7 + i / 13) % 12] << ((i % 11 == 10) ? ".\n" : " ");
  return path;
}

// Flags of a tiny, fast model.
inline std::vector<std::string> tiny(const std::string& corpus) {
  return {"--data",  corpus, "--width",   "32", "--layers",    "1",
          "--heads", "2",    "--context", "16", "--batch",     "4",
          "--lr",    "0.01", "--warmup",  "2",  "--log-level", "warn"};
}

// One round as a peer's --metrics file (or run.jsonl) records it.
struct Line {
  std::uint64_t step;
  double loss = -1, val = -1;
  std::string digest;
  int contributors = -1, world = -1;
  std::int64_t epoch = -1;
};

inline std::vector<Line> readJsonl(const std::string& path) {
  std::vector<Line> out;
  std::ifstream in(path);
  std::string l;
  while (std::getline(in, l)) {
    auto j = parseJsonObject(l);
    if (!j || !j->contains("step") || !(*j)["step"].is_number_unsigned()) continue;
    auto number = [&](const char* key, auto fallback) {
      const auto it = j->find(key);
      return it != j->end() && it->is_number() ? it->get<decltype(fallback)>() : fallback;
    };
    Line x;
    x.step = (*j)["step"].get<std::uint64_t>();
    x.loss = number("loss", -1.0);  // -1: null (not computed, or not finite)
    x.val = number("val_loss", -1.0);
    if (auto it = j->find("digest"); it != j->end() && it->is_string()) x.digest = *it;
    x.contributors = number("contributors", -1);
    x.world = number("world", -1);
    x.epoch = number("epoch", std::int64_t{-1});
    out.push_back(x);
  }
  return out;
}

}  // namespace loco::testing
