#pragma once
// The invariants `loco chaos` checks while the swarm runs, from what the peers write to their
// metrics JSONL (one line per applied round) and what the coordinator's status says; never from
// log lines. Pure: fed with records and samples, so every rule is unit-tested.
//
//   digests      one shared-state digest per outer step across every peer that reported it (a
//                round is applied by all members or by none; two digests for one step mean the
//                peers diverged)
//   steps        each peer's outer steps strictly increase over all its lives (no round applied
//                twice, no progress lost), and within one membership epoch of one process they
//                go up by exactly one (no round the group applied skipped by a member: never
//                applied by a subset)
//   finite       every loss a peer computed is finite
//   no_hang      while a majority of the peers and the coordinator are healthy, the run applies
//                a round within heartbeat timeout + the round time (3 x the median of recent
//                rounds) + a margin
//   resources    every process's RSS and its open fds other than connections late in its life
//                (the floor, lowest sample, of its last fifth) at most (1 + limit) x early in
//                its life (the floor of its second fifth), plus a small absolute slack (4 fds,
//                8 MiB) for allocator noise and a new log or checkpoint file; and its TCP
//                connections to any one far host bounded: late in its life (the floor of its
//                last fifth) at most what one member's links need (both directions' streams,
//                a control connection and a state transfer). Only for lives of at least 60 s
//                with 10 samples. Floors, because a leak stays and a recovery's new links come
//                and go; connections by a bound, not by growth, because a member's link mesh
//                grows with the membership (a peer that starts alone and ends in a swarm of 5
//                has 2 x 4 streams x 4 more sockets, and that is not a leak). A finding names
//                the descriptors that differ between the two floor samples, or the connections
//                to the host over the bound
//   val_loss     the final validation loss within a relative band of a fault-free run's
//
// Thread rules: one thread at a time.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "p2p/base/status.h"

namespace loco::chaos {

// One line of a peer's metrics JSONL (cli/join_train.cpp; the schema is in the README).
struct RoundLine {
  std::string peer;  // "peer-2" (the file it came from)
  std::uint64_t step = 0;
  std::uint64_t inner_step = 0;
  std::uint64_t epoch = 0;
  int world = 0;
  int contributors = 0;
  double loss = 0;                 // NaN when absent/null
  std::optional<double> val_loss;  // only the evaluating peer, some rounds
  bool finite = true;
  std::string digest;
  long pid = 0;
  double unix_s = 0;
  double bytes_sent = 0;
  std::uint32_t retries = 0;
  double tokens_per_s = 0;
  double wall_s = 0;
  double batch = 0, tokens = 0;                         // adaptive batch: 0 when absent
  std::uint32_t instances = 1;                          // multi-instance training
  std::optional<double> e2e_tokens_per_s, utilization;  // absent in older lines
};

// Parses one JSONL line; kInvalidArgument for a line that is not a round record.
Result<RoundLine> parseRoundLine(const std::string& line, const std::string& peer);

struct Violation {
  std::string invariant;  // "digests", "steps", "finite", "no_hang", "resources", "val_loss"
  double t = 0;           // seconds on the run's clock
  std::string detail;
};

// One sample of one process life.
struct ProcessSample {
  double t = 0;  // seconds on the run's clock
  int fds = 0;
  long rss_kib = 0;
  // What each descriptor is ("tcp dialed 10.50.0.3:7411", "pipe", a file's path); may be empty.
  std::vector<std::string> descriptors;
};

struct InvariantLimits {
  double heartbeat_timeout_s = 2;
  double hang_margin_s = 10;
  double growth_limit = 0.10;
  double val_loss_band = 0.05;
  double min_life_s = 60;  // resources: shorter lives get no verdict (warm-up, then two windows)
  int connections_per_host = 0;  // resources: most TCP connections to one far host; 0: unchecked
};

struct Verdict {
  std::string invariant;
  std::size_t checks = 0;  // how many things were checked (rounds, ticks, processes, ...)
  std::vector<Violation> violations;
  std::string note;  // e.g. why a check could not be made
  bool held() const { return violations.empty(); }
};

class InvariantChecker {
 public:
  explicit InvariantChecker(InvariantLimits limits);

  // A round record at time `t` (the run's clock).
  void onRound(const RoundLine& line, double t);
  // Every tick: whether a majority of the peers and the coordinator are healthy (running, not
  // stopped, reachable). The hang clock runs only while they are.
  void onTick(double t, bool majority_healthy);
  // A sample of one process life (`name`, `pid`).
  void onProcessSample(const std::string& name, long pid, ProcessSample sample);
  // Stops the hang clock for good (the run reached its last step).
  void runComplete(double t);

  // Expected time of one round (the hang allowance uses it).
  double roundEstimate() const;
  double lastProgress() const { return last_progress_t_; }
  std::uint64_t maxStep() const { return max_step_; }

  // The verdicts, with the end-of-run checks (resources, the validation loss against
  // `baseline_val` when there is one).
  std::vector<Verdict> finish(std::optional<double> final_val, std::optional<double> baseline_val,
                              const std::string& baseline_note);

 private:
  void violate(const std::string& invariant, double t, std::string detail);
  Verdict& verdict(const std::string& invariant);

  InvariantLimits limits_;
  std::vector<Verdict> verdicts_;
  struct StepSeen {
    std::string digest, peer;
    std::uint64_t epoch = 0;
  };
  std::map<std::uint64_t, StepSeen> steps_;
  struct PeerLast {
    std::uint64_t step = 0;
    std::uint64_t epoch = 0;
    long pid = 0;
    bool any = false;
  };
  std::map<std::string, PeerLast> peers_;
  std::uint64_t max_step_ = 0;
  double last_progress_t_ = 0;
  bool progress_started_ = false;
  std::vector<double> round_times_;  // times of new max steps
  bool hanging_ = false;
  bool complete_ = false;
  struct Sample {
    double t;
    int fds;
    long rss_kib;
    int other_fds;     // fds that are not TCP connections (all of them without a listing)
    int most_to_host;  // the most TCP connections to one far host
    std::string busiest_host;
    // Shared with the previous sample while the listing does not change.
    std::shared_ptr<const std::vector<std::string>> descriptors;
  };
  std::map<std::pair<std::string, long>, std::vector<Sample>> samples_;
};

}  // namespace loco::chaos
