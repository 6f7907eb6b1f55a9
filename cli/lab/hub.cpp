#include "cli/lab/hub.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <queue>
#include <random>
#include <sstream>
#include <vector>

#include <fmt/format.h>
#include "cli/commands.h"
#include "cli/lab/config.h"
#include "p2p/base/log.h"

namespace loco::lab {
namespace {

// struct virtio_net_hdr (linux/virtio_net.h, which C++ cannot include: a field is named
// `class`). The kernel ABI for PACKET_VNET_HDR: host-endian, 10 bytes.
struct VnetHdr {
  std::uint8_t flags;
  std::uint8_t gso_type;  // 0: not a GSO frame
  std::uint16_t hdr_len;
  std::uint16_t gso_size;
  std::uint16_t csum_start;
  std::uint16_t csum_offset;
};
static_assert(sizeof(VnetHdr) == 10);

using Nanos = std::int64_t;
constexpr std::size_t kVnetHdr = sizeof(VnetHdr);
constexpr std::size_t kBufSize = kVnetHdr + 65536 + 64;
constexpr Nanos kMinBufferNs = 50'000'000;         // each rate-limited port buffers >= 50 ms
constexpr std::size_t kMaxQueuedBytes = 1u << 30;  // all frames held by the hub

Nanos nowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<Nanos>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

Nanos serialisationNs(std::size_t bytes, double mbit) {
  return mbit <= 0 ? 0 : static_cast<Nanos>(static_cast<double>(bytes) * 8.0 * 1000.0 / mbit);
}

// How far ahead a port at `mbit` may schedule before it tail-drops: 50 ms of traffic, and at
// least 64 KiB (one GSO frame) so slow links still pass full-size frames.
Nanos bufferNs(double mbit) {
  return std::max(kMinBufferNs, serialisationNs(64 * 1024, mbit));
}

struct Pending {
  Nanos due;
  std::uint64_t seq;  // FIFO among equal times
  bool at_downlink;   // false: still in flight to the receiver's downlink; true: ready to send
  int src, dst;
  std::size_t wire;               // bytes on the wire (all segments)
  std::vector<std::uint8_t> buf;  // virtio_net_hdr + frame
  bool operator>(const Pending& o) const { return due != o.due ? due > o.due : seq > o.seq; }
};

class Hub {
 public:
  Hub(std::string config_path, std::string ready_path)
      : config_path_(std::move(config_path)),
        ready_path_(std::move(ready_path)),
        rng_(std::random_device{}()) {}

  // "<pid> <reloads>": `lab up` waits for the file, `lab set` for the count to grow.
  void writeReady() {
    std::string tmp = ready_path_ + ".tmp";
    { std::ofstream(tmp) << ::getpid() << " " << reloads_ << "\n"; }
    std::rename(tmp.c_str(), ready_path_.c_str());
  }

  Status open() {
    LOCO_RETURN_IF_ERROR(reload());
    const int n = cfg_.hosts;
    socks_.assign(n + 1, -1);
    up_free_.assign(n + 1, 0);
    down_free_.assign(n + 1, 0);
    pair_last_.assign(n + 1, std::vector<Nanos>(n + 1, 0));
    pair_free_.assign(n + 1, std::vector<Nanos>(n + 1, 0));
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    timerfd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&mask, s);
    ::sigprocmask(SIG_BLOCK, &mask, nullptr);
    sigfd_ = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (epfd_ < 0 || timerfd_ < 0 || sigfd_ < 0) return sysError("epoll/timerfd/signalfd");
    watch(timerfd_, 0);
    watch(sigfd_, -1);
    for (int i = 1; i <= n; ++i) LOCO_RETURN_IF_ERROR(openPort(i));
    for (int i = 1; i <= n; ++i) {
      auto mac = cfg_.mac(i);
      unsigned v[6];
      std::sscanf(mac.c_str(), "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]);
      std::array<std::uint8_t, 6> m{};
      for (int k = 0; k < 6; ++k) m[k] = static_cast<std::uint8_t>(v[k]);
      macs_.push_back({m, i});
    }
    return Status();
  }

  int run() {
    epoll_event events[64];
    for (;;) {
      armTimer();
      int n = ::epoll_wait(epfd_, events, 64, -1);
      if (n < 0 && errno != EINTR) {
        LOG_ERROR(kLogCli, "hub: epoll_wait: {}", std::strerror(errno));
        return 1;
      }
      for (int k = 0; k < n; ++k) {
        int tag = static_cast<int>(events[k].data.u32);
        if (tag > 0) {
          receive(tag);
        } else if (tag == 0) {
          std::uint64_t expirations;
          (void)!::read(timerfd_, &expirations, sizeof(expirations));
        } else if (!handleSignals()) {
          LOG_INFO(kLogCli,
                   "hub: stopping; forwarded {} frames, dropped {} (loss {}, queue {}, partition "
                   "{}, send {})",
                   forwarded_, dropped_loss_ + dropped_queue_ + dropped_partition_ + dropped_send_,
                   dropped_loss_, dropped_queue_, dropped_partition_, dropped_send_);
          return 0;
        }
      }
      release(nowNs());
    }
  }

 private:
  Status sysError(const std::string& what) {
    return Status(StatusCode::kIoError, fmt::format("hub: {}: {}", what, std::strerror(errno)));
  }

  void watch(int fd, int tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<std::uint32_t>(tag);
    ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  }

  Status openPort(int i) {
    const std::string ifname = cfg_.vethName(i);
    int ifindex = static_cast<int>(::if_nametoindex(ifname.c_str()));
    if (ifindex == 0)
      return Status(StatusCode::kNotFound, fmt::format("hub: interface {} is missing", ifname));
    int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (fd < 0) return sysError("AF_PACKET socket (needs root)");
    int one = 1;
    int big = 32 << 20;
    if (::setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) != 0)
      return sysError("PACKET_VNET_HDR");
    ::setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one));
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
    sockaddr_ll addr{};
    addr.sll_family = AF_PACKET;
    addr.sll_protocol = htons(ETH_P_ALL);
    addr.sll_ifindex = ifindex;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
      return sysError("bind " + ifname);
    socks_[i] = fd;
    watch(fd, i);
    return Status();
  }

  Status reload() {
    auto cfg = parseConfig(cli::readTextFile(config_path_));
    if (!cfg) return cfg.status().withContext("hub: " + config_path_);
    if (cfg_.hosts != 0 && cfg->hosts != cfg_.hosts) {
      return Status(StatusCode::kInvalidArgument, "hub: the number of hosts cannot change");
    }
    cfg_ = std::move(cfg.value());
    const int n = cfg_.hosts;
    pairs_.assign(n + 1, std::vector<PairParams>(n + 1));
    cut_.assign(n + 1, std::vector<bool>(n + 1, false));
    rates_.assign(n + 1, HostRates{});
    for (int a = 1; a <= n; ++a) {
      rates_[a] = cfg_.host(a);
      for (int b = 1; b <= n; ++b) {
        if (a == b) continue;
        pairs_[a][b] = cfg_.pair(a, b);
        cut_[a][b] = cfg_.partitioned(a, b);
      }
    }
    return Status();
  }

  // False when the hub should stop.
  bool handleSignals() {
    signalfd_siginfo si{};
    while (::read(sigfd_, &si, sizeof(si)) == static_cast<ssize_t>(sizeof(si))) {
      if (si.ssi_signo == SIGHUP) {
        Status st = reload();
        if (st.isOk()) {
          ++reloads_;
          writeReady();
          LOG_INFO(kLogCli, "hub: reloaded {}", config_path_);
        } else {
          LOG_ERROR(kLogCli, "{}; keeping the previous settings", st.message());
        }
      } else {
        return false;
      }
    }
    return true;
  }

  std::vector<std::uint8_t> takeBuffer() {
    if (pool_.empty()) return std::vector<std::uint8_t>(kBufSize);
    auto b = std::move(pool_.back());
    pool_.pop_back();
    b.resize(kBufSize);
    return b;
  }
  void giveBack(std::vector<std::uint8_t> b) {
    if (b.capacity() >= kBufSize && pool_.size() < 256) pool_.push_back(std::move(b));
  }

  int hostForMac(const std::uint8_t* mac) const {
    for (auto& [m, i] : macs_) {
      if (std::memcmp(m.data(), mac, 6) == 0) return i;
    }
    return 0;
  }

  void receive(int src) {
    // Bounded per wake-up so one busy port cannot starve the others or the timers.
    for (int k = 0; k < 256; ++k) {
      auto buf = takeBuffer();
      ssize_t n = ::recv(socks_[src], buf.data(), buf.size(), 0);
      if (n < 0) {
        giveBack(std::move(buf));
        return;
      }
      if (static_cast<std::size_t>(n) < kVnetHdr + sizeof(ether_header)) {
        giveBack(std::move(buf));
        continue;
      }
      buf.resize(static_cast<std::size_t>(n));
      if (buf.size() < kBufSize / 4) {
        // A small frame gets a buffer of its size: thousands of MTU frames may be in flight on
        // a long link, and 64 KiB each would be most of the hub's memory.
        std::vector<std::uint8_t> small(buf.begin(), buf.end());
        giveBack(std::move(buf));
        buf = std::move(small);
      }
      const Nanos now = nowNs();
      const std::uint8_t* dst_mac = buf.data() + kVnetHdr;
      if (dst_mac[0] & 1) {  // broadcast / multicast (ARP): every other host
        for (int d = 1; d <= cfg_.hosts; ++d) {
          if (d != src) admit(src, d, std::vector<std::uint8_t>(buf), now);
        }
        giveBack(std::move(buf));
      } else if (int d = hostForMac(dst_mac); d != 0 && d != src) {
        admit(src, d, std::move(buf), now);
      } else {
        giveBack(std::move(buf));
      }
    }
  }

  // Segments and bytes on the wire of one (possibly GSO) frame.
  static std::pair<std::size_t, std::size_t> segments(const std::vector<std::uint8_t>& buf) {
    VnetHdr h{};
    std::memcpy(&h, buf.data(), kVnetHdr);
    std::size_t frame = buf.size() - kVnetHdr;
    if (h.gso_type == 0 || h.gso_size == 0 || h.hdr_len == 0 || frame <= h.hdr_len) {
      return {1, frame};
    }
    std::size_t payload = frame - h.hdr_len;
    std::size_t segs = (payload + h.gso_size - 1) / h.gso_size;
    return {segs, frame + (segs - 1) * h.hdr_len};
  }

  void admit(int src, int dst, std::vector<std::uint8_t> buf, Nanos now) {
    if (cut_[src][dst]) {
      ++dropped_partition_;
      return giveBack(std::move(buf));
    }
    const PairParams& p = pairs_[src][dst];
    auto [segs, wire] = segments(buf);
    if (p.loss > 0) {
      double keep = std::pow(1.0 - p.loss, static_cast<double>(segs));
      if (uniform_(rng_) >= keep) {
        ++dropped_loss_;
        return giveBack(std::move(buf));
      }
    }
    if (queued_bytes_ + buf.capacity() > kMaxQueuedBytes) {
      ++dropped_queue_;
      return giveBack(std::move(buf));
    }
    Nanos t = now;
    // The sender's access link.
    if (double up = rates_[src].up_mbit; up > 0) {
      Nanos done = std::max(t, up_free_[src]) + serialisationNs(wire, up);
      if (done - now > bufferNs(up)) {
        ++dropped_queue_;
        return giveBack(std::move(buf));
      }
      up_free_[src] = t = done;
    }
    // A cap on this pair alone.
    if (p.rate_mbit > 0) {
      Nanos done = std::max(t, pair_free_[src][dst]) + serialisationNs(wire, p.rate_mbit);
      if (done - t > bufferNs(p.rate_mbit)) {
        ++dropped_queue_;
        return giveBack(std::move(buf));
      }
      pair_free_[src][dst] = t = done;
    }
    // Propagation: delay plus jitter, never overtaking the previous frame of this pair.
    double delay_ms = p.delay_ms;
    if (p.jitter_ms > 0) delay_ms += (2 * uniform_(rng_) - 1) * p.jitter_ms;
    t += static_cast<Nanos>(std::max(0.0, delay_ms) * 1e6);
    t = std::max(t, pair_last_[src][dst]);
    pair_last_[src][dst] = t;
    queued_bytes_ += buf.capacity();
    heap_.push(Pending{t, seq_++, false, src, dst, wire, std::move(buf)});
  }

  void release(Nanos now) {
    while (!heap_.empty() && heap_.top().due <= now) {
      // priority_queue::top is const; the frame is moved out before pop.
      Pending p = std::move(const_cast<Pending&>(heap_.top()));
      heap_.pop();
      if (!p.at_downlink) {
        // Arrived at the receiver's access link: queue behind what is already there.
        if (double down = rates_[p.dst].down_mbit; down > 0) {
          Nanos done = std::max(p.due, down_free_[p.dst]) + serialisationNs(p.wire, down);
          if (done - p.due > bufferNs(down)) {
            ++dropped_queue_;
            queued_bytes_ -= p.buf.capacity();
            giveBack(std::move(p.buf));
            continue;
          }
          down_free_[p.dst] = done;
          if (done > now) {
            p.due = done;
            p.at_downlink = true;
            p.seq = seq_++;
            heap_.push(std::move(p));
            continue;
          }
        }
      }
      send(p);
      queued_bytes_ -= p.buf.capacity();
      giveBack(std::move(p.buf));
    }
  }

  void send(const Pending& p) {
    if (::send(socks_[p.dst], p.buf.data(), p.buf.size(), MSG_DONTWAIT) < 0) {
      ++dropped_send_;
    } else {
      ++forwarded_;
    }
  }

  void armTimer() {
    itimerspec spec{};
    if (!heap_.empty()) {
      Nanos due = std::max<Nanos>(heap_.top().due, 1);
      spec.it_value.tv_sec = due / 1'000'000'000;
      spec.it_value.tv_nsec = due % 1'000'000'000;
    }
    ::timerfd_settime(timerfd_, TFD_TIMER_ABSTIME, &spec, nullptr);
  }

  std::string config_path_;
  std::string ready_path_;
  long reloads_ = 0;
  LabConfig cfg_;
  std::vector<std::vector<PairParams>> pairs_;
  std::vector<std::vector<bool>> cut_;
  std::vector<HostRates> rates_;
  std::vector<std::pair<std::array<std::uint8_t, 6>, int>> macs_;
  std::vector<int> socks_;
  std::vector<Nanos> up_free_, down_free_;
  std::vector<std::vector<Nanos>> pair_last_, pair_free_;
  std::priority_queue<Pending, std::vector<Pending>, std::greater<>> heap_;
  std::vector<std::vector<std::uint8_t>> pool_;
  std::mt19937_64 rng_;
  std::uniform_real_distribution<double> uniform_{0.0, 1.0};
  std::uint64_t seq_ = 0;
  std::size_t queued_bytes_ = 0;
  std::uint64_t forwarded_ = 0, dropped_loss_ = 0, dropped_queue_ = 0, dropped_partition_ = 0,
                dropped_send_ = 0;
  int epfd_ = -1, timerfd_ = -1, sigfd_ = -1;
};

}  // namespace

int runHub(const std::string& config_path, const std::string& ready_path) {
  Hub hub(config_path, ready_path);
  Status st = hub.open();
  if (!st.isOk()) {
    LOG_ERROR(kLogCli, "{}", st.message());
    return 1;
  }
  hub.writeReady();
  LOG_INFO(kLogCli, "hub: forwarding");
  return hub.run();
}

}  // namespace loco::lab
