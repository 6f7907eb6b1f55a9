#include "p2p/link.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "crypto/identity.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/base/text.h"
#include "p2p/connection.h"
#include "p2p/messages.h"
#include "p2p/net.h"
#include "p2p/tls_stream.h"
#include "p2p/traversal_net.h"

namespace loco::p2p {
namespace {
constexpr std::uint32_t kMaxLinkStreams = 64;
}

Link::Link(std::string name, std::vector<std::shared_ptr<Connection>> streams, LinkOptions options)
    : name_(std::move(name)),
      streams_(std::move(streams)),
      state_(streams_.size()),
      options_(options),
      // Per link, as /metrics shows it: {link="to 10.0.0.2:7100"} or {link="from 3f2a9c01"}.
      sent_bytes_(counter("link.sent_bytes", {{"link", name_.substr(name_.find(' ') + 1)}})),
      received_bytes_(
          counter("link.received_bytes", {{"link", name_.substr(name_.find(' ') + 1)}})) {}

Link::~Link() {
  for (auto& s : streams_) {
    s->setCloseHandler(nullptr);
    s->close(Status(StatusCode::kAborted, "link destroyed"));
  }
}

void Link::start() {
  for (std::size_t i = 0; i < streams_.size(); ++i) wire(i);
}

void Link::wire(std::size_t index) {
  auto& conn = streams_[index];
  std::weak_ptr<Link> weak = weak_from_this();
  conn->setDataHandlers(
      [weak, index](const FrameHeader& h) {
        using Kind = Connection::DataTarget::Kind;
        auto self = weak.lock();
        if (!self)
          return Connection::DataTarget{
              Kind::kReject, {}, Status(StatusCode::kAborted, "link gone")};
        ChunkTarget t = self->target(index, h);
        const Kind kind = t.kind == ChunkTarget::Kind::kReady  ? Kind::kReady
                          : t.kind == ChunkTarget::Kind::kPark ? Kind::kPark
                                                               : Kind::kReject;
        return Connection::DataTarget{kind, t.dst, std::move(t.error)};
      },
      [weak, index](const FrameHeader& h) {
        if (auto self = weak.lock()) self->dataDone(index, h);
      });
  conn->setFrameHandler([](const FrameHeader&, std::vector<std::uint8_t>) {});  // heartbeats
  conn->setCloseHandler([weak](const Status& why) {
    if (auto self = weak.lock()) self->close(why);
  });
}

std::uint32_t Link::chunkCount(std::size_t bytes) const {
  return static_cast<std::uint32_t>((bytes + options_.chunk_bytes - 1) / options_.chunk_bytes);
}

std::size_t Link::chunkLength(std::size_t total, std::uint32_t chunk) const {
  std::size_t begin = static_cast<std::size_t>(chunk) * options_.chunk_bytes;
  return std::min<std::size_t>(options_.chunk_bytes, total - begin);
}

void Link::send(std::uint64_t tag, ByteSpan data, Done done, int priority) {
  if (closed_) return done(close_reason_);
  auto op = std::make_shared<SendOp>();
  op->tag = tag;
  op->priority = priority;
  op->data = data;
  op->done = std::move(done);
  op->chunks = chunkCount(data.size());
  if (op->chunks == 0) return op->done(Status());
  if (sends_.empty()) busy_since_ = Clock::now();
  sends_.push_back(std::move(op));
  pump();
}

void Link::pump() {
  bool progress = true;
  while (progress && !closed_) {
    progress = false;
    for (std::size_t i = 0; i < streams_.size() && !sends_.empty(); ++i) {
      if (state_[i].queued >= options_.queued_chunks_per_stream) continue;
      // The first unsent chunk of the highest priority.
      auto it = sends_.end();
      for (auto c = sends_.begin(); c != sends_.end(); ++c) {
        if ((*c)->next < (*c)->chunks && (it == sends_.end() || (*c)->priority > (*it)->priority))
          it = c;
      }
      if (it == sends_.end()) return;
      std::shared_ptr<SendOp> op = *it;
      std::uint32_t chunk = op->next++;
      std::size_t offset = static_cast<std::size_t>(chunk) * options_.chunk_bytes;
      const std::uint16_t flags = chunk + 1 == op->chunks ? kFlagLastChunk : 0;
      FrameHeader h{MsgType::kData, flags, 0, chunk, 0, op->tag};
      ++state_[i].queued;
      progress = true;
      std::weak_ptr<Link> weak = weak_from_this();
      streams_[i]->sendRef(h, op->data.subspan(offset, chunkLength(op->data.size(), chunk)),
                           [weak, op, i](const Status& st) {
                             auto self = weak.lock();
                             if (!self) return;
                             --self->state_[i].queued;
                             if (!st.isOk() && op->error.isOk()) op->error = st;
                             ++op->written;
                             self->maybeFinishSend(op);
                             self->pump();
                           });
    }
  }
}

Link::SendMeter Link::takeSendMeter() {
  if (!sends_.empty()) {
    auto now = Clock::now();
    meter_.busy_s += toSeconds(now - busy_since_);
    lifetime_meter_.busy_s += toSeconds(now - busy_since_);
    busy_since_ = now;
  }
  return std::exchange(meter_, SendMeter{});
}

double Link::rttSeconds() const {
  double best = 0;
  for (const auto& s : streams_) {
    const double r = s->rttSeconds();
    if (r > 0 && (best == 0 || r < best)) best = r;
  }
  return best;
}

double Link::sendRate() const {
  return lifetime_meter_.busy_s > 0
             ? static_cast<double>(lifetime_meter_.bytes) / lifetime_meter_.busy_s
             : 0;
}

void Link::maybeFinishSend(const std::shared_ptr<SendOp>& op) {
  if (op->written < op->chunks) return;
  auto it = std::find(sends_.begin(), sends_.end(), op);
  if (it == sends_.end()) return;  // already completed
  sends_.erase(it);
  if (op->error.isOk()) {
    meter_.bytes += op->data.size();
    lifetime_meter_.bytes += op->data.size();
    sent_bytes_.inc(op->data.size());
  }
  if (sends_.empty()) {
    const double busy = toSeconds(Clock::now() - busy_since_);
    meter_.busy_s += busy;
    lifetime_meter_.busy_s += busy;
  }
  op->done(op->error);
}

Status Link::acceptChunk(RecvOp& op, std::uint64_t tag, std::uint32_t chunk, std::size_t len,
                         bool last) {
  if (op.sized) {
    // Any length: whole chunks until the one flagged last, which sets the length.
    const std::size_t begin = static_cast<std::size_t>(chunk) * options_.chunk_bytes;
    bool bad = chunk >= op.chunks || op.seen[chunk] || begin + len > op.dst.size() ||
               (!last && len != options_.chunk_bytes) || (last && len == 0);
    if (!bad && last) {
      for (std::uint32_t c = chunk + 1; c < op.chunks; ++c) bad = bad || op.seen[c];
      op.chunks = chunk + 1;
      op.length = begin + len;
      op.got_last = true;
    }
    if (bad) {
      return Status(StatusCode::kProtocolError,
                    fmt::format("{}: chunk {} ({} bytes{}) of transfer {} does not fit the "
                                "{}-byte receive buffer or arrived twice",
                                name_, chunk, len, last ? ", last" : "", tag, op.dst.size()));
    }
    op.seen[chunk] = true;
    return Status();
  }
  // The sender flags its last chunk, so a buffer that is whole chunks too short or too long is
  // caught as surely as one that is a few bytes off.
  if (chunk >= op.chunks || len != chunkLength(op.dst.size(), chunk) || op.seen[chunk] ||
      last != (chunk + 1 == op.chunks)) {
    return Status(
        StatusCode::kProtocolError,
        fmt::format("{}: chunk {} ({} bytes{}) of transfer {} does not fit the {}-byte receive "
                    "buffer or arrived twice; sender and receiver disagree on the size",
                    name_, chunk, len, last ? ", last" : "", tag, op.dst.size()));
  }
  op.seen[chunk] = true;
  return Status();
}

Link::ChunkTarget Link::target(std::size_t index, const FrameHeader& h) {
  using Kind = ChunkTarget::Kind;
  auto& st = state_[index];
  auto it = recvs_.find(h.op_id);
  if (it != recvs_.end()) {
    Status ok =
        acceptChunk(it->second, h.op_id, h.chunk, h.length, (h.flags & kFlagLastChunk) != 0);
    if (!ok.isOk()) return {Kind::kReject, {}, ok};
    st.staging = false;
    std::size_t offset = static_cast<std::size_t>(h.chunk) * options_.chunk_bytes;
    return {Kind::kReady, it->second.dst.subspan(offset, h.length), {}};
  }
  if (staged_bytes_ + h.length > options_.max_staged_bytes) {
    st.parked = true;
    counter("p2p.link_streams_parked").inc();
    return {Kind::kPark, {}, {}};
  }
  st.staging = true;
  if (!spare_chunks_.empty()) {
    st.stage_buf = std::move(spare_chunks_.back());
    spare_chunks_.pop_back();
  }
  st.stage_buf.resize(h.length);
  staged_bytes_ += h.length;
  return {Kind::kReady, MutableByteSpan(st.stage_buf), {}};
}

void Link::dataDone(std::size_t index, const FrameHeader& h) {
  auto& st = state_[index];
  if (st.staging) {
    st.staging = false;
    Staged staged{h.chunk, (h.flags & kFlagLastChunk) != 0, std::move(st.stage_buf)};
    st.stage_buf.clear();
    // Its recv() may have been posted while the chunk was still arriving.
    if (recvs_.count(h.op_id) != 0) return deliverStaged(h.op_id, std::move(staged));
    staged_[h.op_id].push_back(std::move(staged));
    return;
  }
  auto it = recvs_.find(h.op_id);
  if (it != recvs_.end()) {
    ++it->second.received;
    if (it->second.complete()) finishRecv(h.op_id);
  }
}

void Link::finishRecv(std::uint64_t tag) {
  auto it = recvs_.find(tag);
  received_bytes_.inc(it->second.sized ? it->second.length : it->second.dst.size());
  Done done = std::move(it->second.done);
  SizedDone sized = std::move(it->second.sized);
  const std::size_t length = it->second.length;
  recvs_.erase(it);
  if (sized) return sized(Status(), length);
  done(Status());
}

void Link::recvUpTo(std::uint64_t tag, MutableByteSpan dst, SizedDone done) {
  if (dst.empty()) {
    return done(Status(StatusCode::kInvalidArgument, "recvUpTo into an empty buffer"), 0);
  }
  auto shared = std::make_shared<SizedDone>(std::move(done));
  recv(
      tag, dst, [shared](const Status& st) { (*shared)(st, 0); }, shared);
}

void Link::recv(std::uint64_t tag, MutableByteSpan dst, Done done) {
  recv(tag, dst, std::move(done), nullptr);
}

void Link::recv(std::uint64_t tag, MutableByteSpan dst, Done done,
                std::shared_ptr<SizedDone> sized) {
  if (closed_) return done(close_reason_);
  if (recvs_.count(tag) != 0) {
    return done(Status(StatusCode::kInvalidArgument,
                       fmt::format("{}: transfer {} is already being received", name_, tag)));
  }
  RecvOp op;
  op.dst = dst;
  op.done = std::move(done);
  if (sized) op.sized = [sized](const Status& st, std::size_t n) { (*sized)(st, n); };
  op.chunks = chunkCount(dst.size());
  op.seen.assign(op.chunks, false);
  if (op.chunks == 0) return op.done(Status());
  recvs_.emplace(tag, std::move(op));
  auto self = shared_from_this();  // completions below may drop the last other reference
  // Chunks that arrived early.
  if (auto sit = staged_.find(tag); sit != staged_.end()) {
    auto chunks = std::move(sit->second);
    staged_.erase(sit);
    for (Staged& s : chunks) {
      if (closed_ || recvs_.count(tag) == 0) break;
      deliverStaged(tag, std::move(s));
    }
  }
  // Staging has room again, or this recv is what a parked stream waited for.
  if (!closed_) resumeParked();
}

void Link::deliverStaged(std::uint64_t tag, Staged staged) {
  staged_bytes_ -= staged.bytes.size();
  RecvOp& op = recvs_.at(tag);
  Status ok = acceptChunk(op, tag, staged.chunk, staged.bytes.size(), staged.last);
  if (!ok.isOk()) return close(ok);
  std::memcpy(op.dst.data() + static_cast<std::size_t>(staged.chunk) * options_.chunk_bytes,
              staged.bytes.data(), staged.bytes.size());
  if (spare_chunks_.size() < 16) spare_chunks_.push_back(std::move(staged.bytes));
  ++op.received;
  if (op.complete()) {
    finishRecv(tag);
    if (!closed_) resumeParked();
  }
}

void Link::resumeParked() {
  for (std::size_t i = 0; i < streams_.size(); ++i) {
    if (state_[i].parked) {
      state_[i].parked = false;
      streams_[i]->resumeReading();
    }
  }
}

void Link::close(const Status& why) {
  if (closed_) return;
  closed_ = true;
  auto self = shared_from_this();  // the close handler may drop the last other owner
  close_reason_ = why.isOk() ? Status(StatusCode::kAborted, name_ + ": link closed") : why;
  for (auto& s : streams_) {
    s->setCloseHandler(nullptr);
    s->close(close_reason_);
  }
  auto recvs = std::move(recvs_);
  recvs_.clear();
  for (auto& [tag, op] : recvs) op.done(close_reason_);
  // Chunks never handed to a stream will not be sent; the ones handed over complete through
  // their write callbacks, which the closed streams fail.
  auto sends = sends_;
  for (auto& op : sends) {
    if (op->error.isOk()) op->error = close_reason_;
    op->chunks = op->next;
    maybeFinishSend(op);
  }
  staged_.clear();
  staged_bytes_ = 0;
  if (auto h = std::move(on_close_)) h(close_reason_);
}

// ---- listener ---------------------------------------------------------------------------------

struct LinkListener::Acceptor {
  std::unique_ptr<asio::ip::tcp::acceptor> acceptor;
};

LinkListener::LinkListener(NetworkThread& net, LinkOptions options, OnLink on_link)
    : net_(net), options_(options), on_link_(std::move(on_link)) {}

LinkListener::~LinkListener() {
  close();
}

Result<std::unique_ptr<LinkListener>> LinkListener::start(NetworkThread& net,
                                                          const HostPort& listen,
                                                          LinkOptions options, OnLink on_link) {
  std::unique_ptr<LinkListener> l(new LinkListener(net, options, std::move(on_link)));
  auto acc = listenOn(net.context(), listen);
  if (!acc) return acc.status().withContext("link listener");
  l->acceptor_ = std::make_unique<Acceptor>(Acceptor{std::move(acc.value())});
  l->port_ = l->acceptor_->acceptor->local_endpoint().port();
  l->accept();
  return l;
}

void LinkListener::close() {
  if (closed_) return;
  closed_ = true;
  std::error_code ignored;
  if (acceptor_) acceptor_->acceptor->close(ignored);
  for (auto& c : handshaking_) {
    c->setCloseHandler(nullptr);
    c->close(Status(StatusCode::kAborted, "listener closed"));
  }
  handshaking_.clear();
  partial_.clear();
}

void LinkListener::accept() {
  acceptor_->acceptor->async_accept(
      [this, alive = lifetime_.watch()](const std::error_code& ec, asio::ip::tcp::socket socket) {
        if (alive.expired() || closed_) return;
        if (ec) {
          if (ec == asio::error::operation_aborted) return;
          counter("p2p.link_accept_errors").inc();
          auto t = std::make_shared<asio::steady_timer>(net_.context(), Millis(50));
          t->async_wait([this, t, alive = lifetime_.watch()](const std::error_code&) {
            if (!alive.expired() && !closed_) accept();
          });
          return;
        }
        tuneSocket(socket, options_.tcp_user_timeout);
        setNotSentLowat(socket, options_.notsent_lowat);
        // A reverse dial we asked for goes to its dial; anything else is an incoming stream.
        traversal::routeAccepted(
            std::move(socket), options_.handshake_timeout, [this, alive](asio::ip::tcp::socket s) {
              if (alive.expired() || closed_) return;
              acceptStream(tls::wrap(std::move(s), {tls::Role::kServer, "", true}));
            });
        accept();
      });
}

void LinkListener::onTraversalFrame(const std::string& self_id, MsgType type, ByteSpan payload) {
  if (closed_) return;
  traversal::onCoordinatorFrame(
      net_.context(), self_id, type, payload,
      [this, alive = lifetime_.watch()](asio::ip::tcp::socket socket) {
        if (alive.expired() || closed_) return;
        tuneSocket(socket, options_.tcp_user_timeout);
        setNotSentLowat(socket, options_.notsent_lowat);
        acceptStream(tls::wrap(std::move(socket), {tls::Role::kServer, "", true}));
      });
}

void LinkListener::acceptStream(std::unique_ptr<Stream> stream) {
  if (closed_) return stream->close();
  {
    Connection::Options copts;
    copts.name = "incoming link stream";
    copts.first_frame_timeout = options_.handshake_timeout;
    auto conn = Connection::create(net_.context(), std::move(stream), copts);
    std::weak_ptr<Connection> weak = conn;
    conn->setFrameHandler([this, weak](const FrameHeader& h, std::vector<std::uint8_t> payload) {
      auto c = weak.lock();
      if (!c) return;
      if (h.type != MsgType::kLinkHello) {
        return c->close(Status(StatusCode::kProtocolError,
                               fmt::format("{} before LinkHello", msgTypeName(h.type))));
      }
      onHello(c, payload, h.epoch);
    });
    conn->setCloseHandler([this, raw = conn.get()](const Status& why) {
      if (why.code() == StatusCode::kUnauthenticated) {
        LOG_WARN(kLogP2p, "link stream refused: {}", why.message());
      } else {
        LOG_DEBUG(kLogP2p, "link stream closed during handshake: {}", why.message());
      }
      handshaking_.erase(std::remove_if(handshaking_.begin(), handshaking_.end(),
                                        [&](const auto& c) { return c.get() == raw; }),
                         handshaking_.end());
    });
    handshaking_.push_back(conn);
    conn->start();
  }
}

void LinkListener::onHello(const std::shared_ptr<Connection>& conn, ByteSpan payload,
                           std::uint64_t epoch) {
  auto hello = decodeLinkHello(payload);
  Status bad;
  if (!hello) {
    bad = hello.status();
  } else if (hello->stream_count == 0 || hello->stream_count > kMaxLinkStreams ||
             hello->stream_index >= hello->stream_count) {
    bad = Status(StatusCode::kProtocolError, fmt::format("stream {} of {} is out of range",
                                                         hello->stream_index, hello->stream_count));
  } else if (hello->chunk_bytes != options_.chunk_bytes) {
    bad = Status(StatusCode::kProtocolError, fmt::format("chunk size {} differs from ours ({})",
                                                         hello->chunk_bytes, options_.chunk_bytes));
  }
  if (bad.isOk() && tls::mode() == tls::Mode::kTls && conn->peerId() != hello->from_peer) {
    counter("tls.refused", {{"reason", "link_id_mismatch"}}).inc();
    bad = Status(
        StatusCode::kUnauthenticated,
        fmt::format("link stream from {}: the certificate is for {} but LinkHello "
                    "claims {}",
                    conn->remoteAddress(), shortId(conn->peerId()), shortId(hello->from_peer)));
  }
  if (!bad.isOk()) return conn->close(bad);

  handshaking_.erase(std::remove(handshaking_.begin(), handshaking_.end(), conn),
                     handshaking_.end());
  conn->setCloseHandler(nullptr);
  auto& p = partial_[hello->link_id];
  if (p.streams.empty()) {
    p.streams.resize(hello->stream_count);
    p.from = hello->from_peer;
    p.epoch = epoch;
    p.started = Clock::now();
    // A dialer that gives up (or whose close a partition eats) never sends the other streams:
    // without this the ones that arrived stay open, each holding a descriptor, for good.
    auto t = std::make_shared<asio::steady_timer>(net_.context(), partialLinkTimeout());
    t->async_wait([this, t, id = hello->link_id, started = p.started,
                   alive = lifetime_.watch()](const std::error_code&) {
      if (!alive.expired() && !closed_) dropPartial(id, started);
    });
  }
  if (p.streams.size() != hello->stream_count || p.streams[hello->stream_index] ||
      p.from != hello->from_peer) {
    partial_.erase(hello->link_id);
    return conn->close(Status(StatusCode::kProtocolError, "inconsistent LinkHello"));
  }
  p.streams[hello->stream_index] = conn;
  conn->send(MsgType::kLinkAccept);
  if (++p.arrived < p.streams.size()) return;
  auto streams = std::move(p.streams);
  std::string from = p.from;
  const std::uint64_t link_epoch = p.epoch;
  partial_.erase(hello->link_id);
  auto link = std::make_shared<Link>(fmt::format("link from {}", shortId(from)), std::move(streams),
                                     options_);
  link->start();
  on_link_(std::move(link), from, link_epoch);
}

void LinkListener::dropPartial(const std::string& link_id, TimePoint started) {
  auto it = partial_.find(link_id);
  if (it == partial_.end() || it->second.started != started) return;  // completed, or a new one
  Partial p = std::move(it->second);
  partial_.erase(it);
  counter("p2p.link_partial_dropped").inc();
  const Status why(
      StatusCode::kTimeout,
      fmt::format("link from {}: {} of its {} streams arrived within {} ms", shortId(p.from),
                  p.arrived, p.streams.size(), partialLinkTimeout().count()));
  LOG_INFO(kLogP2p, "{}; closing them", why.message());
  for (auto& c : p.streams) {
    if (c) c->close(why);
  }
}

// ---- connecting -------------------------------------------------------------------------------

namespace {
// One link being dialed. Its deadline timer owns it until it finishes; the connections' handlers
// only hold weak references, so an abandoned dial (network thread stopped) leaves no cycle.
struct LinkDial : std::enable_shared_from_this<LinkDial> {
  asio::io_context& io;
  asio::steady_timer timer;
  LinkOptions options;
  std::string self_id;
  std::string remote;
  std::vector<std::shared_ptr<Connection>> streams;
  std::size_t accepted = 0;
  bool finished = false;
  std::function<void(Result<std::shared_ptr<Link>>)> done;
  traversal::LinkPath path = traversal::LinkPath::kDirect;
  TimePoint started = Clock::now();

  LinkDial(asio::io_context& i, LinkOptions o) : io(i), timer(i), options(o) {}

  void fail(const Status& st) {
    if (finished) return;
    finished = true;
    timer.cancel();
    for (auto& s : streams) {
      if (!s) continue;
      s->setCloseHandler(nullptr);
      s->close(st);
    }
    done(st);
  }
};
}  // namespace

void connectLink(NetworkThread& net, const HostPort& remote, const std::string& self_id,
                 LinkOptions options, Deadline deadline,
                 std::function<void(Result<std::shared_ptr<Link>>)> done, std::uint64_t epoch) {
  asio::io_context& io = net.context();
  auto dial = std::make_shared<LinkDial>(io, options);
  dial->self_id = self_id;
  dial->remote = remote.toString();
  dial->streams.resize(options.streams);
  dial->done = std::move(done);
  dial->path = traversal::pathTo(self_id, dial->remote);
  const std::string link_id = crypto::randomHex(16);
  dial->timer.expires_at(deadline.at());
  dial->timer.async_wait([dial](const std::error_code& ec) {
    if (!ec)
      dial->fail(Status(StatusCode::kTimeout,
                        "link to " + dial->remote + ": streams not accepted before the deadline"));
  });
  for (std::uint32_t i = 0; i < options.streams; ++i) {
    std::weak_ptr<LinkDial> weak_dial = dial;
    // Direct, or reverse / punched through the coordinator when the far end cannot accept.
    traversal::openSocket(
        io, self_id, remote, deadline, [weak_dial, i, link_id, deadline, epoch](auto sock) {
          auto d = weak_dial.lock();
          if (!d || d->finished) return;
          if (!sock) return d->fail(sock.status().withContext("link to " + d->remote));
          tuneSocket(*sock.value(), d->options.tcp_user_timeout);
          setNotSentLowat(*sock.value(), d->options.notsent_lowat);
          Connection::Options copts;
          copts.name = fmt::format("link to {} stream {}", d->remote, i);
          copts.first_frame_timeout = std::max(Millis(1), deadline.remaining());
          // The far end must hold the certificate of the member announced at this address.
          auto conn = Connection::create(
              d->io,
              tls::wrap(std::move(*sock.value()),
                        {tls::Role::kClient, tls::expectedPeerAt(d->remote), false}),
              copts);
          d->streams[i] = conn;
          conn->setCloseHandler([weak_dial](const Status& why) {
            if (auto dc = weak_dial.lock()) dc->fail(why.withContext("link handshake"));
          });
          conn->setFrameHandler([weak_dial](const FrameHeader& h, std::vector<std::uint8_t>) {
            auto dd = weak_dial.lock();
            if (!dd || dd->finished) return;
            if (h.type != MsgType::kLinkAccept) {
              return dd->fail(Status(StatusCode::kProtocolError,
                                     fmt::format("{} instead of LinkAccept", msgTypeName(h.type))));
            }
            if (++dd->accepted < dd->streams.size()) return;
            dd->finished = true;
            dd->timer.cancel();
            if (dd->path != traversal::LinkPath::kDirect) {
              // The operator's evidence of how a link to a peer behind a NAT came up, and how fast.
              LOG_INFO(kLogP2p, "link to {} up by {} in {:.0f} ms ({} streams)", dd->remote,
                       traversal::linkPathName(dd->path),
                       toSeconds(Clock::now() - dd->started) * 1e3, dd->streams.size());
              counter("p2p.links_traversed", {{"path", traversal::linkPathName(dd->path)}}).inc();
            }
            auto link = std::make_shared<Link>(fmt::format("link to {}", dd->remote), dd->streams,
                                               dd->options);
            link->start();
            dd->done(std::move(link));
          });
          conn->start();
          conn->send(MsgType::kLinkHello,
                     encodeLinkHello(LinkHelloMsg{link_id, d->self_id, i,
                                                  static_cast<std::uint32_t>(d->streams.size()),
                                                  d->options.chunk_bytes}),
                     epoch);
        });
  }
}

}  // namespace loco::p2p
