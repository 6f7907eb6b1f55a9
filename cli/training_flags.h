#pragma once
// The training flags that `loco join` and `loco local` share (local forwards the ones given to
// every peer it starts), and the DistributedConfig built from them. One place for their names,
// defaults and checks.

#include <string>
#include <vector>

#include "cli/flags.h"
#include "p2p/base/status.h"
#include "training/distributed.h"

namespace loco::cli {

std::vector<FlagSpec> trainingFlagSpecs();
// trainingFlagSpecs() and what only a training peer (`loco join`) takes.
std::vector<FlagSpec> trainingPeerFlagSpecs();
// kInvalidArgument naming the flag for every bad or contradictory value. Does not read the data.
Result<training::DistributedConfig> trainingConfigFromFlags(const Flags& flags);
// The method the run uses, and under --method auto what it picked and why ("streaming (--method
// auto: 2 fragments, 5 overlapped steps, int4 Δ)"), for the start-up line.
std::string methodDescription(const Flags& flags, const training::DistributedConfig& c);
// "--name value" pairs for every training flag that was set (to pass on to peers).
std::vector<std::string> forwardedTrainingFlags(const Flags& flags);

}  // namespace loco::cli
