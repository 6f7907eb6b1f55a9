#pragma once
// The Transport (transport.h) over p2p links: one link per ordered pair of peers and epoch, each
// K TCP streams. This peer dials a link to every peer it sends to, on the first send, and
// receives on the link each peer dialed to it; a link belongs to one epoch's group. Transfers
// wait while their link is being dialed or has not arrived yet (the operation's alarm bounds the
// wait); a link that cannot be dialed fails its sends with kPeerLost.
//
// abort() closes every link, on both ends, and the peers abort at different moments: a link
// being dialed or handshaken across one side's abort may be closed by one end and used by the
// other. So a dial that started before an abort is closed when it completes (and dialed again if
// sends wait), dials stay one at a time per peer (the acceptor sees a peer's links in the order
// they were dialed), and a receive whose incoming link the peer dropped (closed, or replaced by a
// newer one) waits for the next link instead of failing: the peer drops a link only when it
// failed an operation itself (it tells the coordinator, whose verdict fails ours) or died (a new
// epoch fails ours), or to discard a stale dial that nothing of ours may use.
//
// Thread rules: network thread only (post() excepted).

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collectives/transport.h"
#include "p2p/link.h"

namespace loco::collectives {

class LinkTransport final : public Transport {
 public:
  LinkTransport(p2p::NetworkThread& net, std::string self_id, p2p::LinkOptions options);
  ~LinkTransport() override;

  // The group whose ranks send() and recv() address, and each member's HOST:PORT. A new epoch
  // closes the links of the old one and fails whatever was pending on them.
  void setGroup(const PeerGroup& group, std::vector<std::string> addresses);
  std::uint64_t epoch() const { return group_.epoch; }
  // A link a peer dialed to this one for `epoch`.
  void onAccepted(std::shared_ptr<p2p::Link> link, const std::string& from, std::uint64_t epoch);
  // Runs when an outgoing link breaks (the peer died, or closed it after a failure of its own).
  void setBrokenHandler(std::function<void(const Status&)> h) { on_broken_ = std::move(h); }
  // The outgoing link to `peer`'s send meter (p2p/link.h); zero when there is no link.
  p2p::Link::SendMeter takeSendMeter(std::size_t peer);
  // Closes everything (shutdown).
  void close(const Status& why);

  void send(std::size_t peer, std::uint64_t tag, ByteSpan data, Done done,
            int priority = 0) override;
  void recv(std::size_t peer, std::uint64_t tag, MutableByteSpan dst, Done done) override;
  void recvUpTo(std::size_t peer, std::uint64_t tag, MutableByteSpan dst, SizedDone done) override;
  void abort(const Status& why) override;
  void post(std::function<void()> fn) override;
  std::unique_ptr<Alarm> after(Millis delay, std::function<void()> fn) override;
  LinkStats linkStats(std::size_t peer) override;

 private:
  struct PendingSend {
    std::uint64_t tag;
    ByteSpan data;
    Done done;
    int priority;
  };
  struct PendingRecv {
    std::uint64_t tag;
    MutableByteSpan dst;
    Done done;
    SizedDone sized;  // recvUpTo
  };
  struct Peer {
    std::shared_ptr<p2p::Link> out, in;
    bool dialing = false;
    std::vector<PendingSend> sends;  // waiting for `out`
    std::vector<PendingRecv> recvs;  // waiting for `in`
  };
  void dial(std::size_t peer);
  void adopt(std::size_t peer, std::shared_ptr<p2p::Link> link);
  // recv and recvUpTo: the link of `peer` (adopting an accepted one), or nullptr (queued).
  std::shared_ptr<p2p::Link> inLink(std::size_t peer);
  // Posts `r` on the incoming link of `peer`; if the peer drops that link first, `r` waits for
  // the next one (see the top of this file).
  void post(std::size_t peer, const std::shared_ptr<p2p::Link>& link, PendingRecv r);
  void retryRecv(std::size_t peer, const std::weak_ptr<p2p::Link>& failed, std::uint64_t generation,
                 PendingRecv r, const Status& why);
  void onBroken(std::size_t peer, const std::shared_ptr<p2p::Link>& link, const Status& why);
  void closeAll(const Status& why);
  static void closeLink(std::shared_ptr<p2p::Link>& link, const Status& why);

  p2p::NetworkThread& net_;
  std::string self_id_;
  p2p::LinkOptions options_;
  p2p::LifetimeGuard lifetime_;
  PeerGroup group_;
  std::vector<std::string> addresses_;
  std::vector<Peer> peers_;  // by rank of group_
  // Links dialed to this peer that no rank has taken yet, by (from, epoch).
  std::map<std::pair<std::string, std::uint64_t>, std::shared_ptr<p2p::Link>> accepted_;
  std::function<void(const Status&)> on_broken_;
  std::uint64_t generation_ = 0;  // closeAll() calls so far: dials and receives of before end
};

}  // namespace loco::collectives
