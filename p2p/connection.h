#pragma once
// A framed connection over one Stream: reads frames (header validated before any allocation),
// queues writes (several frames gathered into one write), sends heartbeats and enforces deadlines
// (first frame, liveness). Used by the coordinator, the membership client and links.
//
// Thread rules: create, call and destroy only on the network thread that runs its io_context;
// handlers run there too. Owners must call close() before dropping their handlers' captures:
// after close() no handler runs again except the close handler, exactly once.

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/frame.h"
#include "p2p/stream.h"

namespace loco::p2p {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  using FrameHandler = std::function<void(const FrameHeader&, std::vector<std::uint8_t> payload)>;
  using CloseHandler = std::function<void(const Status& why)>;

  // Where a kData frame's payload goes. kPark stops reading this connection (TCP backpressure)
  // until resumeReading(); kReject closes it with `error`.
  struct DataTarget {
    enum class Kind { kReady, kPark, kReject } kind = Kind::kReject;
    MutableByteSpan dst;
    Status error;
  };
  using DataHandler = std::function<DataTarget(const FrameHeader&)>;
  using DataDone = std::function<void(const FrameHeader&)>;

  struct Options {
    std::string name = "conn";      // for logs: "coordinator", "peer 3f2a9c01 stream 2", ...
    Millis first_frame_timeout{0};  // 0: none. The handshake deadline.
    Millis heartbeat_interval{0};   // 0: send no heartbeats
    Millis liveness_timeout{0};     // 0: never time out for silence
    std::size_t max_queued_bytes = 64u << 20;  // a peer that stops reading is cut off here
  };

  static std::shared_ptr<Connection> create(asio::io_context& io, std::unique_ptr<Stream> stream,
                                            Options options);
  ~Connection();

  void setFrameHandler(FrameHandler h) { on_frame_ = std::move(h); }
  void setCloseHandler(CloseHandler h) { on_close_ = std::move(h); }
  void setDataHandlers(DataHandler target, DataDone done) {
    on_data_target_ = std::move(target);
    on_data_done_ = std::move(done);
  }
  // Changes heartbeat interval and liveness timeout (e.g. after the handshake).
  void setLiveness(Millis heartbeat_interval, Millis liveness_timeout);

  void start();

  // Queues a frame whose payload the connection copies.
  void send(MsgType type, ByteSpan payload = {}, std::uint64_t epoch = 0, std::uint64_t op_id = 0,
            std::uint32_t chunk = 0);
  // Queues a frame whose payload stays owned by the caller until `done` runs (zero copy).
  void sendRef(FrameHeader header, ByteSpan payload, std::function<void(const Status&)> done);
  // Closes once everything queued has been written, or after `linger`, whichever is first.
  void closeAfterFlush(Status reason, Millis linger = Millis(1000));
  void close(Status reason);
  void resumeReading();

  const std::string& name() const { return options_.name; }
  void setName(std::string name) { options_.name = std::move(name); }
  std::string remoteAddress() const { return stream_->remoteAddress(); }
  std::string localAddress() const { return stream_->localAddress(); }
  double rttSeconds() const { return stream_->rttSeconds(); }

 private:
  Connection(asio::io_context& io, std::unique_ptr<Stream> stream, Options options);

  struct OutFrame {
    std::array<std::uint8_t, kFrameHeaderSize> header;
    std::vector<std::uint8_t> owned;
    ByteSpan payload;
    std::function<void(const Status&)> done;
  };

  void readHeader();
  void onHeader();
  void readPayload(MutableByteSpan dst, std::size_t offset, std::function<void()> then);
  void deliverData();
  void enqueue(OutFrame f);
  void writeMore();
  void armTimer();
  void onTimer();
  void fail(StatusCode code, std::string why);

  asio::io_context& io_;
  std::unique_ptr<Stream> stream_;
  Options options_;
  asio::steady_timer timer_;
  asio::steady_timer linger_timer_;
  Millis tick_{0};
  std::uint64_t timer_generation_ = 0;

  FrameHandler on_frame_;
  CloseHandler on_close_;
  DataHandler on_data_target_;
  DataDone on_data_done_;

  std::array<std::uint8_t, kFrameHeaderSize> header_buf_{};
  std::size_t header_have_ = 0;
  FrameHeader current_{};
  std::vector<std::uint8_t> payload_buf_;
  bool parked_ = false;
  bool got_first_frame_ = false;

  std::deque<OutFrame> queue_;
  std::vector<OutFrame> in_flight_;
  std::size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool closing_ = false;
  Status closing_reason_;
  bool closed_ = false;

  TimePoint started_at_{};
  TimePoint last_rx_{};
  TimePoint last_tx_{};
  TimePoint last_tick_{};
};

}  // namespace loco::p2p
