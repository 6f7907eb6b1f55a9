#pragma once
// Test support for training runs with real processes (`loco local`, `loco join`): a tiny corpus,
// the flags of a tiny fast model, and the peers' per-round JSON lines.

#include <cstdint>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

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
  std::smatch m;
  while (std::getline(in, l)) {
    Line x;
    if (!std::regex_search(l, m, std::regex(R"re("step":([0-9]+))re"))) continue;
    x.step = std::stoull(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("loss":([-0-9.e]+))re"))) x.loss = std::stod(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("val_loss":([-0-9.e]+))re")))
      x.val = std::stod(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("digest":"([0-9a-f]+)")re"))) x.digest = m[1];
    if (std::regex_search(l, m, std::regex(R"re("contributors":([0-9]+))re")))
      x.contributors = std::stoi(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("world":([0-9]+))re"))) x.world = std::stoi(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("epoch":([0-9]+))re"))) x.epoch = std::stoll(m[1]);
    out.push_back(x);
  }
  return out;
}

}  // namespace loco::testing
