#pragma once
// The peer's per-round JSON line (`loco join --metrics FILE`, what `loco local` gathers into
// run.jsonl and `loco chaos` checks its invariants on). The schema, field by field, is in the
// README ("run.jsonl and the peers' metrics lines"); chaos::parseRoundLine reads it back.
// Pure, any thread.

#include <cstdint>
#include <string>

#include "training/distributed.h"

namespace loco::ops {

// One line, no newline: {"rank":…,"peer":…,"step":…,…,"checkpoint_failures":…}. `peer` is the
// full peer id (the line carries its first 8 characters), `pid` this process, `unix_s` the wall
// clock when the round was applied.
std::string peerRoundLine(const training::RoundRecord& r, std::uint32_t rank,
                          const std::string& peer, long pid, double unix_s);

}  // namespace loco::ops
