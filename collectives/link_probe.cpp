#include "collectives/link_probe.h"

#include <algorithm>
#include <cmath>

#include "p2p/base/log.h"
#include "p2p/base/text.h"
#include "p2p/membership_client.h"

namespace loco::collectives {

using p2p::Link;

namespace {
constexpr std::size_t kProbePieceBytes = 256u << 10;
constexpr std::size_t kProbePieces = 16;  // 4 MiB at most: 0.3 s at 100 Mbit/s
constexpr Millis kProbeWindow{2000};
constexpr Millis kProbeDialTimeout{5000};
// Passive estimates need enough bytes for the rate to mean something.
constexpr std::uint64_t kMinPassiveBytes = 4u << 20;
}  // namespace

struct LinkProbe::ProbeReceive {
  explicit ProbeReceive(p2p::NetworkThread& net) : timer(net) {}
  std::shared_ptr<Link> link;
  std::string from;
  TimePoint accepted, last;
  std::size_t pieces = 0;
  std::vector<std::uint8_t> sink;
  p2p::Timer timer;
  bool finished = false;
};

LinkProbe::LinkProbe(p2p::NetworkThread& net, p2p::MembershipClient& client, std::string self_id,
                     p2p::LinkOptions link_opts, bool enabled)
    : net_(net),
      client_(client),
      self_id_(std::move(self_id)),
      link_opts_(link_opts),
      enabled_(enabled),
      timer_(net),
      payload_(kProbePieceBytes, 0) {}

LinkProbe::~LinkProbe() {
  stop();
}

void LinkProbe::measurePassive(LinkTransport& transport, const PeerGroup& group) {
  if (!enabled_ || group.world() < 2) return;
  if (group.epoch != passive_epoch_) {  // another ring, other links
    passive_epoch_ = group.epoch;
    passive_bytes_ = 0;
    passive_busy_s_ = 0;
  }
  auto m = transport.takeSendMeter(group.next());
  passive_bytes_ += m.bytes;
  passive_busy_s_ += m.busy_s;
  if (passive_bytes_ < kMinPassiveBytes || passive_busy_s_ <= 0) return;
  const double rate = static_cast<double>(passive_bytes_) / passive_busy_s_;
  passive_bytes_ = 0;
  passive_busy_s_ = 0;
  const std::string& next = group.ids[group.next()];
  double& known = reported_rate_[next];
  if (known > 0 && std::abs(rate / known - 1) < 0.1) return;  // nothing new to say
  known = rate;
  client_.reportLinks({p2p::EdgeEstimate{self_id_, next, rate, p2p::EdgeSource::kPassive}});
}

void LinkProbe::onView(const p2p::GroupView& v) {
  if (!enabled_) return;
  std::vector<const p2p::PeerInfo*> members;
  for (const auto& p : v.peers) {
    if (p.state == p2p::PeerState::kMember) members.push_back(&p);
  }
  auto me =
      std::find_if(members.begin(), members.end(), [&](auto* p) { return p->id == self_id_; });
  if (me == members.end() || members.size() < 3) return setIdle();
  const std::string& next =
      members[static_cast<std::size_t>(me - members.begin() + 1) % members.size()]->id;
  for (auto* p : members) {
    if (p->id == self_id_ || p->id == next || probed_.count(p->id) != 0 ||
        reported_rate_.count(p->id) != 0)
      continue;
    probed_.insert(p->id);
    queue_.emplace_back(p->id, p->addr);
  }
  startNext();
}

void LinkProbe::setIdle() {
  std::lock_guard lock(mu_);
  idle_ = queue_.empty() && !link_ && !dialing_;
  cv_.notify_all();
}

void LinkProbe::startNext() {
  if (link_ || dialing_ || queue_.empty()) return setIdle();
  // Not a structured binding: the callback captures the id (clang 14, the fuzz preset's
  // compiler, cannot capture bindings).
  const std::string id = queue_.front().first;
  const std::string addr = queue_.front().second;
  queue_.pop_front();
  auto hp = p2p::parseHostPort(addr);
  if (!hp) return startNext();
  dialing_ = true;
  setIdle();
  p2p::connectLink(
      net_, *hp, self_id_, link_opts_, Deadline::after(kProbeDialTimeout),
      [this, id, alive = lifetime_.watch()](Result<std::shared_ptr<Link>> r) {
        if (alive.expired()) return;
        dialing_ = false;
        if (!r) {
          LOG_DEBUG(kLogP2p, "probe to {} failed: {}", shortId(id), r.status().message());
          return startNext();
        }
        link_ = std::move(r.value());
        // The receiver closes the link when it has measured; a timer bounds the wait.
        link_->setCloseHandler([this](const Status&) { endProbe(); });
        for (std::size_t i = 0; i < kProbePieces; ++i) {
          link_->send(i + 1, payload_, [](const Status&) {});
        }
        timer_.startAfter(kProbeWindow + Millis(1000), [this] { endProbe(); });
      },
      kProbeEpoch);
}

void LinkProbe::endProbe() {
  if (!link_) return;
  timer_.cancel();
  auto link = std::move(link_);
  link->setCloseHandler(nullptr);
  link->close(Status(StatusCode::kAborted, "probe finished"));
  startNext();
}

// The receiving end measures: it sees when bytes arrive, not when a kernel buffer took them.
void LinkProbe::onProbeLink(std::shared_ptr<Link> link, const std::string& from) {
  auto rx = std::make_shared<ProbeReceive>(net_);
  rx->link = std::move(link);
  rx->from = from;
  rx->accepted = Clock::now();
  rx->sink.resize(kProbePieceBytes);
  receives_.push_back(rx);
  rx->link->setCloseHandler([this, rx](const Status&) { finishReceive(rx); });
  for (std::size_t i = 0; i < kProbePieces; ++i) {
    rx->link->recv(i + 1, rx->sink, [this, rx](const Status& st) {
      if (rx->finished || !st.isOk()) return finishReceive(rx);
      rx->last = Clock::now();
      if (++rx->pieces == kProbePieces) finishReceive(rx);
    });
  }
  rx->timer.startAfter(kProbeWindow, [this, rx] { finishReceive(rx); });
}

void LinkProbe::finishReceive(const std::shared_ptr<ProbeReceive>& rx) {
  if (rx->finished) return;
  rx->finished = true;
  rx->timer.cancel();
  rx->link->setCloseHandler(nullptr);
  rx->link->close(Status(StatusCode::kAborted, "probe measured"));
  receives_.erase(std::remove(receives_.begin(), receives_.end(), rx), receives_.end());
  const double seconds = toSeconds(rx->last - rx->accepted);
  if (rx->pieces == 0 || seconds <= 0) return;
  // From acceptance, so the figure includes the first round trip and slow start: a lower
  // bound, which passive measurement replaces once the link carries ring traffic.
  const double rate = static_cast<double>(rx->pieces * kProbePieceBytes) / seconds;
  LOG_DEBUG(kLogP2p, "probe from {}: {:.1f} Mbit/s", shortId(rx->from), rate * 8e-6);
  client_.reportLinks({p2p::EdgeEstimate{rx->from, self_id_, rate, p2p::EdgeSource::kProbe}});
}

void LinkProbe::stop() {
  queue_.clear();
  if (link_) {
    link_->setCloseHandler(nullptr);
    link_->close(Status(StatusCode::kAborted, "shutting down"));
    link_.reset();
  }
  timer_.cancel();
  auto receives = std::move(receives_);
  receives_.clear();
  for (auto& rx : receives) {
    rx->finished = true;
    rx->timer.cancel();
    rx->link->setCloseHandler(nullptr);
    rx->link->close(Status(StatusCode::kAborted, "shutting down"));
  }
  setIdle();
}

Status LinkProbe::waitIdle(Deadline deadline) {
  std::unique_lock lock(mu_);
  if (!cv_.wait_until(lock, deadline.at(), [&] { return idle_; })) {
    return Status(StatusCode::kTimeout, "bandwidth probes still running at the deadline");
  }
  return Status();
}

}  // namespace loco::collectives
