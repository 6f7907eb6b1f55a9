#pragma once
// The Gloo side of `loco bench allreduce --baseline gloo` (cli/bench_gloo.cpp, built only when
// Debian's libgloo-dev is installed: LOCO_HAVE_GLOO).

#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "p2p/base/status.h"

namespace loco::cli {

// The algorithms --baseline-algo names (besides "auto", which times all of them): gloo::allreduce's
// two, then Gloo's classic classes.
inline constexpr std::array<std::string_view, 4> kGlooAlgorithms = {
    "ring", "bcube", "halving-doubling", "ring-chunked"};

struct GlooRun {
  std::string algo;              // the algorithm timed ("auto": the fastest candidate)
  std::vector<double> times_ms;  // this rank's time of each timed call of `algo`
  double cpu_ms = 0;             // this process's CPU time (every thread) per timed call of `algo`
  // "auto" only: every candidate and its median time (slowest rank per iteration).
  std::vector<std::pair<std::string, double>> candidates_p50_ms;
};

// One rank of a Gloo all-reduce run of `size` ranks that rendezvous in `store_dir` and listen
// on `hostname`. `algo`: ring or bcube (gloo::allreduce), halving-doubling or ring-chunked
// (Gloo's classic classes), or auto (all of them, one after another on the same context; the
// fastest is reported). Each of 1 warm-up and `iters` timed calls starts from `input`, after
// an untimed barrier; only the call is timed. Leaves the average of every rank's input in
// `buf` (same size as `input`). Blocks until every rank is done; Gloo's operations time out
// after 10 minutes. Errors: kInvalidArgument (unknown algorithm), kInternal (Gloo threw:
// a peer died, a timeout, the rendezvous failed).
Result<GlooRun> glooAllReduce(int rank, int size, const std::string& hostname,
                              const std::string& store_dir, const std::string& algo,
                              const std::vector<float>& input, std::vector<float>& buf, int iters);

}  // namespace loco::cli
