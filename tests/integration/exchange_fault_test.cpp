// The exchange's failure path with real processes (collectives/exchange.h): two
// loco_fault_worker peers exchange 32 MiB buffers back to back (--mode exchange); the driver
// SIGKILLs or SIGSTOPs one of them mid-exchange. The survivor must get an error, its buffers
// back untouched, within the heartbeat timeout (at once for a kill: its link breaks), and no
// exchange may ever succeed with a wrong result or hang.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <random>
#include <sstream>
#include <thread>

#include "tests/support/process.h"

namespace loco::testing {
namespace {

std::int64_t nowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Line {
  int code;
  std::int64_t t_us;
  int restored, expect;
};

std::vector<Line> readLines(const std::string& path, int& hangs) {
  std::vector<Line> out;
  std::istringstream in(readFile(path));
  std::string line;
  while (std::getline(in, line)) {
    if (in.eof()) break;  // cut by a kill
    std::istringstream f(line);
    std::string kind;
    f >> kind;
    if (kind == "hang") ++hangs;
    Line l;
    if (kind == "x" && f >> l.code >> l.t_us >> l.restored >> l.expect) out.push_back(l);
  }
  return out;
}

constexpr int kHeartbeatTimeoutMs = 1500;

// One signal to one of two exchanging peers. Returns false when it landed between two exchanges
// (at the sync point, or after the commit of the one in flight): the survivor then carries on
// alone, and the case says nothing.
bool runCase(bool stop, int attempt, std::mt19937& rng) {
  SCOPED_TRACE(fmt::format("{} #{}", stop ? "SIGSTOP" : "SIGKILL", attempt));
  TempDir dir;
  CoordinatorProcess coordinator(dir, 200, kHeartbeatTimeoutMs);
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    workers.push_back(std::make_unique<Process>(
        LOCO_FAULT_WORKER,
        std::vector<std::string>{"--coordinator", coordinator.address(), "--id",
                                 fmt::format("{:032x}", 0xe0 + w), "--seed",
                                 std::to_string(attempt), "--mode", "exchange", "--out",
                                 dir.file(fmt::format("w{}", w))},
        dir.file(fmt::format("w{}.log", w))));
  }
  // Running: both members, and a few exchanges committed.
  EXPECT_TRUE(eventually(milliseconds(30000),
                         [&] { return coordinator.counter("coord.ops_committed") >= 3; }))
      << workers[0]->log() << workers[1]->log();
  // Anywhere in the cycle of sync point and exchange (about 100-300 ms here).
  std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 300));
  const std::int64_t t_signal = nowUs();
  const auto signalled = std::chrono::steady_clock::now();
  workers[1]->signal(stop ? SIGSTOP : SIGKILL);
  // The survivor's exchange in flight fails; it writes the line when its wait returns.
  int hangs = 0;
  const Line* failed = nullptr;
  std::vector<Line> lines;
  bool alone = false;
  EXPECT_TRUE(eventually(milliseconds(kHeartbeatTimeoutMs + 8000),
                         [&] {
                           hangs = 0;
                           lines = readLines(dir.file("w0"), hangs);
                           for (const Line& l : lines) {
                             if (l.t_us >= t_signal && l.code != 0) {
                               failed = &l;
                               return true;
                             }
                           }
                           // Alone, with no failure: the signal landed at a sync point, or after
                           // the exchange in flight had committed.
                           auto v = coordinator.view();
                           alone = v && v->world() == 1 &&
                                   secondsSince(signalled) > kHeartbeatTimeoutMs / 1000.0 + 1.5;
                           return alone;
                         }))
      << "the survivor's exchange neither failed nor went on alone; " << lines.size() << " lines\n"
      << workers[0]->log();
  if (failed == nullptr) {
    std::printf("landed between exchanges; t_signal %lld; survivor lines:",
                static_cast<long long>(t_signal));
    for (const Line& l : lines) std::printf(" (%d %lld)", l.code, static_cast<long long>(l.t_us));
    std::printf("\n");
    if (stop) workers[1]->signal(SIGCONT);
    return false;
  }
  const double ms = static_cast<double>(failed->t_us - t_signal) / 1000.0;
  std::printf("{\"test\":\"exchange_fault\",\"signal\":\"%s\",\"survivor_failed_after_ms\":%.1f}\n",
              stop ? "SIGSTOP" : "SIGKILL", ms);
  EXPECT_EQ(failed->restored, 1) << "the survivor's buffers were not left untouched";
  // A kill breaks the link at once; a stop is found by the heartbeat timeout (plus a tick).
  EXPECT_LT(ms, stop ? kHeartbeatTimeoutMs + 1500.0 : 1000.0);
  for (const Line& l : lines) {
    if (l.code == 0) EXPECT_EQ(l.expect, 1) << "an exchange succeeded with a wrong result";
    if (l.code != 0) EXPECT_EQ(l.restored, 1) << "a failed exchange changed a buffer";
  }
  // The stopped peer, woken, must never have applied what the survivor did not.
  // Both members apply every exchange or neither: once it has written its outcome, it has
  // exactly as many successes as the survivor.
  if (stop) {
    workers[1]->signal(SIGCONT);
    auto successes = [&](const std::string& file, int& h) {
      int n = 0;
      for (const Line& l : readLines(dir.file(file), h)) n += l.code == 0 ? 1 : 0;
      return n;
    };
    int h0 = 0, h1 = 0;
    const int survivor = successes("w0", h0);
    EXPECT_TRUE(eventually(milliseconds(5000),
                           [&] {
                             h1 = 0;
                             return successes("w1", h1) == survivor &&
                                    readLines(dir.file("w1"), h1).size() >=
                                        readLines(dir.file("w0"), h0).size() - 1;
                           }))
        << "the woken peer's successes differ from the survivor's (" << survivor << ")\n"
        << workers[1]->log();
    for (const Line& l : readLines(dir.file("w1"), h1)) {
      if (l.code == 0) EXPECT_EQ(l.expect, 1);
      if (l.code != 0) EXPECT_EQ(l.restored, 1);
    }
    hangs += h1;
  }
  EXPECT_EQ(hangs, 0);
  return true;
}

TEST(ExchangeFault, APartnerKilledOrStoppedMidExchangeLeavesTheSurvivorUntouchedInTime) {
  std::mt19937 rng(20261130);
  for (bool stop : {false, true}) {
    int landed = 0;
    for (int attempt = 0; attempt < 12 && landed < 3; ++attempt) {
      landed += runCase(stop, attempt, rng) ? 1 : 0;
      if (HasFailure()) return;
    }
    EXPECT_EQ(landed, 3) << "too few signals landed inside an exchange";
  }
}

}  // namespace
}  // namespace loco::testing
