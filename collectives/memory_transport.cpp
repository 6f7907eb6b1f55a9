#include "collectives/memory_transport.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace loco::collectives {

class MemoryNetwork::Endpoint final : public Transport {
 public:
  Endpoint(MemoryNetwork& net, std::size_t rank) : net_(net), rank_(rank) {}

  void send(std::size_t peer, std::uint64_t tag, ByteSpan data, Done done,
            int /*priority*/) override {
    if (!net_.alive(rank_) || peer >= net_.peers() || !net_.alive(peer)) {
      return net_.post(rank_, [done = std::move(done), peer] {
        done(Status(StatusCode::kPeerLost, fmt::format("peer {} is gone", peer)));
      });
    }
    ++net_.messages_;
    Message m{rank_, peer, tag, net_.generation(rank_, peer), {data.begin(), data.end()}};
    net_.in_flight_.push_back(std::move(m));
    net_.post(rank_, [done = std::move(done)] { done(Status()); });
    if (sends_left_ > 0 && --sends_left_ == 0) net_.kill(rank_);
  }

  void recv(std::size_t peer, std::uint64_t tag, MutableByteSpan dst, Done done) override {
    if (peer >= net_.peers() || !net_.alive(peer)) {
      return net_.post(rank_, [done = std::move(done), peer] {
        done(Status(StatusCode::kPeerLost, fmt::format("peer {} is gone", peer)));
      });
    }
    auto key = std::make_pair(peer, tag);
    if (auto it = staged_.find(key); it != staged_.end()) {
      std::vector<std::uint8_t> bytes = std::move(it->second);
      staged_.erase(it);
      return complete(peer, bytes, dst, std::move(done));
    }
    pending_[key] = {dst, std::move(done), nullptr};
  }

  void recvUpTo(std::size_t peer, std::uint64_t tag, MutableByteSpan dst, SizedDone done) override {
    // The length travels through a Done that captures it.
    auto length = std::make_shared<std::size_t>(0);
    Done plain = [length, done](const Status& st) { done(st, st.isOk() ? *length : 0); };
    if (peer >= net_.peers() || !net_.alive(peer)) return recv(peer, tag, dst, std::move(plain));
    auto key = std::make_pair(peer, tag);
    if (auto it = staged_.find(key); it != staged_.end()) {
      std::vector<std::uint8_t> bytes = std::move(it->second);
      staged_.erase(it);
      return complete(peer, bytes, dst, std::move(plain), length.get());
    }
    pending_[key] = {dst, std::move(plain), length};
  }

  void abort(const Status& why) override {
    net_.breakLinks(rank_, why,
                    Status(StatusCode::kPeerLost, fmt::format("peer {} closed its links", rank_)));
  }

  void post(std::function<void()> fn) override { net_.post(rank_, std::move(fn)); }

  std::unique_ptr<Alarm> after(Millis delay, std::function<void()> fn) override {
    auto cancelled = std::make_shared<bool>(false);
    net_.alarms_.emplace(net_.now_ + delay, AlarmEntry{rank_, std::move(fn), cancelled});
    struct Handle final : Alarm {
      std::shared_ptr<bool> cancelled;
      ~Handle() override { *cancelled = true; }
    };
    auto h = std::make_unique<Handle>();
    h->cancelled = std::move(cancelled);
    return h;
  }

  void arrive(Message m) {
    auto key = std::make_pair(m.from, m.tag);
    auto it = pending_.find(key);
    if (it == pending_.end()) {
      staged_[key] = std::move(m.bytes);
      return;
    }
    auto p = std::move(it->second);
    pending_.erase(it);
    complete(m.from, m.bytes, p.dst, std::move(p.done), p.length.get());
  }

  // `length`: a recvUpTo, which takes any non-empty length up to dst.size() and reports it there.
  void complete(std::size_t from, const std::vector<std::uint8_t>& bytes, MutableByteSpan dst,
                Done done, std::size_t* length = nullptr) {
    if (length ? bytes.empty() || bytes.size() > dst.size() : bytes.size() != dst.size()) {
      Status bad(StatusCode::kProtocolError,
                 fmt::format("{} bytes from peer {} for a {}-byte receive; sender and receiver "
                             "disagree on the size",
                             bytes.size(), from, dst.size()));
      done(bad);
      return net_.breakLinks(rank_, bad, bad);
    }
    if (!bytes.empty()) std::memcpy(dst.data(), bytes.data(), bytes.size());
    if (length) *length = bytes.size();
    done(Status());
  }

  // A killed process runs nothing more: its transfers vanish without completions.
  void forget() {
    pending_.clear();
    staged_.clear();
  }

  // Fails what waits on links to or from `peer`; drops what was staged from it.
  void dropPeer(std::size_t peer, const Status& why) {
    std::vector<Done> failed;
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->first.first == peer) {
        failed.push_back(std::move(it->second.done));
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = staged_.begin(); it != staged_.end();) {
      it = it->first.first == peer ? staged_.erase(it) : std::next(it);
    }
    for (auto& d : failed) d(why);
  }

  std::size_t sends_left_ = 0;

 private:
  struct Pending {
    MutableByteSpan dst;
    Done done;
    std::shared_ptr<std::size_t> length;  // recvUpTo
  };
  MemoryNetwork& net_;
  std::size_t rank_;
  std::map<std::pair<std::size_t, std::uint64_t>, Pending> pending_;
  std::map<std::pair<std::size_t, std::uint64_t>, std::vector<std::uint8_t>> staged_;
  friend class MemoryNetwork;
  bool dead_ = false, stalled_ = false;
};

MemoryNetwork::MemoryNetwork(std::size_t peers, std::uint64_t seed)
    : generations_(peers * peers, 0), rng_(seed) {
  for (std::size_t r = 0; r < peers; ++r)
    endpoints_.push_back(std::make_unique<Endpoint>(*this, r));
}

MemoryNetwork::~MemoryNetwork() = default;

Transport& MemoryNetwork::transport(std::size_t rank) {
  return *endpoints_.at(rank);
}

std::uint64_t& MemoryNetwork::generation(std::size_t from, std::size_t to) {
  return generations_[from * endpoints_.size() + to];
}

bool MemoryNetwork::alive(std::size_t rank) const {
  return rank < endpoints_.size() && !endpoints_[rank]->dead_;
}

bool MemoryNetwork::runnable(std::size_t rank) const {
  return alive(rank) && !endpoints_[rank]->stalled_;
}

void MemoryNetwork::post(std::size_t rank, std::function<void()> fn) {
  tasks_.push_back({rank, std::move(fn)});
}

void MemoryNetwork::deliver(Message m) {
  if (m.generation != generation(m.from, m.to) || !alive(m.to)) return;  // its link broke
  if (endpoints_[m.to]->stalled_ || endpoints_[m.from]->stalled_) {
    held_.push_back(std::move(m));
    return;
  }
  endpoints_[m.to]->arrive(std::move(m));
}

void MemoryNetwork::breakLinks(std::size_t rank, const Status& own, const Status& others) {
  for (std::size_t p = 0; p < endpoints_.size(); ++p) {
    if (p == rank) continue;
    ++generation(rank, p);
    ++generation(p, rank);
  }
  for (std::size_t p = 0; p < endpoints_.size(); ++p) {
    if (p == rank) continue;
    if (alive(rank)) endpoints_[rank]->dropPeer(p, own);
    if (runnable(p)) endpoints_[p]->dropPeer(rank, others);
  }
}

void MemoryNetwork::kill(std::size_t rank) {
  if (!alive(rank)) return;
  endpoints_[rank]->dead_ = true;
  endpoints_[rank]->forget();
  breakLinks(rank, Status(StatusCode::kAborted, "killed"),
             Status(StatusCode::kPeerLost, fmt::format("peer {} died", rank)));
}

void MemoryNetwork::killAfterSends(std::size_t rank, std::size_t sends) {
  if (sends == 0) return kill(rank);
  endpoints_.at(rank)->sends_left_ = sends;
}

void MemoryNetwork::stall(std::size_t rank) {
  endpoints_.at(rank)->stalled_ = true;
}

bool MemoryNetwork::step() {
  // The next delivery: the oldest without a seed; with one, any message in flight, at a random
  // moment among the other work.
  if (!in_flight_.empty() && (tasks_.empty() || rng_ == 0 || nextRandom() % 2 == 0)) {
    const std::size_t i = rng_ == 0 ? 0 : nextRandom() % in_flight_.size();
    Message m = std::move(in_flight_[i]);
    in_flight_.erase(in_flight_.begin() + static_cast<std::ptrdiff_t>(i));
    deliver(std::move(m));
    return true;
  }
  if (tasks_.empty()) return false;
  Task t = std::move(tasks_.front());
  tasks_.pop_front();
  if (runnable(t.rank)) t.fn();
  return true;
}

std::uint64_t MemoryNetwork::nextRandom() {
  rng_ = rng_ * 6364136223846793005ull + 1442695040888963407ull;  // never 0 again once seeded
  return rng_ >> 33;
}

void MemoryNetwork::runPending() {
  while (step()) {
  }
}

bool MemoryNetwork::run(const std::function<bool()>& until, std::size_t max_steps) {
  for (std::size_t n = 0; n < max_steps; ++n) {
    if (until && until()) return true;
    if (step()) continue;
    // Idle: the next alarm that may still fire.
    while (!alarms_.empty()) {
      auto it = alarms_.begin();
      AlarmEntry a = std::move(it->second);
      now_ = std::max(now_, it->first);
      alarms_.erase(it);
      if (*a.cancelled || !runnable(a.rank)) continue;
      tasks_.push_back({a.rank, std::move(a.fn)});
      break;
    }
    if (tasks_.empty()) return !until || until();
  }
  return false;
}

}  // namespace loco::collectives
