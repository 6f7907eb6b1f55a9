#include "p2p/connection.h"

#include <fmt/format.h>

#include <algorithm>

#include "p2p/base/log.h"
#include "p2p/base/metrics.h"

namespace loco::p2p {
namespace {
constexpr std::size_t kMaxFramesPerWrite = 64;
constexpr std::size_t kMaxBytesPerWrite = 8u << 20;
constexpr Millis kMinTick{20};

Status ioStatus(const Stream& stream, const std::error_code& ec, const std::string& name,
                const char* op) {
  // A refused TLS handshake says why (tls_stream.h); that is not a lost peer to retry.
  if (std::string why = stream.failureReason(); !why.empty()) {
    return Status(StatusCode::kUnauthenticated,
                  fmt::format("{} ({}): {}", name, stream.remoteAddress(), why));
  }
  if (ec == asio::error::eof) {
    return Status(StatusCode::kPeerLost, fmt::format("{}: closed by the remote end", name));
  }
  if (ec == asio::error::connection_reset || ec == asio::error::broken_pipe) {
    return Status(StatusCode::kPeerLost,
                  fmt::format("{}: connection reset by the remote end", name));
  }
  if (ec == asio::error::timed_out) {
    return Status(StatusCode::kTimeout,
                  fmt::format("{}: {} timed out (TCP_USER_TIMEOUT)", name, op));
  }
  return Status(StatusCode::kPeerLost, fmt::format("{}: {} failed: {}", name, op, ec.message()));
}
}  // namespace

std::shared_ptr<Connection> Connection::create(asio::io_context& io, std::unique_ptr<Stream> stream,
                                               Options options) {
  return std::shared_ptr<Connection>(new Connection(io, std::move(stream), std::move(options)));
}

Connection::Connection(asio::io_context& io, std::unique_ptr<Stream> stream, Options options)
    : io_(io),
      stream_(std::move(stream)),
      options_(std::move(options)),
      timer_(io),
      linger_timer_(io) {}

Connection::~Connection() {
  if (!closed_) stream_->close();
}

void Connection::start() {
  started_at_ = last_rx_ = last_tx_ = last_tick_ = Clock::now();
  armTimer();
  readHeader();
}

void Connection::setLiveness(Millis heartbeat_interval, Millis liveness_timeout) {
  options_.heartbeat_interval = heartbeat_interval;
  options_.liveness_timeout = liveness_timeout;
  if (liveness_timeout.count() > 0) stream_->setUserTimeout(liveness_timeout);
  last_rx_ = Clock::now();
  armTimer();
}

// ---- reading -------------------------------------------------------------------------------

void Connection::readHeader() {
  if (closed_) return;
  auto self = shared_from_this();
  stream_->asyncReadSome(
      asio::buffer(header_buf_.data() + header_have_, kFrameHeaderSize - header_have_),
      [self](const std::error_code& ec, std::size_t n) {
        if (self->closed_) return;
        if (ec) return self->close(ioStatus(*self->stream_, ec, self->options_.name, "read"));
        self->last_rx_ = Clock::now();
        self->header_have_ += n;
        if (self->header_have_ < kFrameHeaderSize) return self->readHeader();
        self->header_have_ = 0;
        self->onHeader();
      });
}

void Connection::onHeader() {
  HeaderParse hp = parseFrameHeader(std::span<const std::uint8_t, kFrameHeaderSize>(header_buf_));
  if (!hp.ok()) {
    static Counter& rejected = counter("p2p.frames_rejected");
    rejected.inc();
    counter(fmt::format("p2p.frames_rejected.{}", frameErrorName(hp.error))).inc();
    if (hp.error == FrameError::kBadMagic && header_buf_[0] == 0x16 && header_buf_[1] == 0x03) {
      return fail(StatusCode::kUnauthenticated,
                  fmt::format("{} from {}: a TLS client reached this plaintext (--insecure) "
                              "endpoint; run every side with TLS or every side with --insecure",
                              options_.name, stream_->remoteAddress()));
    }
    return fail(StatusCode::kProtocolError,
                fmt::format("{} from {}: rejected frame header ({})", options_.name,
                            stream_->remoteAddress(), frameErrorName(hp.error)));
  }
  current_ = hp.header;
  if (current_.type == MsgType::kData) {
    if (!on_data_target_) {
      counter("p2p.frames_rejected.unexpected_type").inc();
      return fail(StatusCode::kProtocolError,
                  fmt::format("{}: unexpected Data frame on a control connection", options_.name));
    }
    return deliverData();
  }
  payload_buf_.assign(current_.length, 0);
  auto self = shared_from_this();
  readPayload(MutableByteSpan(payload_buf_), 0, [self] {
    self->got_first_frame_ = true;
    // A copy: the handler may replace itself (a handshake handing the connection on).
    if (auto handler = self->on_frame_; handler && !self->closing_) {
      handler(self->current_, std::move(self->payload_buf_));
    }
    self->payload_buf_.clear();
    self->readHeader();
  });
}

void Connection::deliverData() {
  DataTarget t = on_data_target_(current_);
  switch (t.kind) {
    case DataTarget::Kind::kPark:
      parked_ = true;
      return;
    case DataTarget::Kind::kReject:
      counter("p2p.frames_rejected.bad_data").inc();
      return close(t.error);
    case DataTarget::Kind::kReady:
      break;
  }
  if (t.dst.size() != current_.length) {
    return fail(StatusCode::kInternal,
                fmt::format("{}: data target of {} bytes for a {}-byte chunk", options_.name,
                            t.dst.size(), current_.length));
  }
  auto self = shared_from_this();
  readPayload(t.dst, 0, [self] {
    self->got_first_frame_ = true;
    if (auto handler = self->on_data_done_) handler(self->current_);
    self->readHeader();
  });
}

void Connection::resumeReading() {
  if (!parked_ || closed_) return;
  parked_ = false;
  last_rx_ = Clock::now();
  deliverData();
}

void Connection::readPayload(MutableByteSpan dst, std::size_t offset, std::function<void()> then) {
  if (closed_) return;
  if (offset == dst.size()) return then();
  auto self = shared_from_this();
  stream_->asyncReadSome(
      asio::buffer(dst.data() + offset, dst.size() - offset),
      [self, dst, offset, then = std::move(then)](const std::error_code& ec,
                                                  std::size_t n) mutable {
        if (self->closed_) return;
        if (ec) return self->close(ioStatus(*self->stream_, ec, self->options_.name, "read"));
        self->last_rx_ = Clock::now();
        self->readPayload(dst, offset + n, std::move(then));
      });
}

// ---- writing -------------------------------------------------------------------------------

void Connection::send(MsgType type, ByteSpan payload, std::uint64_t epoch, std::uint64_t op_id,
                      std::uint32_t chunk) {
  OutFrame f;
  FrameHeader h{type, 0, static_cast<std::uint32_t>(payload.size()), chunk, epoch, op_id};
  f.header = encodeFrameHeader(h);
  f.owned.assign(payload.begin(), payload.end());
  f.payload = ByteSpan(f.owned);
  enqueue(std::move(f));
}

void Connection::sendRef(FrameHeader header, ByteSpan payload,
                         std::function<void(const Status&)> done) {
  header.length = static_cast<std::uint32_t>(payload.size());
  OutFrame f;
  f.header = encodeFrameHeader(header);
  f.payload = payload;
  f.done = std::move(done);
  enqueue(std::move(f));
}

void Connection::enqueue(OutFrame f) {
  if (closed_ || closing_) {
    if (f.done) {
      Status why(StatusCode::kAborted, fmt::format("{}: connection is closing", options_.name));
      asio::post(io_, [done = std::move(f.done), why] { done(why); });
    }
    return;
  }
  queued_bytes_ += kFrameHeaderSize + f.owned.size();
  queue_.push_back(std::move(f));
  if (queued_bytes_ > options_.max_queued_bytes) {
    counter("p2p.connections_cut.slow_reader").inc();
    return fail(StatusCode::kResourceExhausted,
                fmt::format("{}: remote is not reading ({} bytes queued, limit {})", options_.name,
                            queued_bytes_, options_.max_queued_bytes));
  }
  writeMore();
}

void Connection::writeMore() {
  if (closed_ || writing_) return;
  if (queue_.empty()) {
    if (closing_) close(closing_reason_);
    return;
  }
  std::vector<asio::const_buffer> bufs;
  std::size_t bytes = 0;
  while (!queue_.empty() && in_flight_.size() < kMaxFramesPerWrite &&
         (in_flight_.empty() || bytes + queue_.front().payload.size() <= kMaxBytesPerWrite)) {
    in_flight_.push_back(std::move(queue_.front()));
    queue_.pop_front();
    bytes += kFrameHeaderSize + in_flight_.back().payload.size();
  }
  for (const OutFrame& f : in_flight_) {
    bufs.emplace_back(f.header.data(), f.header.size());
    if (!f.payload.empty()) bufs.emplace_back(f.payload.data(), f.payload.size());
  }
  writing_ = true;
  auto self = shared_from_this();
  stream_->asyncWriteAll(bufs, [self](const std::error_code& ec, std::size_t) {
    self->writing_ = false;
    Status result;
    if (ec) {
      result = self->closed_ ? Status(StatusCode::kAborted,
                                      fmt::format("{}: connection closed", self->options_.name))
                             : ioStatus(*self->stream_, ec, self->options_.name, "write");
    }
    auto done = std::move(self->in_flight_);
    self->in_flight_.clear();
    for (OutFrame& f : done) {
      self->queued_bytes_ -= std::min(self->queued_bytes_, kFrameHeaderSize + f.owned.size());
      if (f.done) f.done(result);
    }
    if (!result.isOk()) return self->close(result);
    self->last_tx_ = Clock::now();
    self->writeMore();
  });
}

// ---- timers and closing ----------------------------------------------------------------------

void Connection::armTimer() {
  Millis tick{0};
  auto consider = [&](Millis m) {
    if (m.count() > 0) tick = tick.count() == 0 ? m : std::min(tick, m);
  };
  consider(options_.heartbeat_interval);
  consider(options_.liveness_timeout / 4);
  if (!got_first_frame_) consider(options_.first_frame_timeout / 4);
  ++timer_generation_;
  if (tick.count() == 0 || closed_) {
    timer_.cancel();
    return;
  }
  tick_ = std::max(tick, kMinTick);
  timer_.expires_after(tick_);
  auto self = shared_from_this();
  timer_.async_wait([self, gen = timer_generation_](const std::error_code& ec) {
    if (ec || self->closed_ || gen != self->timer_generation_) return;
    self->onTimer();
  });
}

void Connection::onTimer() {
  auto now = Clock::now();
  // A tick far later than scheduled means this process was stopped or starved; the silence we
  // would measure is our own, so give the remote a fresh window instead of blaming it.
  auto late = now - last_tick_;
  last_tick_ = now;
  if (late > std::max<Clock::duration>(3 * tick_, options_.liveness_timeout / 2)) {
    LOG_WARN(kLogP2p, "{}: this process was stalled for {} ms; restarting liveness clocks",
             options_.name, toMillis(late));
    last_rx_ = now;
    // Read what arrived meanwhile before writing: a remote that gave up on us has closed its
    // socket, our write would draw a reset, and the reset would hide its last message (Evicted).
    return armTimer();
  }
  if (parked_) last_rx_ = now;  // we stopped reading on purpose

  if (!got_first_frame_ && options_.first_frame_timeout.count() > 0 &&
      now - started_at_ > options_.first_frame_timeout) {
    counter("p2p.handshake_timeouts").inc();
    return fail(
        StatusCode::kTimeout,
        fmt::format("{} from {}: no complete frame within {} ms of connecting (handshake deadline)",
                    options_.name, stream_->remoteAddress(), options_.first_frame_timeout.count()));
  }
  if (options_.liveness_timeout.count() > 0 && now - last_rx_ > options_.liveness_timeout) {
    counter("p2p.heartbeat_timeouts").inc();
    return fail(
        StatusCode::kTimeout,
        fmt::format("{}: nothing received for {} ms (heartbeat timeout {} ms)", options_.name,
                    toMillis(now - last_rx_), options_.liveness_timeout.count()));
  }
  if (options_.heartbeat_interval.count() > 0 && queue_.empty() && !writing_ &&
      now - last_tx_ >= options_.heartbeat_interval) {
    send(MsgType::kHeartbeat);
  }
  armTimer();
}

void Connection::closeAfterFlush(Status reason, Millis linger) {
  if (closed_ || closing_) return;
  closing_ = true;
  closing_reason_ = std::move(reason);
  if (!writing_ && queue_.empty()) return close(closing_reason_);
  linger_timer_.expires_after(linger);
  auto self = shared_from_this();
  linger_timer_.async_wait([self](const std::error_code& ec) {
    if (!ec) self->close(self->closing_reason_);
  });
}

void Connection::fail(StatusCode code, std::string why) {
  close(Status(code, std::move(why)));
}

void Connection::close(Status reason) {
  if (closed_) return;
  closed_ = true;
  ++timer_generation_;
  timer_.cancel();
  linger_timer_.cancel();
  stream_->close();
  // Frames never handed to the socket fail now; the write in flight fails in its own completion.
  auto pending = std::move(queue_);
  queue_.clear();
  for (OutFrame& f : pending) {
    if (f.done) f.done(Status(StatusCode::kAborted, reason.message()));
  }
  on_frame_ = nullptr;
  on_data_target_ = nullptr;
  on_data_done_ = nullptr;
  if (auto h = std::move(on_close_)) {
    on_close_ = nullptr;
    h(reason);
  }
}

}  // namespace loco::p2p
