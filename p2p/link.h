#pragma once
// A link between two peers: K parallel TCP streams (ARCHITECTURE.md §3). One large transfer is cut
// into chunks that the streams pull as they drain, so all K carry it and a slow stream simply takes
// fewer chunks. The receiver writes each chunk straight into the destination buffer.
//
// Buffering is bounded: chunks that arrive before their recv() is posted are staged up to
// max_staged_bytes; beyond that the stream stops reading (TCP backpressure) until recv() is posted.
//
// No ASIO type appears here: code above p2p/ uses links through this header.
// Thread rules: create, call and destroy on the network thread; completions run there.
// Errors: a stream that closes fails the whole link; every pending send/recv completes with the
// reason (kPeerLost, kTimeout, kProtocolError, kAborted).

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/metrics.h"
#include "p2p/base/status.h"
#include "p2p/frame.h"
#include "p2p/runtime.h"

namespace loco::p2p {

class Connection;
class Stream;

struct LinkOptions {
  std::uint32_t streams = 4;
  std::uint32_t chunk_bytes = 1u << 20;
  std::size_t max_staged_bytes = 64u << 20;
  std::uint32_t queued_chunks_per_stream = 2;  // keeps every socket busy without hoarding
  Millis handshake_timeout{5000};
  // Unacknowledged data older than this kills a stream (TCP_USER_TIMEOUT): a partitioned peer
  // fails the link instead of stalling it for the kernel's ~15 minutes. Membership heartbeats
  // usually notice first.
  Millis tcp_user_timeout{10000};
  // Unsent bytes the kernel may hold per stream (setNotSentLowat): small, so that send()
  // priorities decide the order on the wire instead of a deep kernel queue. In-flight (sent,
  // unacknowledged) data is not limited by it.
  std::size_t notsent_lowat = 128u << 10;
};

class Link : public std::enable_shared_from_this<Link> {
 public:
  using Done = std::function<void(const Status&)>;

  Link(std::string name, std::vector<std::shared_ptr<Connection>> streams, LinkOptions options);
  ~Link();
  // Takes over the streams' handlers; call once, right after construction.
  void start();

  // Sends `data` under `tag`; `data` must stay valid until `done`. Completes when every chunk was
  // handed to the kernel. Chunks of higher `priority` go to the streams first (FIFO among equals),
  // so a ring can move pieces that are further along ahead of new ones.
  void send(std::uint64_t tag, ByteSpan data, Done done, int priority = 0);
  // Receives the transfer `tag` into `dst`, whose size must equal the sent size.
  void recv(std::uint64_t tag, MutableByteSpan dst, Done done);
  // Receives the transfer `tag`, of any length up to dst.size(), into the front of `dst`; `done`
  // gets the length. The transfer must not be empty (an empty send puts nothing on the wire).
  using SizedDone = std::function<void(const Status&, std::size_t length)>;
  void recvUpTo(std::uint64_t tag, MutableByteSpan dst, SizedDone done);
  void close(const Status& why);
  void setCloseHandler(std::function<void(const Status&)> h) { on_close_ = std::move(h); }

  // Bytes sent and the time the link had sends outstanding since the last call: bytes/busy is
  // the rate the link sustains while it has something to send, whatever idles it between
  // sends (passive bandwidth estimation, topology.h).
  struct SendMeter {
    std::uint64_t bytes = 0;
    double busy_s = 0;
  };
  SendMeter takeSendMeter();
  // What the link has shown so far, for sizing what to keep in flight: the smallest smoothed
  // round-trip time of its streams (0: unknown) and its send rate while busy (bytes/s; 0:
  // nothing sent yet).
  double rttSeconds() const;
  double sendRate() const;

  std::size_t streamCount() const { return streams_.size(); }
  std::size_t stagedBytes() const { return staged_bytes_; }
  const std::string& name() const { return name_; }

 private:
  struct SendOp {
    std::uint64_t tag;
    int priority = 0;
    ByteSpan data;
    Done done;
    std::uint32_t chunks = 0;
    std::uint32_t next = 0;     // next chunk to hand to a stream
    std::uint32_t written = 0;  // chunks the kernel has taken
    Status error;
  };
  struct RecvOp {
    MutableByteSpan dst;
    Done done;
    SizedDone sized;  // recvUpTo: the length is known when the last chunk arrives
    std::size_t length = 0;
    std::uint32_t chunks = 0;
    std::uint32_t received = 0;
    std::vector<bool> seen;
    // recvUpTo: the last chunk arrived (until then `chunks` is only the buffer's room, and whole
    // chunks that fill it must not complete a transfer that may be longer).
    bool got_last = false;
    bool complete() const { return received == chunks && (!sized || got_last); }
  };
  struct Staged {
    std::uint32_t chunk;
    bool last;
    std::vector<std::uint8_t> bytes;
  };
  struct StreamState {
    std::uint32_t queued = 0;  // chunks handed to this stream, not yet written
    bool parked = false;
    bool staging = false;  // the frame being read goes to staging
    std::vector<std::uint8_t> stage_buf;
  };

  // Where a data chunk read by stream `index` goes (Connection::DataTarget, without naming it).
  struct ChunkTarget {
    enum class Kind { kReady, kPark, kReject } kind = Kind::kReject;
    MutableByteSpan dst;
    Status error;
  };

  // recv and recvUpTo: with `sized`, any length up to dst.size().
  void recv(std::uint64_t tag, MutableByteSpan dst, Done done, std::shared_ptr<SizedDone> sized);
  void wire(std::size_t index);
  void pump();
  // Completes `op` once every chunk handed to a stream has been written or failed.
  void maybeFinishSend(const std::shared_ptr<SendOp>& op);
  ChunkTarget target(std::size_t index, const FrameHeader& h);
  void dataDone(std::size_t index, const FrameHeader& h);
  Status acceptChunk(RecvOp& op, std::uint64_t tag, std::uint32_t chunk, std::size_t len,
                     bool last);
  // Copies a staged chunk into a posted receive; closes the link if it does not fit.
  void deliverStaged(std::uint64_t tag, Staged staged);
  void resumeParked();
  std::uint32_t chunkCount(std::size_t bytes) const;
  std::size_t chunkLength(std::size_t total, std::uint32_t chunk) const;
  void finishRecv(std::uint64_t tag);

  std::string name_;
  std::vector<std::shared_ptr<Connection>> streams_;
  std::vector<StreamState> state_;
  LinkOptions options_;
  std::deque<std::shared_ptr<SendOp>> sends_;
  SendMeter meter_;
  SendMeter lifetime_meter_;  // never reset: sendRate()
  TimePoint busy_since_;      // when sends_ last became non-empty
  std::map<std::uint64_t, RecvOp> recvs_;
  std::map<std::uint64_t, std::vector<Staged>> staged_;
  std::size_t staged_bytes_ = 0;
  std::vector<std::vector<std::uint8_t>> spare_chunks_;  // staging buffers for reuse (no zeroing)
  bool closed_ = false;
  Status close_reason_;
  std::function<void(const Status&)> on_close_;
  Counter& sent_bytes_;  // this link's payload bytes, for /metrics (p2p/base/metrics.h)
  Counter& received_bytes_;
};

// Accepts incoming link streams and hands out a Link once all K streams of one link arrived.
class LinkListener {
 public:
  // `epoch`: the membership epoch the dialer was in (links belong to one epoch's ring).
  using OnLink =
      std::function<void(std::shared_ptr<Link>, const std::string& from_peer, std::uint64_t epoch)>;
  // Call on the network thread; links are handed out there.
  static Result<std::unique_ptr<LinkListener>> start(NetworkThread& net, const HostPort& listen,
                                                     LinkOptions options, OnLink on_link);
  ~LinkListener();
  std::uint16_t port() const { return port_; }
  void close();
  // Takes a stream that arrived some other way (a relay's forwarded connection, p2p/relay.h)
  // as if this listener had accepted it. Network thread.
  void acceptStream(std::unique_ptr<Stream> stream);
  // A kConnectRequest / kConnectReply the coordinator forwarded to this process's peer
  // `self_id` (p2p/traversal.h): connections opened on request arrive here. Network thread.
  void onTraversalFrame(const std::string& self_id, MsgType type, ByteSpan payload);

 private:
  struct Acceptor;
  LinkListener(NetworkThread& net, LinkOptions options, OnLink on_link);
  void accept();
  void onHello(const std::shared_ptr<Connection>& conn, ByteSpan payload, std::uint64_t epoch);
  // Closes the streams of a link still incomplete partialLinkTimeout() after its first stream.
  void dropPartial(const std::string& link_id, TimePoint started);
  // Longer than a dialer waits for its streams (connectLink's deadline, 10 s in the
  // collectives): a slow but live dial is never cut short.
  Millis partialLinkTimeout() const { return 4 * options_.handshake_timeout; }

  struct Partial {
    std::vector<std::shared_ptr<Connection>> streams;
    std::size_t arrived = 0;
    std::string from;
    std::uint64_t epoch = 0;
    TimePoint started;
  };
  NetworkThread& net_;
  LinkOptions options_;
  OnLink on_link_;
  LifetimeGuard lifetime_;
  std::unique_ptr<Acceptor> acceptor_;
  std::uint16_t port_ = 0;
  std::map<std::string, Partial> partial_;
  std::vector<std::shared_ptr<Connection>> handshaking_;
  bool closed_ = false;
};

// Opens the K streams of a new link to `remote`. Call on the network thread; `done` runs there.
void connectLink(NetworkThread& net, const HostPort& remote, const std::string& self_id,
                 LinkOptions options, Deadline deadline,
                 std::function<void(Result<std::shared_ptr<Link>>)> done, std::uint64_t epoch = 0);

}  // namespace loco::p2p
