// The downloading side of a shared-state sync (state_engine.h): fetch the chunks this peer
// lacks from every source at once, verify each, replace sources that die or lie.
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

// ---- downloading ------------------------------------------------------------------------------

void StateEngine::startDownload() {
  auto a = active_;
  a->downloading = true;
  a->remaining = a->queue.size();
  a->excluded.assign(a->chunks.size(), {});
  for (const auto& s : a->plan.sources) a->sources.push_back(Source{s});
  LOG_DEBUG(kLogPeer, "shared state round {}: fetching {} chunk(s) from up to {} source(s)",
            a->round, a->remaining, a->sources.size());
  const std::size_t limit = a->options.max_sources == 0
                                ? a->sources.size()
                                : std::min(a->options.max_sources, a->sources.size());
  for (std::size_t i = 0; i < limit; ++i) dial(i);
  checkSources();
}

void StateEngine::dial(std::size_t index) {
  auto a = active_;
  Source& s = a->sources[index];
  s.active = true;
  auto hp = p2p::parseHostPort(s.info.addr);
  if (!hp) return dropSource(index, hp.status());
  const std::uint64_t gen = a->generation;
  p2p::connectLink(
      net_, *hp, self_id_, link_opts_, Deadline::after(kDialTimeout),
      [this, gen, index, alive = lifetime_.watch()](Result<std::shared_ptr<Link>> r) {
        if (alive.expired()) return;
        if (!active_ || active_->generation != gen || active_->sources[index].dead) {
          if (r) r.value()->close(Status(StatusCode::kAborted, "shared-state sync over"));
          return;
        }
        if (!r)
          return dropSource(index, r.status().withContext("connecting to a shared-state source"));
        Source& src = active_->sources[index];
        src.link = std::move(r.value());
        src.link->setCloseHandler([this, gen, index, alive](const Status& why) {
          if (alive.expired() || !active_ || active_->generation != gen) return;
          dropSource(index, why);
        });
        pump();
      },
      client_.epoch() | kStateLinkEpochBit);
}

void StateEngine::pump() {
  auto a = active_;
  if (!a || !a->downloading || a->download_done) return;
  const std::size_t window = a->options.requests_per_source;
  bool progress = true;
  while (progress && active_ == a) {
    progress = false;
    // One chunk per source per pass, so every source gets a share of the queue's front.
    for (std::size_t i = 0; i < a->sources.size() && active_ == a; ++i) {
      Source& s = a->sources[i];
      if (!s.link || s.dead || s.outstanding >= window) continue;
      for (auto it = a->queue.begin(); it != a->queue.end(); ++it) {
        const std::uint32_t c = *it;
        if (!s.info.holdsChunk(c)) continue;
        const auto& ex = a->excluded[c];
        if (std::find(ex.begin(), ex.end(), i) != ex.end()) continue;
        a->queue.erase(it);
        request(i, c);
        progress = true;
        break;
      }
    }
  }
  if (active_ == a) checkSources();
}

void StateEngine::checkSources() {
  auto a = active_;
  if (!a || !a->downloading || a->download_done || a->queue.empty()) return;
  auto usable = [&](std::size_t i, std::uint32_t c) {
    const Source& s = a->sources[i];
    const auto& ex = a->excluded[c];
    return !s.dead && s.info.holdsChunk(c) && std::find(ex.begin(), ex.end(), i) == ex.end();
  };
  for (std::uint32_t c : a->queue) {
    bool covered = false;
    for (std::size_t i = 0; i < a->sources.size() && !covered; ++i)
      covered = a->sources[i].active && usable(i, c);
    if (covered) continue;
    // A standby source takes over (max_sources), else nobody can serve this chunk any more.
    bool dialed = false;
    for (std::size_t i = 0; i < a->sources.size() && !dialed; ++i) {
      if (!a->sources[i].active && usable(i, c)) {
        dial(i);
        dialed = true;
      }
    }
    if (dialed) return;  // dial() may have failed and re-entered; the next pump checks again
    std::size_t corrupt = 0, dead = 0;
    for (const Source& s : a->sources) {
      dead += s.dead ? 1 : 0;
      corrupt += s.corrupt > 0 ? 1 : 0;
    }
    return fail(Status(
        StatusCode::kDataLoss,
        fmt::format("shared-state sync: no source left for chunk {} ({} source(s) in the plan, {} "
                    "dropped, {} served corrupt data)",
                    c, a->sources.size(), dead, corrupt)));
  }
}

void StateEngine::request(std::size_t index, std::uint32_t chunk) {
  auto a = active_;
  Source& s = a->sources[index];
  ++s.outstanding;
  s.used = true;
  const std::size_t len = a->chunks[chunk].len;
  auto buf = std::make_shared<std::vector<std::uint8_t>>();
  if (!a->spare.empty()) {
    *buf = std::move(a->spare.back());
    a->spare.pop_back();
  }
  buf->resize(len);
  auto req = std::make_shared<std::array<std::uint8_t, 16>>(encodeRequest(a->round, chunk));
  const std::uint64_t gen = a->generation;
  auto link = s.link;  // the completions below may drop the source's reference
  link->recv(dataTag(a->round, chunk), MutableByteSpan(*buf),
             [this, gen, index, chunk, buf, alive = lifetime_.watch()](const Status& st) {
               if (alive.expired()) return;
               onChunk(gen, index, chunk, std::move(*buf), st);
             });
  if (active_ != a || a->sources[index].dead) return;
  link->send(kReqTagBase | s.next_seq++, ByteSpan(*req), [req](const Status&) {});
}

void StateEngine::onChunk(std::uint64_t generation, std::size_t index, std::uint32_t chunk,
                          std::vector<std::uint8_t> buf, const Status& st) {
  auto a = active_;
  if (!a || a->generation != generation) return;
  Source& s = a->sources[index];
  if (s.outstanding > 0) --s.outstanding;
  if (a->download_done) return;
  if (!st.isOk()) {
    a->queue.push_front(chunk);
    dropSource(index, st);
    return pump();
  }
  if (XXH3_64bits(buf.data(), buf.size()) != a->plan.canonical[chunk]) {
    static Counter& rejected = counter("collectives.state_chunks_rejected");
    rejected.inc();
    ++a->report.chunks_rejected;
    ++s.corrupt;
    a->excluded[chunk].push_back(index);
    a->queue.push_front(chunk);
    if (a->spare.size() < 64) a->spare.push_back(std::move(buf));
    LOG_WARN(kLogPeer,
             "shared-state chunk {} from peer {} failed its hash check ({} so far from that peer); "
             "fetching it "
             "from another source",
             chunk, shortId(s.info.peer_id), s.corrupt);
    if (s.corrupt >= kMaxCorruptChunksPerSource) {
      client_.sendToCoordinator(
          p2p::MsgType::kStateComplaint,
          p2p::encodeStateComplaint(
              {s.info.peer_id, s.corrupt,
               fmt::format("chunks failed XXH3 verification in round {}", a->round)}));
      dropSource(index,
                 Status(StatusCode::kDataLoss, fmt::format("served {} corrupt chunks", s.corrupt)));
    }
    return pump();
  }
  std::memcpy(a->chunks[chunk].data, buf.data(), buf.size());
  static Counter& received = counter("collectives.state_bytes_received");
  received.inc(buf.size());
  a->report.bytes_received += buf.size();
  ++a->report.chunks_received;
  if (a->spare.size() < 64) a->spare.push_back(std::move(buf));
  if (--a->remaining == 0) return downloadDone();
  pump();
}

void StateEngine::dropSource(std::size_t index, const Status& why) {
  auto a = active_;
  if (!a || index >= a->sources.size()) return;
  Source& s = a->sources[index];
  if (s.dead) return;
  s.dead = true;
  ++a->report.sources_dropped;
  static Counter& dropped = counter("collectives.state_sources_dropped");
  dropped.inc();
  LOG_WARN(kLogPeer, "shared-state source {} dropped ({} chunk(s) in flight go to the others): {}",
           shortId(s.info.peer_id), s.outstanding, why.message());
  if (auto link = std::move(s.link)) {
    link->setCloseHandler(nullptr);
    link->close(why);  // fails its receives: their chunks go back to the queue
  }
  s.outstanding = 0;
  // Keep max_sources sources busy.
  if (a->options.max_sources > 0 && active_ == a) {
    std::size_t live = 0;
    for (const Source& x : a->sources) live += x.active && !x.dead ? 1 : 0;
    for (std::size_t i = 0; i < a->sources.size() && live < a->options.max_sources && active_ == a;
         ++i) {
      if (!a->sources[i].active && !a->sources[i].dead) {
        dial(i);
        ++live;
      }
    }
  }
  if (active_ == a) pump();
}

void StateEngine::downloadDone() {
  auto a = active_;
  a->download_done = true;
  a->report.transfer_seconds = std::chrono::duration<double>(Clock::now() - a->plan_at).count();
  for (const Source& s : a->sources) a->report.sources_used += s.used ? 1 : 0;
  closeLinks(*a);
  const std::uint8_t ok = 1;
  client_.sendToCoordinator(p2p::MsgType::kStateDone, {ok}, a->round);
}

}  // namespace loco::collectives
