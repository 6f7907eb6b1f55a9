#include "collectives/link_transport.h"

#include <fmt/format.h>

#include <algorithm>

#include "p2p/base/log.h"
#include "p2p/base/text.h"

namespace loco::collectives {

using p2p::Link;

namespace {
constexpr Millis kDialTimeout{10000};

class TimerAlarm final : public Alarm {
 public:
  explicit TimerAlarm(p2p::NetworkThread& net) : timer(net) {}
  p2p::Timer timer;
};
}  // namespace

LinkTransport::LinkTransport(p2p::NetworkThread& net, std::string self_id, p2p::LinkOptions options)
    : net_(net), self_id_(std::move(self_id)), options_(options) {
  group_.epoch = ~std::uint64_t{0};
}

LinkTransport::~LinkTransport() {
  close(Status(StatusCode::kAborted, "the communicator is shutting down"));
}

void LinkTransport::closeLink(std::shared_ptr<Link>& link, const Status& why) {
  if (!link) return;
  auto l = std::move(link);
  l->setCloseHandler(nullptr);
  l->close(why);
}

void LinkTransport::setGroup(const PeerGroup& group, std::vector<std::string> addresses) {
  if (group.epoch == group_.epoch && group.ids == group_.ids) return;
  closeAll(
      Status(StatusCode::kAborted, fmt::format("the group moved on to epoch {}", group.epoch)));
  group_ = group;
  addresses_ = std::move(addresses);
  peers_.assign(group_.world(), Peer{});
  for (auto it = accepted_.begin(); it != accepted_.end();) {
    if (it->first.second < group_.epoch) {
      closeLink(it->second, Status(StatusCode::kAborted, "a link of an earlier epoch"));
      it = accepted_.erase(it);
    } else {
      ++it;
    }
  }
}

void LinkTransport::onAccepted(std::shared_ptr<Link> link, const std::string& from,
                               std::uint64_t epoch) {
  if (epoch == group_.epoch) {
    auto it = std::find(group_.ids.begin(), group_.ids.end(), from);
    if (it != group_.ids.end() && from != self_id_) {
      return adopt(static_cast<std::size_t>(it - group_.ids.begin()), std::move(link));
    }
  }
  if (group_.epoch != ~std::uint64_t{0} && epoch < group_.epoch) {
    return link->close(Status(StatusCode::kAborted, "a link of an earlier epoch"));
  }
  // A peer already in a later epoch than this one (or before this peer's first operation).
  auto key = std::make_pair(from, epoch);
  if (auto old = accepted_.find(key); old != accepted_.end())
    closeLink(old->second, Status(StatusCode::kAborted, "replaced by a newer link"));
  std::weak_ptr<Link> weak = link;
  link->setCloseHandler([this, key, weak](const Status&) {
    auto it = accepted_.find(key);
    if (it != accepted_.end() && it->second == weak.lock()) accepted_.erase(it);
  });
  accepted_[key] = std::move(link);
}

void LinkTransport::adopt(std::size_t peer, std::shared_ptr<Link> link) {
  Peer& p = peers_[peer];
  // The peer dials anew only after it dropped its previous link to us (dials are one at a time
  // per peer, so this one is newer): receives posted on the old one move to this one.
  closeLink(p.in, Status(StatusCode::kPeerLost, "the peer replaced its link"));
  p.in = link;
  std::weak_ptr<Link> weak = link;
  link->setCloseHandler([this, peer, weak](const Status& why) {
    if (auto l = weak.lock()) onBroken(peer, l, why);
  });
  auto waiting = std::move(p.recvs);
  p.recvs.clear();
  for (auto& r : waiting) post(peer, link, std::move(r));
}

void LinkTransport::post(std::size_t peer, const std::shared_ptr<Link>& link, PendingRecv r) {
  std::weak_ptr<Link> weak = link;
  const std::uint64_t generation = generation_;
  if (r.sized) {
    auto sized = [this, peer, weak, generation, r](const Status& st, std::size_t length) mutable {
      if (st.code() == StatusCode::kPeerLost) return retryRecv(peer, weak, generation, r, st);
      r.sized(st, length);
    };
    return link->recvUpTo(r.tag, r.dst, std::move(sized));
  }
  auto done = [this, peer, weak, generation, r](const Status& st) mutable {
    if (st.code() == StatusCode::kPeerLost) return retryRecv(peer, weak, generation, r, st);
    r.done(st);
  };
  link->recv(r.tag, r.dst, std::move(done));
}

void LinkTransport::retryRecv(std::size_t peer, const std::weak_ptr<Link>& failed,
                              std::uint64_t generation, PendingRecv r, const Status& why) {
  // A link fails its receives before its close handler runs: decide once that has run.
  net_.post(
      [this, peer, failed, generation, r = std::move(r), why, alive = lifetime_.watch()]() mutable {
        if (alive.expired()) return;
        auto fail = [&] {
          if (r.sized) return r.sized(why, 0);
          r.done(why);
        };
        // An abort since (closeAll) or a new epoch ends the receive; so does a link still in use,
        // which only a close of our own leaves in place.
        if (generation != generation_ || peer >= peers_.size()) return fail();
        auto link = inLink(peer);
        if (link && link == failed.lock()) return fail();
        if (link) return post(peer, link, std::move(r));
        peers_[peer].recvs.push_back(std::move(r));
      });
}

void LinkTransport::onBroken(std::size_t peer, const std::shared_ptr<Link>& link,
                             const Status& why) {
  if (peer >= peers_.size()) return;
  if (peers_[peer].in == link) {
    // Its receives wait for the peer's next link (see link_transport.h).
    peers_[peer].in.reset();
    return;
  }
  if (peers_[peer].out == link) peers_[peer].out.reset();
  if (on_broken_) on_broken_(why.withContext("a link broke"));
}

void LinkTransport::dial(std::size_t peer) {
  peers_[peer].dialing = true;
  auto fail = [this, peer](const Status& why) {
    peers_[peer].dialing = false;
    auto waiting = std::move(peers_[peer].sends);
    peers_[peer].sends.clear();
    for (auto& s : waiting) s.done(why);
  };
  auto hp = p2p::parseHostPort(addresses_[peer]);
  if (!hp) return fail(hp.status());
  const std::uint64_t epoch = group_.epoch;
  const std::uint64_t generation = generation_;
  p2p::connectLink(
      net_, *hp, self_id_, options_, Deadline::after(kDialTimeout),
      [this, peer, epoch, generation, fail,
       alive = lifetime_.watch()](Result<std::shared_ptr<Link>> r) {
        if (alive.expired()) return;
        if (epoch != group_.epoch) {
          if (r) r.value()->close(Status(StatusCode::kAborted, "the group moved on"));
          return;
        }
        if (generation != generation_) {
          // Dialed before an abort: the peer may have closed its end in its own abort already,
          // so nothing after the abort may use it. The next dial starts only now, so the peer
          // sees it after this one.
          if (r) r.value()->close(Status(StatusCode::kAborted, "dialed before an abort"));
          peers_[peer].dialing = false;
          if (!peers_[peer].sends.empty()) dial(peer);
          return;
        }
        if (!r) {
          // Refused or unreachable: the peer died after the epoch began. Like those whose link
          // to it broke, the senders see kPeerLost.
          return fail(
              Status(StatusCode::kPeerLost, r.status().message())
                  .withContext(fmt::format("connecting to peer {}", shortId(group_.ids[peer]))));
        }
        Peer& p = peers_[peer];
        p.dialing = false;
        closeLink(p.out, Status(StatusCode::kAborted, "replaced"));
        p.out = std::move(r.value());
        std::weak_ptr<Link> weak = p.out;
        p.out->setCloseHandler([this, peer, weak](const Status& why) {
          if (auto l = weak.lock()) onBroken(peer, l, why);
        });
        auto waiting = std::move(p.sends);
        p.sends.clear();
        auto link = p.out;  // a completion below may abort and drop p.out
        for (auto& s : waiting) link->send(s.tag, s.data, std::move(s.done), s.priority);
      },
      epoch);
}

void LinkTransport::send(std::size_t peer, std::uint64_t tag, ByteSpan data, Done done,
                         int priority) {
  if (peer >= peers_.size() || peer == group_.rank) {
    return done(
        Status(StatusCode::kInternal, fmt::format("send to rank {} of {}", peer, peers_.size())));
  }
  Peer& p = peers_[peer];
  if (p.out) return p.out->send(tag, data, std::move(done), priority);
  p.sends.push_back({tag, data, std::move(done), priority});
  if (!p.dialing) dial(peer);
}

std::shared_ptr<Link> LinkTransport::inLink(std::size_t peer) {
  Peer& p = peers_[peer];
  if (!p.in) {
    auto it = accepted_.find({group_.ids[peer], group_.epoch});
    if (it != accepted_.end()) {
      auto link = std::move(it->second);
      accepted_.erase(it);
      adopt(peer, std::move(link));
    }
  }
  return p.in;
}

void LinkTransport::recv(std::size_t peer, std::uint64_t tag, MutableByteSpan dst, Done done) {
  if (peer >= peers_.size() || peer == group_.rank) {
    return done(Status(StatusCode::kInternal,
                       fmt::format("receive from rank {} of {}", peer, peers_.size())));
  }
  PendingRecv r{tag, dst, std::move(done), nullptr};
  if (auto link = inLink(peer)) return post(peer, link, std::move(r));
  peers_[peer].recvs.push_back(std::move(r));
}

void LinkTransport::recvUpTo(std::size_t peer, std::uint64_t tag, MutableByteSpan dst,
                             SizedDone done) {
  if (peer >= peers_.size() || peer == group_.rank) {
    return done(Status(StatusCode::kInternal,
                       fmt::format("receive from rank {} of {}", peer, peers_.size())),
                0);
  }
  PendingRecv r{tag, dst, nullptr, std::move(done)};
  if (auto link = inLink(peer)) return post(peer, link, std::move(r));
  peers_[peer].recvs.push_back(std::move(r));
}

void LinkTransport::closeAll(const Status& why) {
  // Completions below may re-enter (an operation failing aborts the transport): take
  // everything out first. Dials in flight keep their flag: they end as stale (see dial()).
  ++generation_;
  auto peers = std::move(peers_);
  peers_.assign(peers.size(), Peer{});
  for (std::size_t i = 0; i < peers.size(); ++i) peers_[i].dialing = peers[i].dialing;
  std::vector<std::shared_ptr<Link>> unused;
  for (auto it = accepted_.begin(); it != accepted_.end();) {
    if (it->first.second == group_.epoch) {
      unused.push_back(std::move(it->second));
      it = accepted_.erase(it);
    } else {
      ++it;
    }
  }
  for (Peer& p : peers) {
    closeLink(p.out, why);
    closeLink(p.in, why);
    for (auto& s : p.sends) s.done(why);
    for (auto& r : p.recvs) {
      if (r.sized) {
        r.sized(why, 0);
      } else {
        r.done(why);
      }
    }
  }
  for (auto& l : unused) closeLink(l, why);
}

void LinkTransport::abort(const Status& why) {
  closeAll(why);
}

void LinkTransport::close(const Status& why) {
  closeAll(why);
  auto all = std::move(accepted_);
  accepted_.clear();
  for (auto& [key, link] : all) closeLink(link, why);
}

p2p::Link::SendMeter LinkTransport::takeSendMeter(std::size_t peer) {
  if (peer >= peers_.size() || !peers_[peer].out) return {};
  return peers_[peer].out->takeSendMeter();
}

LinkStats LinkTransport::linkStats(std::size_t peer) {
  if (peer >= peers_.size() || !peers_[peer].out) return {};
  return LinkStats{peers_[peer].out->rttSeconds(), peers_[peer].out->sendRate()};
}

void LinkTransport::post(std::function<void()> fn) {
  net_.post(std::move(fn));
}

std::unique_ptr<Alarm> LinkTransport::after(Millis delay, std::function<void()> fn) {
  auto alarm = std::make_unique<TimerAlarm>(net_);
  alarm->timer.startAfter(delay, std::move(fn));
  return alarm;
}

}  // namespace loco::collectives
