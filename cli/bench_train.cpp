// `loco bench train`: one peer's inner-step throughput (training/train_bench.h), one JSON line.
#include <cstdio>
#include <tuple>

#include "cli/commands.h"
#include "training/train_bench.h"

namespace loco::cli {

int runBenchTrain(const Args& args) {
  Flags flags("bench train",
              "time inner steps of the byte-level GPT on one peer; prints one JSON line",
              {{"width", "model width", "128"},
               {"layers", "transformer blocks", "2"},
               {"heads", "attention heads", "4"},
               {"context", "context length", "64"},
               {"batch", "sequences per step", "16"},
               {"threads", "LibTorch threads", "1"},
               {"steps", "timed steps", "20"},
               {"data", "text file or directory", std::string(training::kDefaultCorpusPath)}});
  if (int rc = parseAndSetUp(flags, args, "bench"); rc >= 0) return rc;
  training::TrainBenchOptions o;
  std::int64_t width = 0, layers = 0, heads = 0, context = 0, batch = 0, threads = 0, steps = 0;
  for (auto [name, out, max] : std::vector<std::tuple<const char*, std::int64_t*, std::int64_t>>{
           {"width", &width, 65536},
           {"layers", &layers, 1024},
           {"heads", &heads, 1024},
           {"context", &context, 65536},
           {"batch", &batch, 65536},
           {"threads", &threads, 256},
           {"steps", &steps, 100000}}) {
    auto v = flags.getInt(name, 1, max);
    if (!v) return reportFailure(v.status());
    *out = *v;
  }
  o.model.width = static_cast<std::uint32_t>(width);
  o.model.layers = static_cast<std::uint32_t>(layers);
  o.model.heads = static_cast<std::uint32_t>(heads);
  o.model.context = static_cast<std::uint32_t>(context);
  o.batch_size = static_cast<std::uint32_t>(batch);
  o.threads = static_cast<int>(threads);
  o.steps = static_cast<std::uint32_t>(steps);
  o.data_path = flags.get("data");
  auto r = training::benchTrain(o);
  if (!r) return reportFailure(r.status());
  std::printf("%s\n", r->toJson().c_str());
  return 0;
}

}  // namespace loco::cli
