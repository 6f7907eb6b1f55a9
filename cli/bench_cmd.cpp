#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <future>
#include <numeric>

#include "cli/commands.h"
#include "crypto/identity.h"
#include "p2p/link.h"
#include "p2p/net.h"

namespace loco::cli {
namespace {

// Moves `mib` MiB from one endpoint to another over a K-stream link on 127.0.0.1, `iters` times.
// Each endpoint has its own network thread, as two processes would. Returns Gbit/s per iteration.
Result<std::vector<double>> benchLink(std::uint32_t streams, std::size_t mib, int iters, std::uint32_t chunk_kib) {
  p2p::NetworkThread sender_net("bench-send");
  p2p::NetworkThread receiver_net("bench-recv");
  p2p::LinkOptions opts;
  opts.streams = streams;
  opts.chunk_bytes = chunk_kib << 10;

  std::promise<std::shared_ptr<p2p::Link>> accepted;
  std::unique_ptr<p2p::LinkListener> listener;
  {
    std::promise<Status> started;
    receiver_net.post([&] {
      auto l = p2p::LinkListener::start(receiver_net.context(), {"127.0.0.1", 0}, opts,
                                        [&](std::shared_ptr<p2p::Link> link, const std::string&) {
                                          accepted.set_value(std::move(link));
                                        });
      if (l) listener = std::move(l.value());
      started.set_value(l ? Status() : l.status());
    });
    LOCO_RETURN_IF_ERROR(started.get_future().get());
  }
  std::promise<Result<std::shared_ptr<p2p::Link>>> dialed;
  sender_net.post([&] {
    p2p::connectLink(sender_net.context(), {"127.0.0.1", listener->port()}, crypto::randomHex(16), opts,
                     Deadline::after(Millis(5000)), [&](auto r) { dialed.set_value(std::move(r)); });
  });
  auto out_link = dialed.get_future().get();
  if (!out_link) return out_link.status();
  auto in_future = accepted.get_future();
  if (in_future.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    return Status(StatusCode::kTimeout, "receiver never saw the link");
  }
  auto in_link = in_future.get();

  const std::size_t bytes = mib << 20;
  std::vector<std::uint8_t> src(bytes), dst(bytes);
  for (std::size_t i = 0; i < bytes; i += 4096) src[i] = static_cast<std::uint8_t>(i / 4096 * 31 + 7);
  std::vector<double> gbits;
  Status failure;
  for (int it = 0; it < iters && failure.isOk(); ++it) {
    std::fill(dst.begin(), dst.end(), 0);
    std::promise<Status> received, sent;
    receiver_net.post([&, it] {
      in_link->recv(static_cast<std::uint64_t>(it), MutableByteSpan(dst),
                    [&](const Status& st) { received.set_value(st); });
    });
    auto t0 = Clock::now();
    sender_net.post([&, it] {
      out_link.value()->send(static_cast<std::uint64_t>(it), ByteSpan(src),
                             [&](const Status& st) { sent.set_value(st); });
    });
    Status r = received.get_future().get();
    auto secs = std::chrono::duration<double>(Clock::now() - t0).count();
    Status s = sent.get_future().get();
    if (!r.isOk() || !s.isOk()) {
      failure = r.isOk() ? s : r;
      break;
    }
    if (std::memcmp(src.data(), dst.data(), bytes) != 0) {
      failure = Status(StatusCode::kDataLoss, "received bytes differ from the sent bytes");
      break;
    }
    gbits.push_back(static_cast<double>(bytes) * 8 / secs / 1e9);
  }
  // Tear down each side on its own network thread.
  std::promise<void> sender_closed, receiver_closed;
  sender_net.post([&] {
    out_link.value().reset();
    sender_closed.set_value();
  });
  sender_closed.get_future().wait();
  receiver_net.post([&] {
    in_link.reset();
    listener.reset();
    receiver_closed.set_value();
  });
  receiver_closed.get_future().wait();
  if (!failure.isOk()) return failure;
  return gbits;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// iperf3 -P K on 127.0.0.1 for the same run's comparison. Returns Gbit/s received.
Result<double> benchIperf3(std::uint32_t streams, int seconds) {
  if (std::system("command -v iperf3 >/dev/null 2>&1") != 0) {
    return Status(StatusCode::kNotFound, "iperf3 is not installed (bash .ci/install-deps installs it)");
  }
  const int port = 20000 + static_cast<int>(::getpid() % 20000);
  pid_t server = ::fork();
  if (server == 0) {
    std::freopen("/dev/null", "w", stdout);
    std::string p = std::to_string(port);
    ::execlp("iperf3", "iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", p.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::usleep(300 * 1000);
  std::string cmd = fmt::format("iperf3 -c 127.0.0.1 -p {} -P {} -t {} -J 2>/dev/null", port, streams, seconds);
  std::string out;
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    ::pclose(f);
  }
  ::kill(server, SIGTERM);
  ::waitpid(server, nullptr, 0);
  auto at = out.find("\"sum_received\"");
  if (at != std::string::npos) at = out.find("\"bits_per_second\"", at);
  if (at == std::string::npos) return Status(StatusCode::kInternal, "could not read iperf3's JSON result");
  return std::strtod(out.c_str() + out.find(':', at) + 1, nullptr) / 1e9;
}

}  // namespace

int runBench(const Args& args) {
  if (args.empty() || args[0] != "link") {
    std::fprintf(stderr, "usage: loco bench link [--streams K] [--mib M] [--iters I] [--baseline iperf3]\n");
    return 2;
  }
  Flags flags("bench link", "move M MiB between two endpoints over 127.0.0.1 on a K-stream link",
              {{"streams", "TCP streams in the link", "4"},
               {"mib", "MiB per transfer", "256"},
               {"iters", "transfers to time (the median is reported)", "10"},
               {"chunk-kib", "KiB per chunk striped over the streams", "1024"},
               {"baseline", "also measure `iperf3` with as many streams in the same run", ""}});
  if (int rc = parseAndSetUp(flags, Args(args.begin() + 1, args.end()), "bench"); rc >= 0) return rc;
  auto streams = flags.getInt("streams", 1, 64);
  auto mib = flags.getInt("mib", 1, 16384);
  auto iters = flags.getInt("iters", 1, 10000);
  auto chunk = flags.getInt("chunk-kib", 4, 16384);
  for (const auto* r : {&streams, &mib, &iters, &chunk}) {
    if (!*r) return reportFailure(r->status());
  }
  std::string baseline = flags.get("baseline");
  if (!baseline.empty() && baseline != "iperf3") {
    return reportFailure(Status(StatusCode::kInvalidArgument, "--baseline takes only iperf3"));
  }
  std::optional<double> iperf;
  if (baseline == "iperf3") {
    auto r = benchIperf3(static_cast<std::uint32_t>(*streams), 3);
    if (!r) return reportFailure(r.status());
    iperf = *r;
    std::printf("{\"bench\":\"link\",\"impl\":\"iperf3\",\"streams\":%d,\"gbit_s\":%.2f}\n", static_cast<int>(*streams),
                *iperf);
    std::fflush(stdout);
  }
  auto r = benchLink(static_cast<std::uint32_t>(*streams), static_cast<std::size_t>(*mib), static_cast<int>(*iters),
                     static_cast<std::uint32_t>(*chunk));
  if (!r) return reportFailure(r.status());
  double med = median(*r);
  std::string line = fmt::format(R"({{"bench":"link","impl":"loco","streams":{},"mib":{},"gbit_s":{:.2f},"best_gbit_s":{:.2f},"iters":{})",
                                 *streams, *mib, med, *std::max_element(r->begin(), r->end()), r->size());
  if (iperf) line += fmt::format(",\"ratio_vs_iperf3\":{:.3f}", med / *iperf);
  line += "}\n";
  std::fputs(line.c_str(), stdout);
  return 0;
}

}  // namespace loco::cli
