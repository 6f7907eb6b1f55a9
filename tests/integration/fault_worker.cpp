// One peer of the seeded all-reduce fault test (allreduce_fault_test.cpp): joins the group and
// all-reduces in rounds until it is killed, appending one line per operation to its result file
// so that the driver can judge every outcome afterwards, including those of peers it killed.
//
// Round: syncPoint (not before the first round: admission is one), a prologue (two small operations
// in flight: MAX of the rounds this peer has seen committed, SUM of [1, c]) that tells every member
// which round to run and who takes part, then the round's operations (one, or several in flight),
// each waited on with a deadline. Each operation's algorithm is drawn too (auto by size, or a
// forced ring, scatter-gather or direct), and with them, in flight, every member exchanges a
// buffer with its neighbour in ring order (pairs; a triple for an odd world): the average of the
// group's inputs, which every member can compute from the partners' ids. Inputs are small integers
// derived from (seed, round, operation, peer), so every member can compute the exact expected sum
// from the prologue's result (world and Σc) and check it. A round that fails is retried with the
// restored buffers, as they are, after the next sync point.
//
// Result lines (space-separated):
//   op EPOCH ISSUE_EPOCH ROUND K N WIRE CODE IN_HASH OUT_HASH RESTORED EXPECT T_US ATTEMPT WORLD
//      ALGORITHM (as requested: auto, ring, scatter-gather or direct; exchange)
//     K < 0 for the prologue, K >= 100 for the exchange (100 + its group); RESTORED 1/0 (failures;
//     -1 on success); EXPECT 1/0 (successes; -1 when not checkable); T_US: steady clock when wait()
//     returned.
//   sync CODE T_US     a failed sync point
//   member EPOCH T_US  admitted
// Exit codes: 2 could not join, 3 lost the group, 4 an operation outlived its deadline (a hang).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
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
  loco::collectives::AllReduceAlgorithm algorithm;
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
    using loco::collectives::AllReduceAlgorithm;
    const std::uint64_t a = rng() % 8;
    const AllReduceAlgorithm algorithm = a < 4    ? AllReduceAlgorithm::kAuto
                                         : a < 6  ? AllReduceAlgorithm::kRing
                                         : a == 6 ? AllReduceAlgorithm::kScatterGather
                                                  : AllReduceAlgorithm::kDirect;
    ops.push_back({n, wire, algorithm});
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

// A member's exchange input in `round`: small integers from its id, so its partners can compute
// it too.
std::vector<float> exchangeInput(std::uint64_t seed, std::uint64_t round, const std::string& id,
                                 std::size_t n) {
  const std::uint64_t h = mix(seed ^ mix(round * 7 + 3) ^ std::hash<std::string>{}(id));
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>(mix(h + i) % 201) - 100.0f;
  return v;
}

// This peer's exchange group among `ring` (ids in ring order): consecutive pairs, the last three
// together when the world is odd. Returns its index and its member ids.
std::pair<int, std::vector<std::string>> exchangeGroup(const std::vector<std::string>& ring,
                                                       const std::string& self) {
  const std::size_t n = ring.size();
  const std::size_t me =
      static_cast<std::size_t>(std::find(ring.begin(), ring.end(), self) - ring.begin());
  if (n < 2 || me >= n) return {-1, {}};
  std::size_t first = me / 2 * 2;
  if (n % 2 == 1 && first + 3 >= n + 1) first = n - 3;  // the last group takes three
  const std::size_t size = n % 2 == 1 && first == n - 3 ? 3 : 2;
  return {static_cast<int>(first / 2),
          std::vector<std::string>(ring.begin() + first, ring.begin() + first + size)};
}

// The average the exchange must produce: member inputs summed in id order, then divided, in
// float, exactly as the exchange computes it.
std::vector<float> exchangeExpected(std::uint64_t seed, std::uint64_t round,
                                    std::vector<std::string> members, std::size_t n) {
  std::sort(members.begin(), members.end());
  std::vector<float> acc = exchangeInput(seed, round, members[0], n);
  for (std::size_t m = 1; m < members.size(); ++m) {
    const auto in = exchangeInput(seed, round, members[m], n);
    for (std::size_t i = 0; i < n; ++i) acc[i] += in[i];
  }
  for (float& x : acc) x = members.size() == 2 ? x * 0.5f : x / 3.0f;
  return acc;
}

int codeOf(const Status& st) {
  return static_cast<int>(st.code());
}

// --mode exchange (the exchange fault test): exchanges an 8 Mi-element buffer (32 MiB) with its
// ring neighbour, again and again, until killed; a line per exchange:
//   x CODE T_US RESTORED EXPECT   (RESTORED: failures, send and recv untouched; EXPECT:
//                                  successes, recv is the exact average)
// After a failure it meets the others at a sync point and goes on with whoever is left (alone:
// it only syncs).
int exchangeLoop(Communicator& comm, std::uint64_t seed,
                 const std::function<void(const std::string&)>& emit) {
  constexpr std::size_t n = std::size_t{8} << 20;
  // Inputs do not change from round to round: checking takes little time next to the exchange,
  // so a kill at a random moment lands inside one.
  const std::vector<float> input = exchangeInput(seed, 0, comm.peerId(), n);
  std::vector<std::string> expected_for;
  std::vector<float> expected;
  std::vector<float> send = input, recv(n);
  const auto started = Clock::now();
  bool admitted_here = true;
  while (Clock::now() - started < std::chrono::minutes(10)) {
    if (!admitted_here) {
      auto synced = comm.syncPoint(Deadline::after(Millis(20000)));
      if (!synced) {
        const StatusCode code = synced.status().code();
        if (code == StatusCode::kEvicted || code == StatusCode::kPeerLost) return 3;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
    }
    admitted_here = false;
    auto [group_index, members] = exchangeGroup(comm.ring(), comm.peerId());
    if (group_index < 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    if (members != expected_for) {
      expected = exchangeExpected(seed, 0, members, n);
      expected_for = members;
    }
    std::fill(recv.begin(), recv.end(), -12345.0f);
    auto h = comm.exchange(members, send, recv, Wire::kRaw, Deadline::after(Millis(20000)));
    const Status st = h ? (*h)->wait(Deadline::after(Millis(30000))) : h.status();
    const std::int64_t t = nowUs();
    if (h && !(*h)->finished()) {
      emit(fmt::format("hang {}\n", t));
      std::_Exit(4);
    }
    const bool send_intact = send == input;
    int restored = -1, expect = -1;
    if (st.isOk()) {
      expect = send_intact && recv == expected ? 1 : 0;
    } else {
      restored = send_intact && std::all_of(recv.begin(), recv.end(),
                                            [](float x) { return x == -12345.0f; })
                     ? 1
                     : 0;
    }
    emit(fmt::format("x {} {} {} {}\n", codeOf(st), t, restored, expect));
  }
  return 0;
}

std::string flag(int argc, char** argv, const std::string& name, const std::string& fallback = "") {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return argv[i + 1];
  }
  return fallback;
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
        "[--mode single|multi|exchange] [--op-timeout-ms MS]\n");
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
  if (flag(argc, argv, "mode", "single") == "exchange") return exchangeLoop(comm, seed, emit);

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

    // Runs `bufs` (and the exchange `ex`, if any) as operations in flight at once; returns each
    // one's status and when its wait returned. A wait that outlives the deadline is a hang: the
    // process says so and exits.
    struct ExchangeRun {
      std::vector<std::string> members;
      std::vector<float> send, recv;
      Status st;
      std::int64_t t = 0;
    };
    auto run = [&](std::vector<std::vector<float>>& bufs, const std::vector<ReduceOp>& reds,
                   const std::vector<Wire>& wires,
                   const std::vector<loco::collectives::AllReduceAlgorithm>& algorithms,
                   std::vector<Status>& st, std::vector<std::int64_t>& t,
                   std::uint64_t& issue_epoch, ExchangeRun* ex) {
      issue_epoch = comm.epoch();
      std::vector<std::shared_ptr<loco::collectives::Operation>> ops(bufs.size() + 1);
      st.assign(bufs.size(), Status());
      t.assign(bufs.size(), 0);
      for (std::size_t k = 0; k < bufs.size(); ++k) {
        auto o = aopts;
        if (k < algorithms.size()) o.algorithm = algorithms[k];
        auto h = comm.allReduce(bufs[k].data(), bufs[k].size(), DType::kF32, reds[k], wires[k], o);
        if (h) {
          ops[k] = *h;
        } else {
          st[k] = h.status();
          t[k] = nowUs();
        }
      }
      if (ex != nullptr) {
        auto h =
            comm.exchange(ex->members, ex->send, ex->recv, Wire::kRaw, Deadline::after(op_timeout));
        if (h) {
          ops.back() = *h;
        } else {
          ex->st = h.status();
          ex->t = nowUs();
        }
      }
      for (std::size_t k = 0; k < ops.size(); ++k) {
        if (!ops[k]) continue;
        Status result = ops[k]->wait(Deadline::after(wait_for));
        const std::int64_t when = nowUs();
        if (k < bufs.size()) {
          st[k] = result;
          t[k] = when;
        } else {
          ex->st = result;
          ex->t = when;
        }
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
    run(pro, {ReduceOp::kMax, ReduceOp::kSum}, {Wire::kRaw, Wire::kRaw}, {}, st, t, issue_epoch,
        nullptr);
    bool pro_ok = true;
    for (std::size_t k = 0; k < 2; ++k) {
      const bool ok = st[k].isOk();
      pro_ok = pro_ok && ok;
      emit(fmt::format("op {} {} {} {} {} {} {} {:016x} {:016x} {} {} {} {} {} {}\n", epoch,
                       issue_epoch, committed, -1 - static_cast<int>(k), 64, "raw", codeOf(st[k]),
                       fnv1a(pro_in[k].data(), 256), fnv1a(pro[k].data(), 256),
                       ok ? -1 : (pro[k] == pro_in[k] ? 1 : 0), -1, t[k], 0,
                       ok ? static_cast<int>(pro[1][0]) : 0, "auto"));
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
    std::vector<loco::collectives::AllReduceAlgorithm> algorithms;
    std::vector<std::uint64_t> in_hash;
    for (std::size_t k = 0; k < specs.size(); ++k) {
      if (k < retained.size() && retained[k].size() == specs[k].n) {
        bufs[k] = std::move(retained[k]);  // the retry: exactly the restored buffer
      } else {
        bufs[k] = makeInput(seed, round, k, specs[k].n, c);
      }
      wires.push_back(specs[k].wire);
      algorithms.push_back(specs[k].algorithm);
      in_hash.push_back(fnv1a(bufs[k].data(), bufs[k].size() * 4));
    }
    // The exchange: this peer's group in ring order; n from the round.
    auto [group_index, members] = exchangeGroup(comm.ring(), id);
    const std::size_t ex_n = 1000 + mix(seed ^ mix(round + 99)) % 60000;
    ExchangeRun ex;
    const bool exchanging = group_index >= 0;
    if (exchanging) {
      ex.members = members;
      ex.send = exchangeInput(seed, round, id, ex_n);
      ex.recv.assign(ex_n, -12345.0f);  // untouched unless the exchange commits
    }
    run(bufs, reds, wires, algorithms, st, t, issue_epoch, exchanging ? &ex : nullptr);
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
      emit(fmt::format("op {} {} {} {} {} {} {} {:016x} {:016x} {} {} {} {} {} {}\n", epoch,
                       issue_epoch, round, k, specs[k].n,
                       loco::collectives::wireName(specs[k].wire), codeOf(st[k]), in_hash[k],
                       fnv1a(bufs[k].data(), bufs[k].size() * 4), restored, expect, t[k], attempt,
                       world, loco::collectives::allReduceAlgorithmName(specs[k].algorithm)));
    }
    if (exchanging) {
      const bool ok = ex.st.isOk();
      all_ok = all_ok && ok;
      int restored = -1, expect = -1;
      const bool send_intact = ex.send == exchangeInput(seed, round, id, ex_n);
      if (ok) {
        expect = send_intact && ex.recv == exchangeExpected(seed, round, members, ex_n) ? 1 : 0;
      } else {
        restored = send_intact && ex.recv == std::vector<float>(ex_n, -12345.0f) ? 1 : 0;
      }
      emit(fmt::format("op {} {} {} {} {} {} {} {:016x} {:016x} {} {} {} {} {} {}\n", epoch,
                       issue_epoch, round, 100 + group_index, ex_n, "raw", codeOf(ex.st),
                       fnv1a(ex.send.data(), ex_n * 4), fnv1a(ex.recv.data(), ex_n * 4), restored,
                       expect, ex.t, attempt, world, "exchange"));
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
