#include "collectives/communicator.h"

#include <fmt/format.h>
#include <xxhash.h>

#include <algorithm>
#include <future>
#include <map>

#include "collectives/allreduce.h"
#include "collectives/exchange.h"
#include "collectives/link_probe.h"
#include "collectives/link_transport.h"
#include "collectives/op_engine.h"
#include "collectives/state_engine.h"
#include "p2p/base/log.h"
#include "p2p/connect_strategy.h"
#include "p2p/membership_client.h"
#include "p2p/relay.h"
#include "p2p/traversal.h"

namespace loco::collectives {

namespace {
constexpr std::size_t kMaxRing = 64;
// Operation ids: all-reduces are (epoch << 32 | sequence); exchanges set the top bit and hash
// their members and their own sequence (exchange groups overlap, so no single counter works).
constexpr std::uint64_t kExchangeBit = std::uint64_t{1} << 63;

// Whether every member of `v` advertises the same host (any loopback address counts as one).
// Members' addresses stay fixed within an epoch, so all peers of the epoch get the same answer.
bool membersShareOneHost(const p2p::GroupView& v) {
  std::string first;
  for (const auto& p : v.peers) {
    if (p.state != p2p::PeerState::kMember) continue;
    auto hp = p2p::parseHostPort(p.addr);
    if (!hp) return false;
    std::string host = hp->host;
    if (host.rfind("127.", 0) == 0 || host == "::1" || host == "localhost") host = "loopback";
    if (first.empty()) first = host;
    if (host != first) return false;
  }
  return true;
}
}  // namespace

class Communicator::Impl final : public OpEngine::Arbiter {
 public:
  explicit Impl(CommunicatorOptions options) : options_(std::move(options)) {
    link_opts_.streams = options_.streams;
    link_opts_.chunk_bytes = options_.chunk_bytes;
  }

  ~Impl() {
    p2p::traversal::unregisterSelf(options_.peer_id);  // its signal calls client_
    if (keeper_) keeper_->stop();                      // it calls client_ and uses listener_
    if (client_) {
      onNetworkThread([this] {
        engine_->abortEverything(Status(StatusCode::kAborted, "the communicator is shutting down"));
        state_->shutdown();
        probe_->stop();
        transport_->close(Status(StatusCode::kAborted, "the communicator is shutting down"));
        if (keeper_) keeper_->close();
        listener_.reset();
      });
      client_.reset();  // no membership callback runs after this
      onNetworkThread([this] {
        state_.reset();
        probe_.reset();
        engine_.reset();
        transport_.reset();
      });
    }
    // Stop the network thread before any member goes: no handler may run into a half-destroyed
    // communicator.
    net_.stop();
  }

  Status start(Deadline deadline) {
    Status listening;
    onNetworkThread([&] {
      auto l = p2p::LinkListener::start(
          net_, options_.listen, link_opts_,
          [this](std::shared_ptr<p2p::Link> link, const std::string& from, std::uint64_t epoch) {
            onAccepted(std::move(link), from, epoch);
          });
      if (l) listener_ = std::move(l.value());
      listening = l.status();
    });
    LOCO_RETURN_IF_ERROR(listening);
    std::string advertise = options_.advertise;
    if (advertise.empty()) {
      advertise =
          p2p::HostPort{options_.listen.host == "0.0.0.0" ? "127.0.0.1" : options_.listen.host,
                        listener_->port()}
              .toString();
    }
    // Direct, dialed back / punched through, or through a relay when nobody can dial us
    // (p2p/connect_strategy.h); chosen again if the relay is lost.
    keeper_ = std::make_unique<p2p::ReachKeeper>(
        net_, *listener_,
        p2p::ReachKeeper::Settings{options_.coordinator, options_.listen, advertise, options_.relay,
                                   options_.peer_id});
    auto reach = keeper_->choose(deadline);
    if (!reach) return reach.status();
    // Relayed is a degraded path (every byte crosses the relay host): the operator should see it.
    if (reach->path == p2p::PeerReach::kRelayed)
      LOG_WARN(kLogPeer, "reached relayed: {}", reach->why);
    else
      LOG_INFO(kLogPeer, "reached {}: {}", p2p::peerReachName(reach->path), reach->why);
    advertise = reach->advertise;
    p2p::MembershipClientOptions client_options{options_.coordinator, options_.peer_id, advertise,
                                                options_.streams};
    client_options.reach = reach->path;
    client_options.standby_coordinators = options_.standby_coordinators;
    client_options.coordinator_timeout = options_.coordinator_timeout;
    client_ = std::make_unique<p2p::MembershipClient>(net_, client_options);
    // Everything below lives on the network thread, the only one that touches it afterwards.
    onNetworkThread([&] {
      transport_ = std::make_unique<LinkTransport>(net_, options_.peer_id, link_opts_);
      engine_ = std::make_unique<OpEngine>(*transport_, *this,
                                           [this](std::uint64_t e) { return groupOf(e); });
      transport_->setBrokenHandler([this](const Status& why) { engine_->failAll(why); });
      probe_ = std::make_unique<LinkProbe>(net_, *client_, options_.peer_id, link_opts_,
                                           options_.measure_topology);
      engine_->setBeforeReport([this] { probe_->measurePassive(*transport_, ring_); });
      state_ = std::make_unique<StateEngine>(net_, *client_, options_.peer_id, link_opts_);
    });
    // Membership events, all wired here (network thread).
    client_->setDecisionCallback([this](std::uint64_t epoch, std::uint64_t op_id, bool commit) {
      engine_->onDecision(epoch, op_id, commit);
    });
    client_->setStateCallback([this](const p2p::FrameHeader& h, std::vector<std::uint8_t> payload) {
      state_->onCoordinatorFrame(h, std::move(payload));
    });
    // NAT traversal: how this peer asks others for connections, and serves their requests.
    // Requests go to the coordinator through the membership client.
    auto register_reach = [this](p2p::PeerReach path) {
      p2p::traversal::registerSelf(options_.peer_id, path,
                                   [this](p2p::MsgType type, std::vector<std::uint8_t> payload) {
                                     client_->sendToCoordinator(type, std::move(payload));
                                   });
    };
    register_reach(reach->path);
    client_->setTraversalCallback([this](p2p::MsgType type, std::vector<std::uint8_t> payload) {
      if (listener_) listener_->onTraversalFrame(options_.peer_id, type, payload);
    });
    // A lost relay leaves our advertised address dead: register again the way chosen now.
    keeper_->setOnChange([this, register_reach](const p2p::ReachDecision& d) {
      register_reach(d.path);
      client_->reregister(
          d.advertise, d.path,
          Status(StatusCode::kPeerLost, fmt::format("the relay was lost; registering again, {}",
                                                    p2p::peerReachName(d.path))));
    });
    client_->setViewCallback([this](const p2p::GroupView& v) {
      probe_->onView(v);
      engine_->onEpoch(v.epoch);
      state_->onView(v);
    });
    // Runs each time this peer loses its group (coordinator lost, or evicted); the client then
    // registers again on its own and a later view starts a new epoch, with a new ring.
    client_->setLostCallback([this](const Status& why) {
      engine_->abortEverything(why.withContext("lost the group during an operation"));
      state_->onLost(why);
    });
    return client_->join(deadline);
  }

  // ---- public calls (application thread) ----

  Result<std::shared_ptr<Operation>> allReduce(void* data, std::size_t count, DType dtype,
                                               ReduceOp red, Wire wire, AllReduceOptions options) {
    auto issue = issueOperation();
    if (!issue) return issue.status();
    const std::uint64_t epoch = issue->epoch;
    const std::uint64_t op_id = (epoch << 32) | ++seq_;
    // Still a collective step when the call is bad: tell the group so nobody waits for us.
    auto refuse = [&](Status why) {
      client_->reportOp(epoch, op_id, false);
      return why;
    };
    if (count == 0 || data == nullptr) {
      return refuse(Status(StatusCode::kInvalidArgument,
                           "all-reduce of zero elements (the group aborts this operation)"));
    }
    if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
      return refuse(Status(StatusCode::kInvalidArgument,
                           fmt::format("all-reduce of dtype {} (f32, f16 or bf16; the group "
                                       "aborts this operation)",
                                       dtypeName(dtype))));
    }
    if (options.quant_block == 0 || options.quant_block > kMaxQuantBlock) {
      return refuse(
          Status(StatusCode::kInvalidArgument,
                 fmt::format("quantization block of {} elements is outside 1..{} (the group "
                             "aborts this operation)",
                             options.quant_block, kMaxQuantBlock)));
    }
    AllReduceArgs args{data, count, dtype, red, wire, options.quant_block, options.compress};
    Algorithm algorithm = chooseAlgorithm(args, issue->world, issue->one_host);
    switch (options.algorithm) {
      case AllReduceAlgorithm::kAuto:
        break;
      case AllReduceAlgorithm::kRing:
        algorithm = Algorithm::kRing;
        break;
      case AllReduceAlgorithm::kDirect:
        algorithm = Algorithm::kDirect;
        break;
      case AllReduceAlgorithm::kScatterGather:
        algorithm = Algorithm::kScatterGather;
        break;
    }
    auto op = makeAllReduce(engine_->pool(), args, algorithm);
    op->epoch = epoch;
    op->op_id = op_id;
    op->tag_base = (op_id & 0xFFFFFFFFull) << 20;
    op->timeout = options.timeout;
    auto handle = std::make_shared<Operation>(op->handle);
    engine_->submit(op);
    // The network thread runs already; the backup is copied here meanwhile (allreduce.h).
    op->backupOnCallerThread(issue->rank, issue->world);
    return handle;
  }

  Result<std::shared_ptr<Operation>> exchange(std::vector<std::string> group,
                                              std::span<const float> send, std::span<float> recv,
                                              Wire wire, Deadline deadline,
                                              ExchangeOptions options) {
    std::sort(group.begin(), group.end());
    if (group.size() < 2 || group.size() > 3 ||
        std::adjacent_find(group.begin(), group.end()) != group.end() ||
        std::find(group.begin(), group.end(), options_.peer_id) == group.end()) {
      return Status(StatusCode::kInvalidArgument,
                    "an exchange group is this peer and one or two others, each once");
    }
    if (send.empty() || send.size() != recv.size()) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("exchange of {} elements into {}: sizes must match and be "
                                "positive",
                                send.size(), recv.size()));
    }
    if (options.quant_block == 0 || options.quant_block > kMaxQuantBlock) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("quantization block of {} elements is outside 1..{}",
                                options.quant_block, kMaxQuantBlock));
    }
    auto issue = issueOperation();
    if (!issue) return issue.status();
    const std::uint64_t epoch = issue->epoch;
    std::string key;
    for (const auto& id : group) key += id + ",";
    const std::uint64_t seq = ++exchange_seq_[key];
    key += fmt::format("{}:{}", epoch, seq);
    const std::uint64_t hash = XXH3_64bits(key.data(), key.size());
    auto op = std::make_shared<Exchange>(
        ExchangeArgs{send, recv, options.mode, wire, options.quant_block});
    op->epoch = epoch;
    op->op_id = kExchangeBit | (hash >> 1);
    op->tag_base = kExchangeBit | ((hash & ((std::uint64_t{1} << 43) - 1)) << 20);
    op->members = std::move(group);
    op->timeout = std::max(Millis(1), deadline.remaining());
    auto handle = std::make_shared<Operation>(op->handle);
    engine_->submit(std::move(op));
    return handle;
  }

  Result<std::uint64_t> syncPoint(Deadline deadline) {
    LOCO_RETURN_IF_ERROR(requireIdle("sync point"));
    return client_->syncPoint(deadline);
  }

  Result<SyncReport> syncSharedState(SharedState& state, const SyncOptions& options,
                                     Deadline deadline) {
    LOCO_RETURN_IF_ERROR(requireIdle("shared-state sync"));
    return state_->sync(state, options, deadline);
  }

  Status waitForProbes(Deadline deadline) { return probe_->waitIdle(deadline); }

  p2p::MembershipClient& client() { return *client_; }
  std::uint64_t bytesSent() const { return engine_->bytesSent(); }
  const CommunicatorOptions& options() const { return options_; }

  // ---- OpEngine::Arbiter (network thread) ----

  void report(std::uint64_t epoch, std::uint64_t op_id, bool ok,
              const std::vector<std::string>& members) override {
    client_->reportOp(epoch, op_id, ok, members);
  }

 private:
  // Runs `fn` on the network thread and waits for it.
  void onNetworkThread(const std::function<void()>& fn) {
    std::promise<void> done;
    net_.post([&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  }

  // The epoch a new operation runs in, its world and this peer's rank. Operations are matched
  // across peers by (epoch, sequence number). After a member is lost the epoch moves on without a
  // sync point, and peers see it at different moments: one that went on issuing would run its
  // operation alone until the timeout, or among a member set its caller never saw (a success the
  // others cannot match). So the new epoch starts at a sync point, where every member agrees on it.
  struct Issue {
    std::uint64_t epoch;
    std::size_t world, rank;  // rank: this peer's place in the ring, as of the view
    bool one_host;            // every member advertises the same host (chooseAlgorithm)
  };
  // issueEpoch, and the operation counters start again in a new epoch (all-reduces and exchanges
  // alike: their ids are matched across peers by epoch and sequence).
  Result<Issue> issueOperation() {
    auto issue = issueEpoch();
    if (issue && issue->epoch != seq_epoch_) {
      seq_epoch_ = issue->epoch;
      seq_ = 0;
      exchange_seq_.clear();
    }
    return issue;
  }

  Result<Issue> issueEpoch() {
    if (client_->state() != p2p::MembershipClient::State::kMember) {
      return Status(StatusCode::kFailedPrecondition,
                    "collective operation before this peer was admitted (call waitForMembership)");
    }
    const std::uint64_t barrier = client_->barrierEpoch();
    const p2p::GroupView view = client_->view();
    if (view.epoch != barrier) {
      return Status(
          StatusCode::kAborted,
          fmt::format(
              "the group changed since the last sync point (epoch {} -> {}); call syncPoint() "
              "before the next operation (nothing was started, the buffer is untouched)",
              barrier, view.epoch));
    }
    const auto ids = view.ringIds();
    const auto me = std::find(ids.begin(), ids.end(), options_.peer_id);
    return Issue{view.epoch, ids.size(), static_cast<std::size_t>(me - ids.begin()),
                 membersShareOneHost(view)};
  }

  Status requireIdle(const char* what) {
    std::size_t n = 0;
    onNetworkThread([&] { n = engine_->inFlight(); });
    if (n == 0) return Status();
    return Status(StatusCode::kFailedPrecondition,
                  fmt::format("{} with {} operation(s) in flight; wait for them first", what, n));
  }

  // The group of `epoch`, and the transport set up for it (network thread).
  Result<PeerGroup> groupOf(std::uint64_t epoch) {
    const p2p::GroupView v = client_->view();
    if (v.epoch != epoch) {
      return Status(StatusCode::kAborted,
                    fmt::format("the group changed as the operation started (epoch {} -> {}); "
                                "the buffer is restored",
                                epoch, v.epoch));
    }
    if (ring_.epoch != epoch || ring_.ids.empty()) {
      PeerGroup g;
      g.epoch = epoch;
      std::vector<std::string> addresses;
      for (const auto& p : v.peers) {
        if (p.state != p2p::PeerState::kMember) continue;
        g.ids.push_back(p.id);
        addresses.push_back(p.addr);
      }
      auto me = std::find(g.ids.begin(), g.ids.end(), options_.peer_id);
      if (me == g.ids.end())
        return Status(StatusCode::kAborted, "this peer is not a member of its epoch");
      if (g.ids.size() > kMaxRing)
        return Status(StatusCode::kInvalidArgument, "groups are limited to 64 peers");
      g.rank = static_cast<std::size_t>(me - g.ids.begin());
      transport_->setGroup(g, std::move(addresses));
      ring_ = std::move(g);
    }
    return ring_;
  }

  // Link streams dialed to this peer: ring and exchange links, probes and shared-state fetches,
  // told apart by the epoch they were dialed for.
  void onAccepted(std::shared_ptr<p2p::Link> link, const std::string& from, std::uint64_t epoch) {
    if (epoch == kProbeEpoch) {
      if (probe_) return probe_->onProbeLink(std::move(link), from);
    } else if ((epoch & kStateLinkEpochBit) != 0) {
      if (state_) return state_->onLink(std::move(link), from);
    } else if (transport_) {
      return transport_->onAccepted(std::move(link), from, epoch);
    }
    link->close(Status(StatusCode::kAborted, "not ready for links yet"));
  }

  CommunicatorOptions options_;
  p2p::LinkOptions link_opts_;
  p2p::NetworkThread net_{"loco-comm"};
  std::unique_ptr<p2p::MembershipClient> client_;
  // Network thread:
  std::unique_ptr<p2p::LinkListener> listener_;
  std::unique_ptr<p2p::ReachKeeper> keeper_;  // how peers reach us; its relay feeds listener_
  std::unique_ptr<LinkTransport> transport_;
  std::unique_ptr<OpEngine> engine_;
  std::unique_ptr<LinkProbe> probe_;
  std::unique_ptr<StateEngine> state_;  // shared state (state_engine.h)
  PeerGroup ring_;                      // the group of the transport's epoch
  // Application thread:
  std::uint64_t seq_epoch_ = ~std::uint64_t{0};
  std::uint64_t seq_ = 0;
  std::map<std::string, std::uint64_t> exchange_seq_;  // per member set, this epoch
};

// ---- algorithm names ---------------------------------------------------------------------------

std::string_view allReduceAlgorithmName(AllReduceAlgorithm a) {
  switch (a) {
    case AllReduceAlgorithm::kAuto:
      return "auto";
    case AllReduceAlgorithm::kRing:
      return "ring";
    case AllReduceAlgorithm::kDirect:
      return "direct";
    case AllReduceAlgorithm::kScatterGather:
      return "scatter-gather";
  }
  return "?";
}

Result<AllReduceAlgorithm> parseAllReduceAlgorithm(std::string_view name) {
  for (auto a : {AllReduceAlgorithm::kAuto, AllReduceAlgorithm::kRing, AllReduceAlgorithm::kDirect,
                 AllReduceAlgorithm::kScatterGather}) {
    if (name == allReduceAlgorithmName(a)) return a;
  }
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown all-reduce algorithm '{}' (auto, ring, direct or "
                            "scatter-gather)",
                            name));
}

// ---- Communicator ------------------------------------------------------------------------------

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Communicator::~Communicator() = default;

Result<std::unique_ptr<Communicator>> Communicator::create(CommunicatorOptions options,
                                                           Deadline deadline) {
  auto impl = std::make_unique<Impl>(std::move(options));
  LOCO_RETURN_IF_ERROR(impl->start(deadline));
  return std::unique_ptr<Communicator>(new Communicator(std::move(impl)));
}

Status Communicator::waitForMembership(Deadline deadline) {
  return impl_->client().waitForMembership(deadline);
}
Result<std::uint64_t> Communicator::syncPoint(Deadline deadline) {
  return impl_->syncPoint(deadline);
}
Result<std::shared_ptr<Operation>> Communicator::allReduce(void* data, std::size_t count,
                                                           DType dtype, ReduceOp op, Wire wire,
                                                           AllReduceOptions options) {
  return impl_->allReduce(data, count, dtype, op, wire, options);
}
Result<std::shared_ptr<Operation>> Communicator::exchange(std::vector<std::string> group,
                                                          std::span<const float> send,
                                                          std::span<float> recv, Wire wire,
                                                          Deadline deadline,
                                                          ExchangeOptions options) {
  return impl_->exchange(std::move(group), send, recv, wire, deadline, options);
}
Result<SyncReport> Communicator::syncSharedState(SharedState& state, const SyncOptions& options,
                                                 Deadline deadline) {
  return impl_->syncSharedState(state, options, deadline);
}
Status Communicator::leave(Deadline deadline) {
  return impl_->client().leave(deadline);
}
void Communicator::setRegistrationReport(std::uint64_t state_revision, std::uint64_t state_digest,
                                         std::uint64_t progress, bool finished) {
  impl_->client().setRegistrationReport(
      p2p::RegistrationReport{state_revision, state_digest, progress, finished});
}
void Communicator::reportProgress(const p2p::PeerReportMsg& report) {
  impl_->client().reportProgress(report);
}
Status Communicator::waitForProbes(Deadline deadline) {
  return impl_->waitForProbes(deadline);
}
std::uint64_t Communicator::epoch() const {
  return impl_->client().epoch();
}
std::size_t Communicator::world() const {
  return impl_->client().view().world();
}
std::size_t Communicator::pending() const {
  return impl_->client().view().pending();
}
std::uint64_t Communicator::bytesSent() const {
  return impl_->bytesSent();
}
std::vector<std::string> Communicator::ring() const {
  return impl_->client().view().ringIds();
}
const std::string& Communicator::peerId() const {
  return impl_->options().peer_id;
}

}  // namespace loco::collectives
