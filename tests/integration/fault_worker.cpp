// One peer of the seeded all-reduce fault test (allreduce_fault_test.cpp): joins the group and
// all-reduces in rounds until it is killed, appending one line per operation to its result file
// so that the driver can judge every outcome afterwards, including those of peers it killed.
//
// Round: syncPoint (not before the first round: admission is one), a prologue (two small operations
// in flight: MAX of the rounds this peer has seen committed, SUM of [1, c]) that tells every member
// which round to run and who takes part, then the round's operations (one, or several in flight),
// each waited on with a deadline. Inputs are small integers derived from (seed, round, operation,
// peer), so every member can compute the exact expected sum from the prologue's result (world and
// Σc) and check it. A round that fails is retried with the restored buffers, as they are, after the
// next sync point.
//
// Result lines (space-separated):
//   op EPOCH ISSUE_EPOCH ROUND K N WIRE CODE IN_HASH OUT_HASH RESTORED EXPECT T_US ATTEMPT WORLD
//     K < 0 for the prologue; RESTORED 1/0 (failures; -1 on success); EXPECT 1/0 (successes;
//     -1 when not checkable); T_US: steady clock when wait() returned.
//   sync CODE T_US     a failed sync point
//   member EPOCH T_US  admitted
// Exit codes: 2 could not join, 3 lost the group, 4 an operation outlived its deadline (a hang).
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "collectives/communicator.h"
#include "p2p/base/log.h"

namespace {

using loco::Clock;
using loco::Deadline;
using loco::Millis;
using loco::Status;
using loco::StatusCode;
using loco::collectives::Communicator;
using loco::collectives::DType;
using loco::collectives::ReduceOp;
using loco::collectives::Wire;

std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t fnv1a(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

std::int64_t nowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch())
      .count();
}

struct OpSpec {
  std::size_t n;
  Wire wire;
};

// The round's operations: a pure function of (seed, round), so every member runs the same ones.
std::vector<OpSpec> schedule(std::uint64_t seed, std::uint64_t round, bool multi) {
  std::mt19937_64 rng(mix(seed ^ mix(round + 1)));
  const std::size_t count = multi ? 2 + rng() % 3 : 1;
  std::vector<OpSpec> ops;
  for (std::size_t k = 0; k < count; ++k) {
    // 1 Ki to 1 Mi elements (4 KiB to 4 MiB), never a round number: kills land in every phase.
    const std::size_t exp = 10 + rng() % (multi ? 10 : 11);
    const std::size_t n = (std::size_t{1} << exp) + rng() % 4099;
    const std::uint64_t w = rng() % 10;
    const Wire wire = w < 4    ? Wire::kRaw
                      : w == 4 ? Wire::kFp16
                      : w == 5 ? Wire::kBf16
                      : w < 8  ? Wire::kInt8
                               : Wire::kInt4;
    ops.push_back({n, wire});
  }
  return ops;
}

// Element i of operation k in round `round` on a peer with coefficient c: base + c·w with base in
// [-100, 100] and w in [-3, 3]. Sums over 4 peers stay below 2^11, so fp32 and fp16 carry them
// exactly and the expected result is exact whatever the order of additions.
void element(std::uint64_t seed, std::uint64_t round, std::size_t k, std::size_t i, int& base,
             int& w) {
  const std::uint64_t v = mix(mix(seed ^ (round << 8) ^ k) + i);
  base = static_cast<int>(v % 201) - 100;
  w = static_cast<int>((v >> 32) % 7) - 3;
}

std::vector<float> makeInput(std::uint64_t seed, std::uint64_t round, std::size_t k, std::size_t n,
                             int c) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    int base, w;
    element(seed, round, k, i, base, w);
    v[i] = static_cast<float>(base + c * w);
  }
  return v;
}

// 1: the result is the sum over `world` members whose coefficients add up to `csum`; 0: it is not.
// Exact for raw and fp16; within a generous relative RMS error for the lossy wires.
int checkExpected(const std::vector<float>& got, std::uint64_t seed, std::uint64_t round,
                  std::size_t k, Wire wire, int world, int csum) {
  double err = 0, norm = 0;
  bool exact = true;
  for (std::size_t i = 0; i < got.size(); ++i) {
    int base, w;
    element(seed, round, k, i, base, w);
    const double want = static_cast<double>(world * base + csum * w);
    exact = exact && got[i] == static_cast<float>(want);
    err += (got[i] - want) * (got[i] - want);
    norm += want * want;
  }
  if (wire == Wire::kRaw || wire == Wire::kFp16) return exact ? 1 : 0;
  const double rel = norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
  const double bound = wire == Wire::kBf16 ? 1e-2 : wire == Wire::kInt8 ? 4e-2 : 0.35;
  return std::isfinite(rel) && rel < bound ? 1 : 0;
}

std::string flag(int argc, char** argv, const std::string& name, const std::string& fallback = "") {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return argv[i + 1];
  }
  return fallback;
}

int codeOf(const Status& st) {
  return static_cast<int>(st.code());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string id = flag(argc, argv, "id");
  const std::uint64_t seed = std::stoull(flag(argc, argv, "seed", "1"));
  const bool multi = flag(argc, argv, "mode", "single") == "multi";
  const Millis op_timeout(std::stoll(flag(argc, argv, "op-timeout-ms", "8000")));
  loco::configureLogging(loco::LogLevel::kWarn, loco::LogFormat::kText,
                         "worker " + id.substr(0, 8));
  auto coordinator = loco::p2p::parseHostPort(flag(argc, argv, "coordinator"));
  std::FILE* out = std::fopen(flag(argc, argv, "out").c_str(), "a");
  if (!coordinator || out == nullptr) {
    std::fprintf(
        stderr,
        "usage: loco_fault_worker --coordinator HOST:PORT --id HEX32 --out FILE [--seed N] "
        "[--mode single|multi] [--op-timeout-ms MS]\n");
    return 2;
  }
  auto emit = [out](const std::string& line) {
    std::fputs(line.c_str(), out);
    std::fflush(out);  // the driver reads the file after a SIGKILL
  };

  loco::collectives::CommunicatorOptions o;
  o.coordinator = *coordinator;
  o.peer_id = id;
  o.listen = {"127.0.0.1", 0};
  o.streams = 2;
  o.chunk_bytes = 256u << 10;
  auto created = Communicator::create(o, Deadline::after(Millis(20000)));
  if (!created) {
    std::fprintf(stderr, "create: %s\n", created.status().toString().c_str());
    return 2;
  }
  Communicator& comm = **created;
  if (Status st = comm.waitForMembership(Deadline::after(Millis(30000))); !st.isOk()) {
    std::fprintf(stderr, "membership: %s\n", st.toString().c_str());
    return 2;
  }
  emit(fmt::format("member {} {}\n", comm.epoch(), nowUs()));

  const int c = static_cast<int>(1 + mix(std::hash<std::string>{}(id)) % 16);
  loco::collectives::AllReduceOptions aopts;
  aopts.timeout = op_timeout;
  const Millis wait_for = op_timeout + Millis(2000);
  std::uint64_t committed = 0;  // rounds this peer has seen commit
  std::uint64_t attempt = 0;    // failed attempts at the current round
  std::vector<std::vector<float>>
      retained;  // a failed round's restored buffers, retried as they are
  const auto started = Clock::now();

  // Admission happens at a sync point of the members: a newcomer's first round follows it
  // directly, like the members' (a syncPoint here would wait for the barrier after it).
  bool admitted_here = true;
  for (int iteration = 0; iteration < 1000000 && Clock::now() - started < std::chrono::minutes(20);
       ++iteration) {
    auto synced = admitted_here ? loco::Result<std::uint64_t>(comm.epoch())
                                : comm.syncPoint(Deadline::after(Millis(20000)));
    admitted_here = false;
    if (!synced) {
      emit(fmt::format("sync {} {}\n", codeOf(synced.status()), nowUs()));
      const StatusCode code = synced.status().code();
      if (code == StatusCode::kEvicted || code == StatusCode::kPeerLost) {
        std::fprintf(stderr, "lost the group: %s\n", synced.status().toString().c_str());
        return 3;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    const std::uint64_t epoch = *synced;

    // Runs `bufs` as operations in flight at once; returns each one's status and when its wait
    // returned. A wait that outlives the deadline is a hang: the process says so and exits.
    auto run = [&](std::vector<std::vector<float>>& bufs, const std::vector<ReduceOp>& reds,
                   const std::vector<Wire>& wires, std::vector<Status>& st,
                   std::vector<std::int64_t>& t, std::uint64_t& issue_epoch) {
      issue_epoch = comm.epoch();
      std::vector<std::shared_ptr<loco::collectives::Operation>> ops(bufs.size());
      st.assign(bufs.size(), Status());
      t.assign(bufs.size(), 0);
      for (std::size_t k = 0; k < bufs.size(); ++k) {
        auto h =
            comm.allReduce(bufs[k].data(), bufs[k].size(), DType::kF32, reds[k], wires[k], aopts);
        if (h) {
          ops[k] = *h;
        } else {
          st[k] = h.status();
          t[k] = nowUs();
        }
      }
      for (std::size_t k = 0; k < bufs.size(); ++k) {
        if (!ops[k]) continue;
        st[k] = ops[k]->wait(Deadline::after(wait_for));
        t[k] = nowUs();
        if (!ops[k]->finished()) {
          emit(fmt::format("hang {} {} {}\n", epoch, k, nowUs()));
          std::fprintf(stderr, "operation %zu of epoch %llu still running after %lld ms\n", k,
                       static_cast<unsigned long long>(epoch),
                       static_cast<long long>(wait_for.count()));
          std::fflush(stderr);
          std::_Exit(4);
        }
      }
    };

    // Prologue: which round (the highest any member has seen commit) and who takes part.
    std::vector<std::vector<float>> pro = {std::vector<float>(64, 0.0f),
                                           std::vector<float>(64, 0.0f)};
    pro[0][0] = static_cast<float>(committed);
    pro[1][0] = 1.0f;
    pro[1][1] = static_cast<float>(c);
    const auto pro_in = pro;
    std::vector<Status> st;
    std::vector<std::int64_t> t;
    std::uint64_t issue_epoch = 0;
    run(pro, {ReduceOp::kMax, ReduceOp::kSum}, {Wire::kRaw, Wire::kRaw}, st, t, issue_epoch);
    bool pro_ok = true;
    for (std::size_t k = 0; k < 2; ++k) {
      const bool ok = st[k].isOk();
      pro_ok = pro_ok && ok;
      emit(fmt::format("op {} {} {} {} {} {} {} {:016x} {:016x} {} {} {} {} {}\n", epoch,
                       issue_epoch, committed, -1 - static_cast<int>(k), 64, "raw", codeOf(st[k]),
                       fnv1a(pro_in[k].data(), 256), fnv1a(pro[k].data(), 256),
                       ok ? -1 : (pro[k] == pro_in[k] ? 1 : 0), -1, t[k], 0,
                       ok ? static_cast<int>(pro[1][0]) : 0));
    }
    if (!pro_ok) continue;
    const auto round = static_cast<std::uint64_t>(pro[0][0]);
    const int world = static_cast<int>(pro[1][0]);
    const int csum = static_cast<int>(pro[1][1]);
    if (round != committed) {
      retained.clear();  // a newcomer catching up: it has nothing to retry
      attempt = 0;
    }
    committed = round;

    const auto specs = schedule(seed, round, multi);
    std::vector<std::vector<float>> bufs(specs.size());
    std::vector<ReduceOp> reds(specs.size(), ReduceOp::kSum);
    std::vector<Wire> wires;
    std::vector<std::uint64_t> in_hash;
    for (std::size_t k = 0; k < specs.size(); ++k) {
      if (k < retained.size() && retained[k].size() == specs[k].n) {
        bufs[k] = std::move(retained[k]);  // the retry: exactly the restored buffer
      } else {
        bufs[k] = makeInput(seed, round, k, specs[k].n, c);
      }
      wires.push_back(specs[k].wire);
      in_hash.push_back(fnv1a(bufs[k].data(), bufs[k].size() * 4));
    }
    run(bufs, reds, wires, st, t, issue_epoch);
    bool all_ok = true;
    for (std::size_t k = 0; k < specs.size(); ++k) {
      const bool ok = st[k].isOk();
      all_ok = all_ok && ok;
      int restored = -1, expect = -1;
      if (ok) {
        expect = checkExpected(bufs[k], seed, round, k, specs[k].wire, world, csum);
      } else {
        restored = bufs[k] == makeInput(seed, round, k, specs[k].n, c) ? 1 : 0;
      }
      emit(fmt::format(
          "op {} {} {} {} {} {} {} {:016x} {:016x} {} {} {} {} {}\n", epoch, issue_epoch, round, k,
          specs[k].n, loco::collectives::wireName(specs[k].wire), codeOf(st[k]), in_hash[k],
          fnv1a(bufs[k].data(), bufs[k].size() * 4), restored, expect, t[k], attempt, world));
    }
    if (all_ok) {
      committed = round + 1;
      attempt = 0;
      retained.clear();
    } else {
      // Failed operations were restored and are retried as they are; the others hold results and
      // are made afresh.
      ++attempt;
      retained = std::move(bufs);
      for (std::size_t k = 0; k < specs.size(); ++k) {
        if (st[k].isOk()) retained[k].clear();
      }
    }
  }
  return 0;
}
