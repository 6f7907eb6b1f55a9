// The serving side of a shared-state sync (state_engine.h): answer other peers' chunk requests
// from this peer's buffers, paced when max_serve_mbit asks.
#include "collectives/state_engine.h"

#include <fmt/format.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "p2p/address.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/base/text.h"
#include "p2p/membership_client.h"

namespace loco::collectives {

using p2p::Link;
using namespace state_detail;

// ---- serving
// -------------------------------------------------------------------------------------

void StateEngine::onLink(std::shared_ptr<Link> link, const std::string& from) {
  if (shut_down_ || !active_) {
    link->close(Status(StatusCode::kAborted, "no shared-state sync in progress here"));
    return;
  }
  auto s = std::make_shared<Served>();
  s->link = std::move(link);
  s->from = from;
  s->requests.resize(kPostedRequests);
  served_.push_back(s);
  std::weak_ptr<Served> weak = s;
  s->link->setCloseHandler([this, weak, alive = lifetime_.watch()](const Status&) {
    if (alive.expired()) return;
    if (auto sp = weak.lock()) dropServed(sp);
  });
  for (std::uint64_t seq = 0; seq < kPostedRequests; ++seq) postRequest(s, seq);
}

void StateEngine::postRequest(const std::shared_ptr<Served>& s, std::uint64_t seq) {
  std::weak_ptr<Served> weak = s;
  s->link->recv(kReqTagBase | seq, MutableByteSpan(s->requests[seq % kPostedRequests]),
                [this, weak, seq, alive = lifetime_.watch()](const Status& st) {
                  if (alive.expired() || !st.isOk()) return;
                  if (auto sp = weak.lock()) onRequest(sp, seq);
                });
}

void StateEngine::onRequest(const std::shared_ptr<Served>& s, std::uint64_t seq) {
  auto a = active_;
  if (!a) return dropServed(s);
  std::uint64_t round = 0;
  std::uint32_t chunk = 0;
  decodeRequest(s->requests[seq % kPostedRequests], round, chunk);
  if (chunk >= a->chunks.size()) {
    LOG_WARN(kLogPeer, "peer {} asked for shared-state chunk {} of {}; closing its link",
             shortId(s->from), chunk, a->chunks.size());
    return dropServed(s);
  }
  postRequest(s, seq + kPostedRequests);
  serveChunk(s, round, chunk);
}

void StateEngine::serveChunk(const std::shared_ptr<Served>& s, std::uint64_t round,
                             std::uint32_t chunk) {
  auto a = active_;
  const ChunkRef ref = a->chunks[chunk];
  ByteSpan data(ref.data, ref.len);
  std::shared_ptr<std::vector<std::uint8_t>> copy;
  if (a->options.corrupt_served_chunks_for_tests) {
    copy = std::make_shared<std::vector<std::uint8_t>>(data.begin(), data.end());
    (*copy)[copy->size() / 2] ^= 0x5A;
    data = ByteSpan(*copy);
  }
  const std::uint64_t gen = a->generation;
  std::weak_ptr<Served> weak = s;
  auto send = [this, weak, data, copy, round, chunk, gen, alive = lifetime_.watch()] {
    if (alive.expired() || !active_ || active_->generation != gen) return;
    auto sp = weak.lock();
    if (!sp) return;
    sp->link->send(dataTag(round, chunk), data,
                   [this, copy, gen, len = data.size(), alive](const Status& st) {
                     if (alive.expired() || !st.isOk()) return;
                     static Counter& sent = counter("collectives.state_bytes_sent");
                     sent.inc(len);
                     if (active_ && active_->generation == gen) active_->report.bytes_sent += len;
                   });
  };
  if (a->options.max_serve_mbit > 0) {
    const TimePoint now = Clock::now();
    const TimePoint start = std::max(now, a->serve_free_at);
    a->serve_free_at =
        start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                    static_cast<double>(ref.len) * 8 / (a->options.max_serve_mbit * 1e6)));
    if (start > now) {
      // Start times only grow: one timer serves the queue in order.
      paced_.emplace_back(start, std::move(send));
      if (paced_.size() == 1) armPacing();
      return;
    }
  }
  send();
}

void StateEngine::armPacing() {
  if (paced_.empty()) return;
  pace_timer_.startAt(paced_.front().first, [this] {
    const TimePoint now = Clock::now();
    while (!paced_.empty() && paced_.front().first <= now) {
      auto send = std::move(paced_.front().second);
      paced_.pop_front();
      send();
    }
    armPacing();
  });
}

void StateEngine::dropServed(const std::shared_ptr<Served>& s) {
  served_.erase(std::remove(served_.begin(), served_.end(), s), served_.end());
  s->link->setCloseHandler(nullptr);
  s->link->close(Status(StatusCode::kAborted, "shared-state serving over"));
}

}  // namespace loco::collectives
