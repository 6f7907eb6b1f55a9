// libFuzzer target for the text loco reads from files a user or another process wrote: chaos
// scenario files (TOML, parsed with toml++ and then checked key by key) and the peers' metrics
// JSONL lines `loco chaos` reads back. Either must come back as a value or an error, never a
// crash, an uncaught exception or a hang. Built by the `fuzz` preset; run in CI by
// tests/fuzz/run_fuzz.sh over tests/fuzz/corpus/scenario.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cli/chaos/invariants.h"
#include "cli/chaos/scenario.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto scenario = loco::chaos::parseScenario(text, "fuzz.toml");
  if (scenario.isOk()) {
    // A valid scenario survives its own rendering (what `--dry-run` prints and OUT/scenario.toml
    // holds): the rendered text parses again to the same faults.
    auto again = loco::chaos::parseScenario(loco::chaos::toToml(*scenario), "again.toml");
    if (!again.isOk() || again->faults.size() != scenario->faults.size()) std::abort();
  }
  (void)loco::chaos::parseRoundLine(text, "peer-1");
  return 0;
}
