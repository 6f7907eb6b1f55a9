// The collective algorithms and the operation engine over the in-memory transport
// (collectives/memory_transport.h): piece arithmetic, results, bit-identity, commit and abort,
// restore-on-abort, deaths and stalls at every point of an operation, without sockets or
// processes. A fake arbiter plays the coordinator: it commits an operation when every member
// taking part reported it done and aborts it on a failure report or a membership change.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "collectives/allreduce.h"
#include "collectives/compress.h"
#include "collectives/descriptor.h"
#include "collectives/exchange.h"
#include "collectives/memory_transport.h"
#include "collectives/op_engine.h"
#include "collectives/ring_allreduce.h"

namespace loco::collectives {
namespace {

std::string idOf(std::size_t rank) {
  return fmt::format("peer{:02}", rank);
}

// N engines on one MemoryNetwork, a fake arbiter, and the epoch's members.
class World {
 public:
  // seed 0: messages arrive in order; otherwise they overtake each other, as on a link's streams.
  explicit World(std::size_t n, std::uint64_t seed = 1) : net_(n, seed) {
    for (std::size_t r = 0; r < n; ++r) members_.push_back(r);
    for (std::size_t r = 0; r < n; ++r) {
      arbiters_.push_back(std::make_unique<RankArbiter>(*this, r));
      engines_.push_back(std::make_unique<OpEngine>(
          net_.transport(r), *arbiters_[r], [this, r](std::uint64_t epoch) -> Result<PeerGroup> {
            if (epoch != epoch_) return Status(StatusCode::kAborted, "the group changed");
            PeerGroup g;
            g.epoch = epoch;
            for (std::size_t m : members_) {
              if (m == r) g.rank = g.ids.size();
              g.ids.push_back(idOf(m));
            }
            return g;
          }));
    }
  }

  MemoryNetwork& net() { return net_; }
  OpEngine& engine(std::size_t r) { return *engines_[r]; }
  std::uint64_t epoch() const { return epoch_; }
  const std::vector<std::size_t>& members() const { return members_; }

  // Submits `op` on rank r as the communicator would (op ids per epoch, in issue order).
  std::shared_ptr<Operation::State> submit(std::size_t r, std::shared_ptr<Collective> op,
                                           std::uint64_t seq) {
    op->epoch = epoch_;
    op->op_id = (epoch_ << 32) | seq;
    op->tag_base = (op->op_id & 0xFFFFFFFFull) << 20;
    op->timeout = Millis(5000);
    auto h = op->handle;
    engines_[r]->submit(std::move(op));
    return h;
  }

  // The coordinator removes `rank` (it died or was evicted): a new epoch, every open operation
  // aborted, every survivor told.
  void remove(std::size_t rank) {
    members_.erase(std::remove(members_.begin(), members_.end(), rank), members_.end());
    ++epoch_;
    for (auto& [op_id, st] : open_) decide(st.epoch, op_id, false);
    open_.clear();
    for (std::size_t m : members_) {
      net_.post(m, [this, m, e = epoch_] { engines_[m]->onEpoch(e); });
    }
  }

  std::size_t reports() const { return reports_; }

 private:
  struct OpState {
    std::uint64_t epoch;
    std::set<std::size_t> done;
    std::vector<std::string> members;
  };
  class RankArbiter final : public OpEngine::Arbiter {
   public:
    RankArbiter(World& w, std::size_t rank) : w_(w), rank_(rank) {}
    void report(std::uint64_t epoch, std::uint64_t op_id, bool ok,
                const std::vector<std::string>& members) override {
      w_.onReport(rank_, epoch, op_id, ok, members);
    }

   private:
    World& w_;
    std::size_t rank_;
  };

  void onReport(std::size_t rank, std::uint64_t epoch, std::uint64_t op_id, bool ok,
                const std::vector<std::string>& members) {
    ++reports_;
    if (epoch != epoch_ || aborted_.count(op_id) != 0 || !ok) {
      aborted_.insert(op_id);
      open_.erase(op_id);
      return decide(epoch, op_id, false);
    }
    auto [it, fresh] = open_.try_emplace(op_id, OpState{epoch, {}, members});
    it->second.done.insert(rank);
    const std::size_t need = members.empty() ? members_.size() : members.size();
    if (it->second.done.size() == need) {
      open_.erase(it);
      decide(epoch, op_id, true);
    }
  }

  // Decisions reach every member later, as the coordinator's broadcast would.
  void decide(std::uint64_t epoch, std::uint64_t op_id, bool commit) {
    for (std::size_t m = 0; m < engines_.size(); ++m) {
      net_.post(m,
                [this, m, epoch, op_id, commit] { engines_[m]->onDecision(epoch, op_id, commit); });
    }
  }

  MemoryNetwork net_;
  std::vector<std::unique_ptr<RankArbiter>> arbiters_;
  std::vector<std::unique_ptr<OpEngine>> engines_;
  std::vector<std::size_t> members_;
  std::uint64_t epoch_ = 1;
  std::map<std::uint64_t, OpState> open_;
  std::set<std::uint64_t> aborted_;
  std::size_t reports_ = 0;
};

// Small integers: every sum is exact in fp32 whatever the order of additions.
std::vector<float> intInput(std::size_t n, std::size_t rank, std::uint32_t seed) {
  std::mt19937 rng(seed * 131 + static_cast<std::uint32_t>(rank));
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(static_cast<int>(rng() % 201) - 100);
  return v;
}

std::vector<float> gaussInput(std::size_t n, std::size_t rank, std::uint32_t seed) {
  std::mt19937 rng(seed * 131 + static_cast<std::uint32_t>(rank));
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

bool allFinished(const std::vector<std::shared_ptr<Operation::State>>& hs,
                 const std::vector<std::size_t>& ranks) {
  for (std::size_t r : ranks) {
    if (!hs[r]->finished) return false;
  }
  return true;
}

// ---- piece arithmetic ---------------------------------------------------------------------------

TEST(RingArithmetic, SegmentsTileTheBufferAndNeighboursAgreeOnEveryStep) {
  for (std::size_t n : {1u, 5u, 1000u, 65537u, 3000001u}) {
    for (std::size_t world = 1; world <= 9; ++world) {
      std::size_t next = 0;
      for (std::size_t s = 0; s < world; ++s) {
        auto [b, len] = RingAllReduce::segment(n, world, s);
        EXPECT_EQ(b, next);
        next = b + len;
      }
      EXPECT_EQ(next, n) << "n " << n << " world " << world;
      const std::size_t pieces = RingAllReduce::piecesPerSegment(n, world);
      EXPECT_GE(pieces, 1u);
      EXPECT_LE(pieces, 1024u);
      // Each piece of a segment holds at most 256 KiB of fp32 (the memory bound).
      EXPECT_LE((n / world + 1) / pieces, (std::size_t{1} << 16) + 1) << n << " " << world;
      if (world < 2) continue;
      for (std::size_t r = 0; r < world; ++r) {
        const std::size_t next_rank = (r + 1) % world;
        for (std::size_t step = 1; step <= 2 * world - 2; ++step) {
          EXPECT_EQ(RingAllReduce::sendSegment(world, r, step),
                    RingAllReduce::recvSegment(world, next_rank, step))
              << "world " << world << " rank " << r << " step " << step;
        }
        // After the reduce-scatter, peer r owns segment r+1 and sends it first.
        EXPECT_EQ(RingAllReduce::recvSegment(world, r, world - 1), (r + 1) % world);
        EXPECT_EQ(RingAllReduce::sendSegment(world, r, world), (r + 1) % world);
        // Over the all-gather every segment but the owned one arrives once.
        std::set<std::size_t> got{(r + 1) % world};
        for (std::size_t step = world; step <= 2 * world - 2; ++step)
          got.insert(RingAllReduce::recvSegment(world, r, step));
        EXPECT_EQ(got.size(), world);
      }
    }
  }
}

TEST(Descriptor, RoundTripsAndRejectsGarbage) {
  Descriptor d;
  d.count = 123456789012ull;
  d.dtype = DType::kBF16;
  d.op = ReduceOp::kMax;
  d.wire = Wire::kInt4;
  d.algorithm = Algorithm::kScatterGather;
  d.variant = 2;
  d.world = 7;
  d.quant_block = 1024;
  auto bytes = encodeDescriptor(d);
  ASSERT_EQ(bytes.size(), kDescriptorBytes);
  auto back = decodeDescriptor(bytes);
  ASSERT_TRUE(back.isOk()) << back.status().toString();
  EXPECT_EQ(*back, d);
  EXPECT_FALSE(decodeDescriptor(ByteSpan(bytes).first(kDescriptorBytes - 1)).isOk());
  auto bad = bytes;
  bad[11] = 9;  // algorithm
  EXPECT_EQ(decodeDescriptor(bad).status().code(), StatusCode::kProtocolError);
  Descriptor other = d;
  other.count -= 1;
  Status cmp = compareDescriptors(d, other);
  EXPECT_EQ(cmp.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(cmp.message().find("disagree"), std::string::npos);
  EXPECT_TRUE(compareDescriptors(d, d).isOk());
}

TEST(ChooseAlgorithm, BySizeAndWorld) {
  AllReduceArgs a;
  a.count = 1024;  // 4 KiB
  EXPECT_EQ(chooseAlgorithm(a, 1, true), Algorithm::kRing);
  EXPECT_EQ(chooseAlgorithm(a, 4, true), Algorithm::kDirect);
  a.count = 256 * 1024;  // 1 MiB
  EXPECT_EQ(chooseAlgorithm(a, 4, true), Algorithm::kScatterGather);
  EXPECT_EQ(chooseAlgorithm(a, 64, true), Algorithm::kRing);
  a.count = 2u << 20;  // 8 MiB: the largest scatter-gather
  EXPECT_EQ(chooseAlgorithm(a, 4, true), Algorithm::kScatterGather);
  a.count = 16u << 20;  // 64 MiB
  EXPECT_EQ(chooseAlgorithm(a, 4, true), Algorithm::kRing);
}

// Across hosts only the ring can be routed around a slow pair: the scatter-gather, which sends
// to every peer at once, is not chosen there at any size; tiny buffers still go direct.
TEST(ChooseAlgorithm, AcrossHostsTheRingReplacesTheScatterGather) {
  AllReduceArgs a;
  a.count = 1024;  // 4 KiB
  EXPECT_EQ(chooseAlgorithm(a, 4, false), Algorithm::kDirect);
  for (std::size_t count : {std::size_t{16} << 10, std::size_t{256} << 10, std::size_t{2} << 20}) {
    a.count = count;
    EXPECT_EQ(chooseAlgorithm(a, 4, true), Algorithm::kScatterGather) << count;
    EXPECT_EQ(chooseAlgorithm(a, 4, false), Algorithm::kRing) << count;
  }
}

// ---- results ------------------------------------------------------------------------------------

struct Case {
  Algorithm algorithm;
  std::size_t world;
  std::size_t n;
  Wire wire;
  ReduceOp op;
};

std::string name(const Case& c) {
  return fmt::format("{} N={} n={} wire={} op={}", algorithmName(c.algorithm), c.world, c.n,
                     wireName(c.wire), reduceOpName(c.op));
}

// Runs one all-reduce of `c` on every member; returns each member's buffer and status.
void runCase(const Case& c, std::vector<std::vector<float>>& bufs, std::vector<Status>& st,
             std::uint32_t seed, std::uint64_t order) {
  World w(c.world, order);
  bufs.assign(c.world, {});
  std::vector<std::shared_ptr<Operation::State>> hs(c.world);
  for (std::size_t r = 0; r < c.world; ++r) {
    bufs[r] = c.wire == Wire::kRaw || c.op != ReduceOp::kSum ? intInput(c.n, r, seed)
                                                             : gaussInput(c.n, r, seed);
    AllReduceArgs args{bufs[r].data(), c.n, DType::kF32, c.op, c.wire, kQuantBlock};
    hs[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, c.algorithm), 1);
  }
  ASSERT_TRUE(w.net().run([&] { return allFinished(hs, w.members()); })) << name(c);
  st.clear();
  for (auto& h : hs) st.push_back(h->status);
}

TEST(AllReduceAlgorithms, EveryAlgorithmGivesBitIdenticalCorrectResults) {
  std::vector<Case> cases;
  for (Algorithm a : {Algorithm::kRing, Algorithm::kDirect, Algorithm::kScatterGather}) {
    for (std::size_t world : {1u, 2u, 3u, 4u, 5u}) {
      for (std::size_t n : {1u, 7u, 1000u, 70001u}) {
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMin, ReduceOp::kMax})
          cases.push_back({a, world, n, Wire::kRaw, op});
        for (Wire wire : {Wire::kFp16, Wire::kBf16, Wire::kInt8, Wire::kInt4})
          cases.push_back({a, world, n, wire, ReduceOp::kSum});
      }
    }
  }
  // The ring with many pieces per segment (256 KiB each), more than are in flight.
  cases.push_back({Algorithm::kRing, 3, (48u << 20) / 4 + 13, Wire::kRaw, ReduceOp::kAvg});
  cases.push_back({Algorithm::kRing, 2, (40u << 20) / 4 + 3, Wire::kInt8, ReduceOp::kSum});
  for (const Case& c : cases) {
    SCOPED_TRACE(name(c));
    std::vector<std::vector<float>> bufs;
    std::vector<Status> st;
    runCase(c, bufs, st, 7, &c - cases.data());
    if (HasFatalFailure()) return;
    for (std::size_t r = 0; r < c.world; ++r) ASSERT_TRUE(st[r].isOk()) << st[r].toString();
    for (std::size_t r = 1; r < c.world; ++r)
      ASSERT_EQ(std::memcmp(bufs[0].data(), bufs[r].data(), c.n * 4), 0) << "peer " << r;
    // Against the inputs, regenerated.
    const bool ints = c.wire == Wire::kRaw || c.op != ReduceOp::kSum;
    std::vector<std::vector<float>> in;
    for (std::size_t r = 0; r < c.world; ++r)
      in.push_back(ints ? intInput(c.n, r, 7) : gaussInput(c.n, r, 7));
    double err = 0, norm = 0;
    bool exact = true;
    for (std::size_t i = 0; i < c.n; ++i) {
      double want = c.op == ReduceOp::kMin ? 1e30 : c.op == ReduceOp::kMax ? -1e30 : 0.0;
      for (std::size_t r = 0; r < c.world; ++r) {
        const double x = in[r][i];
        want = c.op == ReduceOp::kMin   ? std::min(want, x)
               : c.op == ReduceOp::kMax ? std::max(want, x)
                                        : want + x;
      }
      if (c.op == ReduceOp::kAvg) want /= static_cast<double>(c.world);
      exact = exact && bufs[0][i] == static_cast<float>(want);
      err += (bufs[0][i] - want) * (bufs[0][i] - want);
      norm += want * want;
    }
    if (c.wire == Wire::kRaw) {
      EXPECT_TRUE(exact);
    } else {
      const double bound = c.wire == Wire::kFp16   ? 1e-3
                           : c.wire == Wire::kBf16 ? 1e-2
                           : c.wire == Wire::kInt8 ? 3e-2
                                                   : 0.3;
      EXPECT_LT(std::sqrt(err / std::max(norm, 1e-30)), bound);
    }
  }
}

TEST(AllReduceAlgorithms, F16BuffersAreWrittenOnlyAtTheCommit) {
  World w(3);
  std::vector<std::vector<std::uint16_t>> bufs(3, std::vector<std::uint16_t>(5000));
  for (std::size_t r = 0; r < 3; ++r) {
    for (std::size_t i = 0; i < 5000; ++i) bufs[r][i] = floatToHalf(static_cast<float>(i % 7 + r));
  }
  std::vector<std::shared_ptr<Operation::State>> hs(3);
  for (std::size_t r = 0; r < 3; ++r) {
    AllReduceArgs args{bufs[r].data(), 5000, DType::kF16, ReduceOp::kSum, Wire::kRaw, kQuantBlock};
    hs[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, Algorithm::kRing), 1);
  }
  ASSERT_TRUE(w.net().run([&] { return allFinished(hs, w.members()); }));
  for (std::size_t r = 0; r < 3; ++r) {
    ASSERT_TRUE(hs[r]->status.isOk());
    for (std::size_t i = 0; i < 5000; ++i)
      ASSERT_EQ(halfToFloat(bufs[r][i]), static_cast<float>(3 * (i % 7) + 3));
  }
}

// ---- disagreement, deaths, stalls -------------------------------------------------------------

TEST(AllReduceAlgorithms, PeersThatDisagreeFailEverywhereWithTheirBuffersRestored) {
  for (Algorithm a : {Algorithm::kRing, Algorithm::kDirect, Algorithm::kScatterGather}) {
    SCOPED_TRACE(algorithmName(a));
    World w(4);
    std::vector<std::vector<float>> bufs(4);
    std::vector<std::shared_ptr<Operation::State>> hs(4);
    for (std::size_t r = 0; r < 4; ++r) {
      // Peer 2 has one element fewer; peer 3 runs another algorithm.
      bufs[r] = intInput(r == 2 ? 999 : 1000, r, 1);
      AllReduceArgs args{bufs[r].data(), bufs[r].size(), DType::kF32,
                         ReduceOp::kSum, Wire::kRaw,     kQuantBlock};
      const Algorithm mine =
          r == 3 ? (a == Algorithm::kRing ? Algorithm::kDirect : Algorithm::kRing) : a;
      hs[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, mine), 1);
    }
    ASSERT_TRUE(w.net().run([&] { return allFinished(hs, w.members()); }));
    bool named = false;
    for (std::size_t r = 0; r < 4; ++r) {
      EXPECT_FALSE(hs[r]->status.isOk()) << r;
      EXPECT_EQ(bufs[r], intInput(r == 2 ? 999 : 1000, r, 1)) << "peer " << r << " not restored";
      named = named || hs[r]->status.message().find("disagree") != std::string::npos;
    }
    EXPECT_TRUE(named);
  }
}

// A peer dies during its k-th send, for every k an operation has: the survivors all fail,
// every survivor gets its buffer back, and nobody hangs (the run ends with every survivor's
// operation finished, before any alarm: a dead link fails at once).
TEST(AllReduceAlgorithms, ADeathAtAnySendFailsEverySurvivorWithItsBufferRestored) {
  for (Algorithm a : {Algorithm::kRing, Algorithm::kDirect, Algorithm::kScatterGather}) {
    for (Wire wire : {Wire::kRaw, Wire::kInt8}) {
      const std::size_t n = a == Algorithm::kRing ? 200000 : 3000;
      for (std::size_t k = 1; k < 200; ++k) {
        SCOPED_TRACE(fmt::format("{} {} death at send {}", algorithmName(a), wireName(wire), k));
        World w(4);
        std::vector<std::vector<float>> bufs(4);
        std::vector<std::shared_ptr<Operation::State>> hs(4);
        const std::size_t victim = k % 4;
        w.net().killAfterSends(victim, k);
        for (std::size_t r = 0; r < 4; ++r) {
          bufs[r] = intInput(n, r, 3);
          AllReduceArgs args{bufs[r].data(), n, DType::kF32, ReduceOp::kSum, wire, kQuantBlock};
          hs[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, a), 1);
        }
        std::vector<std::size_t> survivors;
        for (std::size_t r = 0; r < 4; ++r)
          if (r != victim) survivors.push_back(r);
        const TimePoint t0 = w.net().now();
        ASSERT_TRUE(w.net().run([&] { return allFinished(hs, survivors); }));
        if (w.net().alive(victim)) {  // the operation needed fewer sends: it must have worked
          for (std::size_t r = 0; r < 4; ++r) ASSERT_TRUE(hs[r]->status.isOk());
          break;
        }
        EXPECT_EQ(w.net().now(), t0) << "a survivor waited for an alarm";
        for (std::size_t r : survivors) {
          const StatusCode code = hs[r]->status.code();
          EXPECT_TRUE(code == StatusCode::kPeerLost || code == StatusCode::kAborted)
              << hs[r]->status.toString();
          EXPECT_EQ(bufs[r], intInput(n, r, 3)) << "peer " << r << " not restored";
        }
      }
    }
  }
}

// Large f32 rings copy their backup on the caller's thread while the ring already runs
// (allreduce.h): whichever thread gets to a block first copies it. A death at any point must
// still restore every survivor's buffer exactly, and a success must be correct.
TEST(AllReduceAlgorithms, TheOverlappedBackupRestoresExactlyWhateverTheTiming) {
  const std::size_t n = (12u << 20) / 4 + 77;  // 12 MiB: 13 backup blocks
  for (std::size_t k : {0u, 3u, 17u, 40u, 90u, 100000u}) {
    SCOPED_TRACE(fmt::format("death at send {}", k));
    World w(4, k + 5);
    std::vector<std::vector<float>> bufs(4);
    std::vector<std::shared_ptr<Operation::State>> hs(4);
    std::vector<std::shared_ptr<AllReduce>> ops;
    const std::size_t victim = k % 4;
    if (k > 0) w.net().killAfterSends(victim, k);
    for (std::size_t r = 0; r < 4; ++r) {
      bufs[r] = intInput(n, r, 13);
      AllReduceArgs args{bufs[r].data(), n, DType::kF32, ReduceOp::kSum, Wire::kRaw, kQuantBlock};
      ops.push_back(makeAllReduce(w.engine(r).pool(), args, Algorithm::kRing));
      hs[r] = w.submit(r, ops.back(), 1);
    }
    // The callers' threads copy while the network runs.
    std::thread callers([&] {
      for (std::size_t r = 0; r < ops.size(); ++r) ops[r]->backupOnCallerThread(r, 4);
    });
    std::vector<std::size_t> survivors;
    for (std::size_t r = 0; r < 4; ++r)
      if (k == 0 || r != victim) survivors.push_back(r);
    const bool ran = w.net().run([&] { return allFinished(hs, survivors); });
    callers.join();
    ASSERT_TRUE(ran);
    std::vector<float> sum(n, 0.0f);
    for (std::size_t q = 0; q < 4; ++q) {
      const auto in = intInput(n, q, 13);
      for (std::size_t i = 0; i < n; ++i) sum[i] += in[i];
    }
    for (std::size_t r : survivors) {
      if (hs[r]->status.isOk()) {
        EXPECT_EQ(bufs[r], sum) << "peer " << r;
      } else {
        EXPECT_EQ(bufs[r], intInput(n, r, 13)) << "peer " << r << " not restored";
      }
    }
  }
}

// All members finished the data phase, then the coordinator aborts (a member was lost before
// it heard the verdict): everyone gets its buffer back, nobody keeps a result.
TEST(AllReduceAlgorithms, AnAbortAfterTheDataPhaseRestoresEveryone) {
  World w(3);
  std::vector<std::vector<float>> bufs(3);
  std::vector<std::shared_ptr<Operation::State>> hs(3);
  for (std::size_t r = 0; r < 3; ++r) {
    bufs[r] = intInput(5000, r, 9);
    AllReduceArgs args{bufs[r].data(), 5000, DType::kF32, ReduceOp::kSum, Wire::kRaw, kQuantBlock};
    hs[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, Algorithm::kRing), 1);
  }
  // Stop when two of three have reported: then a member is lost.
  ASSERT_TRUE(w.net().run([&] { return w.reports() >= 2; }));
  w.remove(2);
  ASSERT_TRUE(w.net().run([&] { return allFinished(hs, {0, 1}); }));
  for (std::size_t r : {0u, 1u}) {
    EXPECT_EQ(hs[r]->status.code(), StatusCode::kAborted) << hs[r]->status.toString();
    EXPECT_EQ(bufs[r], intInput(5000, r, 9));
  }
}

// A stalled peer (SIGSTOP): the others' operation ends when the coordinator evicts it (a new
// epoch), restored, long before the operation's own timeout.
TEST(AllReduceAlgorithms, AStalledPeerFailsTheOthersWhenItIsEvicted) {
  for (Algorithm a : {Algorithm::kRing, Algorithm::kScatterGather}) {
    World w(3);
    std::vector<std::vector<float>> bufs(3);
    std::vector<std::shared_ptr<Operation::State>> hs(3);
    w.net().stall(1);
    for (std::size_t r = 0; r < 3; ++r) {
      bufs[r] = intInput(4000, r, 5);
      AllReduceArgs args{bufs[r].data(), 4000,       DType::kF32,
                         ReduceOp::kSum, Wire::kRaw, kQuantBlock};
      hs[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, a), 1);
    }
    // Everything that can run has run: the others wait on the stalled peer.
    w.net().runPending();
    EXPECT_FALSE(hs[0]->finished);
    w.remove(1);  // the heartbeat timeout
    ASSERT_TRUE(w.net().run([&] { return allFinished(hs, {0, 2}); }));
    EXPECT_EQ(w.net().now(), TimePoint{}) << "the operation's own timeout fired";
    for (std::size_t r : {0u, 2u}) {
      // Aborted by the new epoch, or by the other survivor closing its links first.
      const StatusCode code = hs[r]->status.code();
      EXPECT_TRUE(code == StatusCode::kAborted || code == StatusCode::kPeerLost)
          << hs[r]->status.toString();
      EXPECT_EQ(bufs[r], intInput(4000, r, 5));
    }
  }
}

TEST(AllReduceAlgorithms, WithoutEvictionTheOperationTimesOutRestored) {
  World w(2);
  std::vector<std::vector<float>> bufs(2);
  std::vector<std::shared_ptr<Operation::State>> hs(2);
  w.net().stall(1);
  for (std::size_t r = 0; r < 2; ++r) {
    bufs[r] = intInput(100, r, 4);
    AllReduceArgs args{bufs[r].data(), 100, DType::kF32, ReduceOp::kSum, Wire::kRaw, kQuantBlock};
    hs[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, Algorithm::kDirect), 1);
  }
  ASSERT_TRUE(w.net().run([&] { return hs[0]->finished; }));
  EXPECT_EQ(hs[0]->status.code(), StatusCode::kTimeout);
  EXPECT_EQ(toMillis(w.net().now() - TimePoint{}), 5000);
  EXPECT_EQ(bufs[0], intInput(100, 0, 4));
}

// ---- exchange -----------------------------------------------------------------------------------

std::shared_ptr<Operation::State> submitExchange(World& w, std::size_t r,
                                                 std::vector<std::size_t> group,
                                                 std::span<const float> send, std::span<float> recv,
                                                 ExchangeMode mode, Wire wire, std::uint64_t seq) {
  auto op = std::make_shared<Exchange>(ExchangeArgs{send, recv, mode, wire, kQuantBlock});
  for (std::size_t m : group) op->members.push_back(idOf(m));
  std::sort(op->members.begin(), op->members.end());
  op->epoch = w.epoch();
  op->op_id = (std::uint64_t{1} << 63) | (seq << 8) | group[0];
  op->tag_base = (std::uint64_t{1} << 63) | (op->op_id & 0xFFFFF) << 20;
  op->timeout = Millis(5000);
  auto h = op->handle;
  w.engine(r).submit(std::move(op));
  return h;
}

TEST(Exchange, PairsAndTriplesAverageOrSwapWhileAnAllReduceRuns) {
  for (Wire wire : {Wire::kRaw, Wire::kInt8}) {
    World w(5);
    const std::size_t n = 3001;
    std::vector<std::vector<float>> send(5), recv(5, std::vector<float>(n, -1.0f)), ar(5);
    std::vector<std::shared_ptr<Operation::State>> ex(5), all(5);
    for (std::size_t r = 0; r < 5; ++r) {
      send[r] = intInput(n, r, 11);
      ar[r] = intInput(n, r, 12);
      AllReduceArgs args{ar[r].data(), n, DType::kF32, ReduceOp::kSum, Wire::kRaw, kQuantBlock};
      all[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, Algorithm::kRing), 1);
    }
    // {0, 3} average, {1, 2, 4} swap.
    for (std::size_t r : {0u, 3u})
      ex[r] = submitExchange(w, r, {0, 3}, send[r], recv[r], ExchangeMode::kAverage, wire, 1);
    for (std::size_t r : {1u, 2u, 4u})
      ex[r] = submitExchange(w, r, {1, 2, 4}, send[r], recv[r], ExchangeMode::kSwap, wire, 1);
    ASSERT_TRUE(
        w.net().run([&] { return allFinished(ex, w.members()) && allFinished(all, w.members()); }));
    for (std::size_t r = 0; r < 5; ++r) {
      ASSERT_TRUE(ex[r]->status.isOk()) << ex[r]->status.toString();
      ASSERT_TRUE(all[r]->status.isOk()) << all[r]->status.toString();
      EXPECT_EQ(send[r], intInput(n, r, 11)) << "send is never written";
    }
    EXPECT_EQ(recv[0], recv[3]) << "average is bit-identical on both sides";
    for (std::size_t i = 0; i < n; ++i) {
      const float want = (send[0][i] + send[3][i]) / 2;
      if (wire == Wire::kRaw)
        ASSERT_EQ(recv[0][i], want);
      else
        ASSERT_NEAR(recv[0][i], want, 1.0);
    }
    // Swap: member m takes member m+1's buffer (ids sorted: 1, 2, 4).
    if (wire == Wire::kRaw) {
      EXPECT_EQ(recv[1], send[2]);
      EXPECT_EQ(recv[2], send[4]);
      EXPECT_EQ(recv[4], send[1]);
    }
  }
}

// The partner dies at each send of an exchange, or stalls and is evicted: the survivor's recv
// stays untouched and it gets an error; two survivors of a triple agree.
TEST(Exchange, APartnerThatDiesOrStallsLeavesTheSurvivorUntouched) {
  for (std::size_t k = 1; k <= 4; ++k) {
    for (bool stall : {false, true}) {
      SCOPED_TRACE(fmt::format("send {} {}", k, stall ? "stall" : "death"));
      World w(3);
      const std::size_t n = 20000;
      std::vector<std::vector<float>> send(3), recv(3, std::vector<float>(n, -7.0f));
      std::vector<std::shared_ptr<Operation::State>> ex(3);
      if (stall) {
        w.net().stall(2);
      } else {
        w.net().killAfterSends(2, k);
      }
      for (std::size_t r = 0; r < 3; ++r) {
        send[r] = intInput(n, r, 21);
        ex[r] = submitExchange(w, r, {0, 1, 2}, send[r], recv[r], ExchangeMode::kAverage,
                               Wire::kRaw, 1);
      }
      if (stall) {
        w.net().runPending();
        EXPECT_FALSE(ex[0]->finished);
        w.remove(2);
      }
      ASSERT_TRUE(w.net().run([&] { return allFinished(ex, {0, 1}); }));
      if (!stall && w.net().alive(2)) break;  // needed fewer sends
      for (std::size_t r : {0u, 1u}) {
        EXPECT_FALSE(ex[r]->status.isOk());
        EXPECT_EQ(recv[r], std::vector<float>(n, -7.0f)) << "peer " << r << " recv was written";
      }
    }
  }
}

TEST(Exchange, MembersThatDisagreeOnTheModeFailBoth) {
  World w(2);
  std::vector<float> a = intInput(100, 0, 1), b = intInput(100, 1, 1);
  std::vector<float> ra(100, 0.0f), rb(100, 0.0f);
  auto h0 = submitExchange(w, 0, {0, 1}, a, ra, ExchangeMode::kAverage, Wire::kRaw, 1);
  auto h1 = submitExchange(w, 1, {0, 1}, b, rb, ExchangeMode::kSwap, Wire::kRaw, 1);
  ASSERT_TRUE(w.net().run([&] { return h0->finished && h1->finished; }));
  // The first to see the difference fails with it; the other may see its link close first.
  EXPECT_FALSE(h0->status.isOk());
  EXPECT_FALSE(h1->status.isOk());
  EXPECT_TRUE(h0->status.code() == StatusCode::kInvalidArgument ||
              h1->status.code() == StatusCode::kInvalidArgument);
  EXPECT_EQ(ra, std::vector<float>(100, 0.0f));
}

// ---- the zstd stage (compress.h)
// -----------------------------------------------------------------

TEST(Compress, ShrinksQuantizedPiecesLosslesslyAndRejectsWhatIsNotAPiece) {
  const std::vector<float> x = gaussInput(65536, 0, 11);
  for (Wire wire : {Wire::kInt8, Wire::kInt4}) {
    std::vector<std::uint8_t> enc(encodedBytes(wire, x.size(), 1024));
    encode(wire, x, enc, 1024);
    std::vector<std::uint8_t> z(enc.size()), back(enc.size());
    const std::size_t n = compressPiece(enc, z);
    ASSERT_GT(n, 0u) << wireName(wire);
    EXPECT_LT(n, enc.size() * (wire == Wire::kInt4 ? 0.9 : 0.97)) << wireName(wire);
    ASSERT_TRUE(decompressPiece(std::span(z).first(n), back).isOk());
    EXPECT_EQ(back, enc);
    // One byte short of the size it was compressed from: not this piece.
    std::vector<std::uint8_t> small(enc.size() - 1);
    EXPECT_EQ(decompressPiece(std::span(z).first(n), small).code(), StatusCode::kProtocolError);
  }
  // Random bytes do not shrink: sent as they are.
  std::mt19937 rng(5);
  std::vector<std::uint8_t> noise(100000), z(noise.size());
  for (auto& b : noise) b = static_cast<std::uint8_t>(rng());
  EXPECT_EQ(compressPiece(noise, z), 0u);
  std::vector<std::uint8_t> out(1000);
  EXPECT_EQ(decompressPiece(std::span(noise).first(500), out).code(), StatusCode::kProtocolError);

  EXPECT_EQ(*parseCompress("auto"), Compress::kAuto);
  EXPECT_FALSE(parseCompress("lz4").isOk());
  const LinkStats wan{0.05, 12.5e6}, loopback{0.0001, 3e9}, busy_loopback{0.0002, 15e6}, unknown{};
  EXPECT_TRUE(compressOn(Compress::kAuto, Wire::kInt4, wan));
  EXPECT_FALSE(compressOn(Compress::kAuto, Wire::kInt4, loopback));
  EXPECT_FALSE(compressOn(Compress::kAuto, Wire::kInt4, busy_loopback));
  EXPECT_FALSE(compressOn(Compress::kAuto, Wire::kInt4, unknown));
  EXPECT_FALSE(compressOn(Compress::kZstd, Wire::kRaw, wan));
  EXPECT_TRUE(compressOn(Compress::kZstd, Wire::kInt8, loopback));
  EXPECT_FALSE(compressOn(Compress::kOff, Wire::kInt8, wan));
}

// Lossless and decided per sender: a ring where some peers compress and others do not gives,
// on every peer, exactly the bytes of a ring where nobody does, and sends fewer bytes.
TEST(Compress, ARingWithMixedPeersGivesTheUncompressedResultBitForBit) {
  for (Wire wire : {Wire::kFp16, Wire::kInt8, Wire::kInt4}) {
    for (std::size_t world : {2u, 3u, 4u}) {
      SCOPED_TRACE(fmt::format("{} N={}", wireName(wire), world));
      const std::size_t n = 300001;
      std::vector<std::vector<float>> result[2];
      std::uint64_t sent[2] = {0, 0};
      for (int zstd : {0, 1}) {
        World w(world, 3 + zstd);
        auto& bufs = result[zstd];
        bufs.assign(world, {});
        std::vector<std::shared_ptr<Operation::State>> hs(world);
        for (std::size_t r = 0; r < world; ++r) {
          bufs[r] = gaussInput(n, r, 9);
          // Every peer but the last compresses in the second run.
          const Compress c = zstd && r + 1 < world ? Compress::kZstd : Compress::kOff;
          AllReduceArgs args{bufs[r].data(), n, DType::kF32, ReduceOp::kSum, wire, 1024, c};
          hs[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, Algorithm::kRing), 1);
        }
        ASSERT_TRUE(w.net().run([&] { return allFinished(hs, w.members()); }));
        for (std::size_t r = 0; r < world; ++r) {
          ASSERT_TRUE(hs[r]->status.isOk()) << hs[r]->status.toString();
          sent[zstd] += w.engine(r).bytesSent();
        }
      }
      for (std::size_t r = 0; r < world; ++r)
        ASSERT_EQ(std::memcmp(result[0][r].data(), result[1][r].data(), n * 4), 0) << r;
      EXPECT_LT(sent[1], sent[0]);
    }
  }
}

TEST(Compress, ADeathAtAnySendRestoresEverySurvivor) {
  const std::size_t n = 200000;
  for (std::size_t k = 1; k < 120; k += 3) {
    SCOPED_TRACE(fmt::format("death at send {}", k));
    World w(4);
    std::vector<std::vector<float>> bufs(4);
    std::vector<std::shared_ptr<Operation::State>> hs(4);
    const std::size_t victim = k % 4;
    w.net().killAfterSends(victim, k);
    for (std::size_t r = 0; r < 4; ++r) {
      bufs[r] = intInput(n, r, 3);
      AllReduceArgs args{bufs[r].data(), n,    DType::kF32,    ReduceOp::kSum,
                         Wire::kInt4,    1024, Compress::kZstd};
      hs[r] = w.submit(r, makeAllReduce(w.engine(r).pool(), args, Algorithm::kRing), 1);
    }
    std::vector<std::size_t> survivors;
    for (std::size_t r = 0; r < 4; ++r)
      if (r != victim) survivors.push_back(r);
    ASSERT_TRUE(w.net().run([&] { return allFinished(hs, survivors); }));
    if (w.net().alive(victim)) {  // the operation needed fewer sends: it must have worked
      for (std::size_t r = 0; r < 4; ++r) ASSERT_TRUE(hs[r]->status.isOk());
      break;
    }
    for (std::size_t r : survivors) {
      const StatusCode code = hs[r]->status.code();
      EXPECT_TRUE(code == StatusCode::kPeerLost || code == StatusCode::kAborted)
          << hs[r]->status.toString();
      EXPECT_EQ(bufs[r], intInput(n, r, 3)) << "peer " << r << " not restored";
    }
  }
}

}  // namespace
}  // namespace loco::collectives
