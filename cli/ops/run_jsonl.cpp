#include "cli/ops/run_jsonl.h"

#include <fmt/format.h>

#include <cmath>

#include "p2p/base/json.h"
#include "p2p/base/text.h"

namespace loco::ops {

// One line per round. `epoch` is the membership epoch the round was applied in, `pid` tells one
// process lifetime from the next (restarts append to the same file), `unix_s` puts the line on a
// clock other processes share, and `finite` says whether every loss this peer computed for the
// round was finite (JSON has no NaN: a non-finite loss is written as null, like one that was not
// computed). `checkpoint_failures` counts this process's checkpoint writes that failed (a full
// disk; training goes on). The rest: the adaptive batch's (local_loss, batch, micro_batches,
// batch_wanted, tokens, share, and switch mode's b_max and b_mem) and the overlap's timing
// (compute_s, blocked_s, utilization, round_bytes, peak_round_bytes, sync_points,
// e2e_tokens_per_s), and the instances active after the round (multi-instance training; while
// more than one is, each one's validation loss and batch). `loco chaos` checks its invariants
// on these.
std::string peerRoundLine(const training::RoundRecord& r, std::uint32_t rank,
                          const std::string& peer, long pid, double unix_s) {
  const bool finite = (r.contributors == 0 || std::isfinite(r.train_loss)) &&
                      (!r.val_loss || std::isfinite(*r.val_loss));
  Json line = Json{{"rank", rank},
                   {"peer", shortId(peer)},
                   {"step", r.outer_step},
                   {"inner_step", r.inner_step},
                   {"epoch", r.epoch},
                   {"world", r.world},
                   {"contributors", r.contributors},
                   {"loss", jsonFixed(r.train_loss, 6)},
                   {"val_loss", r.val_loss ? jsonFixed(*r.val_loss, 6) : Json()},
                   {"bytes_sent", jsonFixed(r.bytes_sent, 0)},
                   {"retries", r.retries},
                   {"tokens_per_s", jsonFixed(r.tokens_per_s, 1)},
                   {"digest", fmt::format("{:016x}", r.state_digest)},
                   {"wall_s", jsonFixed(r.wall_s, 3)},
                   {"pid", pid},
                   {"unix_s", jsonFixed(unix_s, 3)},
                   {"finite", finite},
                   {"checkpoint_failures", r.checkpoint_failures},
                   {"local_loss", jsonFixed(r.local_loss, 6)},
                   {"batch", r.batch},
                   {"micro_batches", r.micro_batches},
                   {"batch_wanted", jsonFixed(r.batch_wanted, 3)},
                   {"tokens", jsonFixed(r.tokens, 0)},
                   {"share", r.share},
                   {"b_max", r.b_max},
                   {"b_mem", r.b_mem},
                   {"compute_s", jsonFixed(r.compute_total_s, 3)},
                   {"blocked_s", jsonFixed(r.blocked_total_s, 3)},
                   {"utilization", jsonFixed(r.utilization, 4)},
                   {"round_bytes", jsonFixed(r.round_bytes, 0)},
                   {"peak_round_bytes", jsonFixed(r.peak_round_bytes, 0)},
                   {"sync_points", r.sync_points},
                   {"e2e_tokens_per_s", jsonFixed(r.e2e_tokens_per_s, 1)},
                   {"instances", r.instances}};
  if (!r.instance_val_losses.empty()) {
    Json vals = Json::array();
    for (double v : r.instance_val_losses) vals.push_back(jsonFixed(v, 6));
    line["instance_val_losses"] = vals;
  }
  if (!r.instance_batches.empty()) line["instance_batches"] = r.instance_batches;
  return jsonDump(line);
}

}  // namespace loco::ops
