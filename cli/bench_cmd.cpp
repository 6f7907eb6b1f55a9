#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <numeric>
#include <thread>

#include "cli/commands.h"
#include "cli/lab/net.h"
#include "cli/tls_setup.h"
#include "crypto/ca.h"
#include "crypto/identity.h"
#include "p2p/base/json.h"
#include "p2p/link.h"
#include "p2p/relay.h"
#include "p2p/tls_stream.h"

namespace loco::cli {
namespace {

void fillPattern(std::vector<std::uint8_t>& buf) {
  for (std::size_t i = 0; i < buf.size(); i += 4096)
    buf[i] = static_cast<std::uint8_t>(i / 4096 * 31 + 7);
}

// Tags of the receiver's acknowledgements (one byte: 1 = bytes intact) in --lab mode.
constexpr std::uint64_t kAckTag = std::uint64_t{1} << 40;

// kTimeout unless `f` becomes ready within `timeout`.
template <typename T>
Status waitReady(std::future<T>& f, Millis timeout, const char* what) {
  if (f.wait_for(timeout) != std::future_status::ready) {
    return Status(StatusCode::kTimeout,
                  fmt::format("{} did not happen within {} ms", what, timeout.count()));
  }
  return Status();
}

// The id a link stream claims: our certificate's under TLS (the listener checks it), any
// otherwise.
std::string selfId() {
  const std::string id = p2p::tls::selfId();
  return id.empty() ? crypto::randomHex(16) : id;
}

// Moves `mib` MiB from one endpoint to another over a K-stream link on 127.0.0.1, `iters` times.
// Each endpoint has its own network thread, as two processes would. Returns Gbit/s per iteration.
Result<std::vector<double>> benchLink(std::uint32_t streams, std::size_t mib, int iters,
                                      std::uint32_t chunk_kib) {
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
      auto l =
          p2p::LinkListener::start(receiver_net, {"127.0.0.1", 0}, opts,
                                   [&](std::shared_ptr<p2p::Link> link, const std::string&,
                                       std::uint64_t) { accepted.set_value(std::move(link)); });
      if (l) listener = std::move(l.value());
      started.set_value(l ? Status() : l.status());
    });
    LOCO_RETURN_IF_ERROR(started.get_future().get());
  }
  std::promise<Result<std::shared_ptr<p2p::Link>>> dialed;
  sender_net.post([&] {
    p2p::connectLink(sender_net, {"127.0.0.1", listener->port()}, selfId(), opts,
                     Deadline::after(Millis(5000)),
                     [&](auto r) { dialed.set_value(std::move(r)); });
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
  fillPattern(src);
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

// --serve: the receiving end of `bench link --lab`, inside the lab's host 2. Receives `iters`
// transfers and acknowledges each with one byte (1 if intact).
int serveLink(const p2p::HostPort& listen, const std::string& port_file, p2p::LinkOptions opts,
              std::size_t mib, int iters, const std::optional<p2p::HostPort>& relay) {
  p2p::NetworkThread net("bench-serve");
  std::promise<std::shared_ptr<p2p::Link>> accepted;
  std::unique_ptr<p2p::LinkListener> listener;
  std::promise<Status> started;
  net.post([&] {
    auto l = p2p::LinkListener::start(
        net, listen, opts, [&](std::shared_ptr<p2p::Link> link, const std::string&, std::uint64_t) {
          accepted.set_value(std::move(link));
        });
    if (l) listener = std::move(l.value());
    started.set_value(l ? Status() : l.status());
  });
  if (Status st = started.get_future().get(); !st.isOk()) return reportFailure(st);
  // Where the sender dials: our own port, or (--relay) the port the relay gave us, whose
  // connections reach our listener through the relay as a NATed peer's do.
  std::string reach = p2p::HostPort{listen.host, listener->port()}.toString();
  std::shared_ptr<p2p::RelayClient> relay_client;
  if (relay) {
    std::promise<Result<std::string>> registered;
    net.post([&] {
      relay_client = p2p::RelayClient::start(
          net, *relay, selfId(),
          [&](std::unique_ptr<p2p::Stream> stream) { listener->acceptStream(std::move(stream)); },
          [](const Status& st) {
            std::fprintf(stderr, "loco bench link --serve: lost the relay: %s\n",
                         st.message().c_str());
          },
          Deadline::after(Millis(10000)),
          [&](Result<std::string> r) { registered.set_value(std::move(r)); });
    });
    auto r = registered.get_future().get();
    if (!r) return reportFailure(r.status().withContext("registering at the relay"));
    reach = *r;
  }
  if (Status st = writeFileAtomic(port_file, reach + "\n"); !st.isOk()) return reportFailure(st);
  auto link_future = accepted.get_future();
  if (Status st = waitReady(link_future, Millis(30000), "the sender's link"); !st.isOk())
    return reportFailure(st);
  auto link = link_future.get();
  std::vector<std::uint8_t> expected(mib << 20), dst(mib << 20);
  fillPattern(expected);
  int code = 0;
  for (int it = 0; it < iters && code == 0; ++it) {
    std::promise<Status> received, acked;
    std::fill(dst.begin(), dst.end(), 0);
    net.post([&, it] {
      link->recv(static_cast<std::uint64_t>(it), MutableByteSpan(dst),
                 [&](const Status& st) { received.set_value(st); });
    });
    auto rf = received.get_future();
    Status r = waitReady(rf, Millis(600000), "a transfer");
    if (r.isOk()) r = rf.get();
    if (!r.isOk()) return reportFailure(r);
    static std::uint8_t ack;
    auto diff = std::mismatch(dst.begin(), dst.end(), expected.begin());
    ack = diff.first == dst.end() ? 1 : 0;
    if (ack == 0) {
      std::size_t at = static_cast<std::size_t>(diff.first - dst.begin());
      std::fprintf(stderr,
                   "loco bench link --serve: transfer %d differs from what was sent at byte %zu "
                   "(chunk %zu)\n",
                   it, at, at / opts.chunk_bytes);
      code = 1;
    }
    net.post([&, it] {
      link->send(kAckTag + static_cast<std::uint64_t>(it), ByteSpan(&ack, 1),
                 [&](const Status& st) { acked.set_value(st); });
    });
    acked.get_future().wait();
  }
  // Let the sender hang up first: our FIN on one stream could reach it before the last ack on
  // another, and any closed stream fails the whole link.
  auto hung_up = std::make_shared<std::promise<void>>();
  net.post(
      [&, hung_up] { link->setCloseHandler([hung_up](const Status&) { hung_up->set_value(); }); });
  hung_up->get_future().wait_for(std::chrono::seconds(10));
  std::promise<void> closed;
  net.post([&] {
    link.reset();
    if (relay_client) relay_client->close();
    relay_client.reset();
    listener.reset();
    closed.set_value();
  });
  closed.get_future().wait();
  return code;
}

// The sending end of `bench link --lab`, already inside host 1: starts the receiver in host 2
// and times each transfer until its acknowledgement is back (so one one-way delay is included).
// With `relay_host` (3 or above), `loco relay` runs in that host and the receiver is reached
// through it, as a peer behind a NAT is.
Result<std::vector<double>> benchLinkLab(const lab::LabConfig& cfg, p2p::LinkOptions opts,
                                         std::size_t mib, int iters, const std::string& tls_dir,
                                         int relay_host) {
  char dir_template[] = "/tmp/loco-bench-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) return Status(StatusCode::kIoError, "mkdtemp failed");
  const std::string port_file = std::string(dir_template) + "/port";
  // Waits for a file that a child writes once it listens; "" when it never does.
  auto readWhenWritten = [](const std::string& path) {
    std::string text;
    for (int i = 0; i < 1000 && text.empty(); ++i) {
      std::ifstream(path) >> text;
      if (text.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return text;
  };
  pid_t relay = -1;
  std::string relay_address;
  if (relay_host > 0) {
    const std::string relay_port_file = std::string(dir_template) + "/relay.port";
    std::vector<std::string> relay_argv = lab::inHost(cfg, relay_host);
    for (std::string a : {selfExecutable(), std::string("relay"), std::string("--listen"),
                          cfg.address(relay_host) + ":0", std::string("--port-file"),
                          relay_port_file, std::string("--log-level"), std::string("warn")}) {
      relay_argv.push_back(a);
    }
    relay = spawnProcess(relay_argv);
    const std::string port = readWhenWritten(relay_port_file);
    if (port.empty()) {
      ::kill(relay, SIGTERM);
      ::waitpid(relay, nullptr, 0);
      std::error_code ec;
      std::filesystem::remove_all(dir_template, ec);
      return Status(StatusCode::kTimeout,
                    fmt::format("the relay in host {} did not start", relay_host));
    }
    relay_address = cfg.address(relay_host) + ":" + port;
  }
  std::vector<std::string> argv = lab::inHost(cfg, 2);
  for (std::string a :
       {selfExecutable(), std::string("bench"), std::string("link"), std::string("--serve"),
        std::string("--listen"), cfg.address(2) + ":0", std::string("--port-file"), port_file,
        std::string("--streams"), std::to_string(opts.streams), std::string("--mib"),
        std::to_string(mib), std::string("--iters"), std::to_string(iters),
        std::string("--chunk-kib"), std::to_string(opts.chunk_bytes >> 10)}) {
    argv.push_back(a);
  }
  if (tls_dir.empty()) {
    argv.push_back("--tls=off");
  } else {
    argv.insert(argv.end(), {"--tls-dir", tls_dir});
  }
  if (relay > 0) argv.insert(argv.end(), {"--relay", relay_address});
  const pid_t child = spawnProcess(argv);  // the receiver's messages reach our stderr
  std::string receiver_end;                // how the receiver ended, if it did on its own
  auto reap = [&] {
    int status = 0;
    if (::waitpid(child, &status, WNOHANG) == child) {
      receiver_end =
          WIFEXITED(status)
              ? fmt::format("the receiver in host 2 exited with status {}", WEXITSTATUS(status))
              : fmt::format("the receiver in host 2 died of signal {}", WTERMSIG(status));
    } else {
      ::kill(child, SIGTERM);
      ::waitpid(child, nullptr, 0);
    }
    if (relay > 0) {
      ::kill(relay, SIGTERM);
      ::waitpid(relay, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_template, ec);
  };
  auto reach = p2p::parseHostPort(readWhenWritten(port_file));
  if (!reach) {
    reap();
    return Status(StatusCode::kTimeout, "the receiver in host 2 did not start");
  }
  std::vector<double> gbits;
  Status failure;
  {
    p2p::NetworkThread net("bench-send");
    std::promise<Result<std::shared_ptr<p2p::Link>>> dialed;
    net.post([&] {
      p2p::connectLink(net, *reach, selfId(), opts, Deadline::after(Millis(10000)),
                       [&](auto r) { dialed.set_value(std::move(r)); });
    });
    auto link = dialed.get_future().get();
    if (!link) {
      reap();
      return link.status();
    }
    std::vector<std::uint8_t> src(mib << 20);
    fillPattern(src);
    for (int it = 0; it < iters && failure.isOk(); ++it) {
      std::uint8_t ack = 0;
      std::promise<Status> sent, acked;
      net.post([&, it] {
        (*link)->recv(kAckTag + static_cast<std::uint64_t>(it), MutableByteSpan(&ack, 1),
                      [&](const Status& st) { acked.set_value(st); });
      });
      auto t0 = Clock::now();
      net.post([&, it] {
        (*link)->send(static_cast<std::uint64_t>(it), ByteSpan(src),
                      [&](const Status& st) { sent.set_value(st); });
      });
      auto af = acked.get_future();
      Status a = waitReady(af, Millis(600000), "the receiver's acknowledgement");
      if (a.isOk()) a = af.get();
      double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      Status s = sent.get_future().get();
      if (!a.isOk())
        failure = a;
      else if (!s.isOk())
        failure = s;
      else if (ack != 1)
        failure = Status(StatusCode::kDataLoss, "the receiver got different bytes than were sent");
      else
        gbits.push_back(static_cast<double>(src.size()) * 8 / secs / 1e9);
    }
    std::promise<void> closed;
    net.post([&] {
      link->reset();
      closed.set_value();
    });
    closed.get_future().wait();
  }
  reap();
  if (!failure.isOk()) return receiver_end.empty() ? failure : failure.withContext(receiver_end);
  return gbits;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// iperf3 -P K for the same run's comparison: on 127.0.0.1, or (with a lab) from this process's
// host to `server_host` of the lab. Returns Gbit/s received.
Result<double> benchIperf3(std::uint32_t streams, int seconds, const lab::LabConfig* cfg) {
  if (std::system("command -v iperf3 >/dev/null 2>&1") != 0) {
    return Status(StatusCode::kNotFound,
                  "iperf3 is not installed (bash .ci/install-deps installs it)");
  }
  const int port = 20000 + static_cast<int>(::getpid() % 20000);
  const std::string server_addr = cfg ? cfg->address(2) : "127.0.0.1";
  std::vector<std::string> argv;
  if (cfg) argv = lab::inHost(*cfg, 2);
  for (std::string a : {std::string("iperf3"), std::string("-s"), std::string("-1"),
                        std::string("-B"), server_addr, std::string("-p"), std::to_string(port)}) {
    argv.push_back(a);
  }
  const pid_t server = spawnProcess(argv, "/dev/null");
  ::usleep(300 * 1000);
  std::string cmd = fmt::format("iperf3 -c {} -p {} -P {} -t {} -J 2>/dev/null", server_addr, port,
                                streams, seconds);
  std::string out;
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    ::pclose(f);
  }
  ::kill(server, SIGTERM);
  ::waitpid(server, nullptr, 0);
  auto json = parseJsonObject(out);
  const auto bits =
      json ? json->value(nlohmann::json::json_pointer("/end/sum_received/bits_per_second"), -1.0)
           : -1.0;
  if (bits < 0) return Status(StatusCode::kInternal, "could not read iperf3's JSON result");
  return bits / 1e9;
}

}  // namespace

int runBench(const Args& args) {
  if (!args.empty() && args[0] == "allreduce")
    return runBenchAllReduce(Args(args.begin() + 1, args.end()));
  if (!args.empty() && args[0] == "join") return runBenchJoin(Args(args.begin() + 1, args.end()));
  if (!args.empty() && args[0] == "train") {
    Args command{"bench"};
    command.insert(command.end(), args.begin(), args.end());
    return execTrainingBinary(command);  // LibTorch lives in loco-train
  }
  if (args.empty() || args[0] != "link") {
    std::fprintf(stderr,
                 "usage: loco bench link [--streams K] [--mib M] [--iters I] [--baseline iperf3] "
                 "[--lab NAME [--relay-host H]]\n"
                 "       loco bench allreduce [--peers N] [--mib M | --kib K] [--wire W] "
                 "[--streams K] [--iters I] [--lab NAME]\n"
                 "       loco bench join [--peers N] [--mib M] [--streams K] [--lab NAME] "
                 "[--kill-source-ms T]\n"

                 "       loco bench train [--width D] [--layers L] [--heads H] [--context T] "
                 "[--batch B] [--threads N]\n");
    return 2;
  }
  Flags flags(
      "bench link", "move M MiB between two endpoints over 127.0.0.1 on a K-stream link",
      {{"streams", "TCP streams in the link", "4"},
       {"mib", "MiB per transfer", "256"},
       {"iters", "transfers to time (the median is reported)", "10"},
       {"chunk-kib", "KiB per chunk striped over the streams", "1024"},
       {"baseline", "also measure `iperf3` with as many streams in the same run", ""},
       {"lab", "run between hosts 1 and 2 of this lab (`loco lab up`) instead of on 127.0.0.1", ""},
       {"tls",
        "on: TLS 1.3 with mutual authentication on every stream (a throwaway run CA); off: "
        "plaintext",
        "on"},
       {"tls-dir", "internal: the --serve end's TLS material", ""},
       {"relay-host",
        "with --lab: reach the receiver (host 2) through `loco relay` in this host (3 or above), "
        "as a peer behind a NAT is reached",
        ""},
       {"serve", "internal: the receiving end of a --lab run", "", true},
       {"relay", "internal: HOST:PORT of the relay the --serve end registers at", ""},
       {"listen", "internal: address the --serve end listens on", ""},
       {"port-file", "internal: where the --serve end writes its port", ""}});
  if (int rc = parseAndSetUp(flags, Args(args.begin() + 1, args.end()), "bench"); rc >= 0)
    return rc;
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
  auto tls_flag = flags.getOnOff("tls");
  if (!tls_flag) return reportFailure(tls_flag.status());
  const bool tls = *tls_flag;
  p2p::LinkOptions opts;
  opts.streams = static_cast<std::uint32_t>(*streams);
  opts.chunk_bytes = static_cast<std::uint32_t>(*chunk) << 10;
  // TLS: one throwaway CA and one certificate for both ends (they are one process on
  // loopback; the --lab receiver is given the same material). Before any connection exists.
  std::string tls_dir;
  struct RemoveOnExit {
    std::string path;
    ~RemoveOnExit() {
      std::error_code ec;
      if (!path.empty()) std::filesystem::remove_all(path, ec);
    }
  } tmp;
  if (flags.getBool("serve") && !flags.get("tls-dir").empty()) {
    if (Status st = useTlsDir(flags.get("tls-dir")); !st.isOk()) return reportFailure(st);
  } else if (!flags.getBool("serve") && tls) {
    char dir_template[] = "/tmp/loco-bench-tls-XXXXXX";
    if (::mkdtemp(dir_template) == nullptr)
      return reportFailure(Status(StatusCode::kIoError, "mkdtemp failed"));
    tmp.path = dir_template;
    auto ca = crypto::RunCa::init(tmp.path + "/ca", std::chrono::hours(1));
    if (!ca) return reportFailure(ca.status());
    tls_dir = tmp.path + "/tls";
    if (Status st = issueInto(*ca, crypto::randomHex(16), tls_dir, std::chrono::hours(1));
        !st.isOk())
      return reportFailure(st);
    if (Status st = useTlsDir(tls_dir); !st.isOk()) return reportFailure(st);
  } else {
    p2p::tls::useInsecure(/*warn=*/false);
  }
  if (flags.getBool("serve")) {
    auto listen = p2p::parseHostPort(flags.get("listen"), true);
    if (!listen) return reportFailure(listen.status());
    std::optional<p2p::HostPort> relay;
    if (flags.isSet("relay")) {
      auto r = p2p::parseHostPort(flags.get("relay"));
      if (!r) return reportFailure(r.status().withContext("--relay"));
      relay = *r;
    }
    return serveLink(*listen, flags.get("port-file"), opts, static_cast<std::size_t>(*mib),
                     static_cast<int>(*iters), relay);
  }
  std::optional<lab::LabConfig> lab_cfg;
  if (flags.isSet("lab")) {
    auto cfg = lab::loadLab(flags.get("lab"));
    if (!cfg) return reportFailure(cfg.status());
    // Before any thread starts: every thread this process creates then lives in host 1.
    if (Status st = lab::enterHost(*cfg, 1); !st.isOk()) return reportFailure(st);
    lab_cfg = std::move(cfg.value());
  }
  int relay_host = 0;
  if (flags.isSet("relay-host")) {
    auto h = flags.getInt("relay-host", 3, 64);
    if (!h) return reportFailure(h.status());
    if (!lab_cfg || *h > lab_cfg->hosts) {
      return reportFailure(
          Status(StatusCode::kInvalidArgument,
                 fmt::format("--relay-host {} needs --lab with at least {} hosts", *h, *h)));
    }
    relay_host = static_cast<int>(*h);
  }
  // The lab's name ends each result line when there is one.
  auto withLab = [&](Json line) {
    if (lab_cfg) line["lab"] = lab_cfg->name;
    return line;
  };
  std::optional<double> iperf;
  if (baseline == "iperf3") {
    auto r = benchIperf3(static_cast<std::uint32_t>(*streams), lab_cfg ? 10 : 3,
                         lab_cfg ? &*lab_cfg : nullptr);
    if (!r) return reportFailure(r.status());
    iperf = *r;
    std::printf("%s\n", jsonDump(withLab({{"bench", "link"},
                                          {"impl", "iperf3"},
                                          {"streams", *streams},
                                          {"gbit_s", jsonFixed(*iperf, 3)}}))
                            .c_str());
    std::fflush(stdout);
  }
  auto r = lab_cfg ? benchLinkLab(*lab_cfg, opts, static_cast<std::size_t>(*mib),
                                  static_cast<int>(*iters), tls_dir, relay_host)
                   : benchLink(static_cast<std::uint32_t>(*streams), static_cast<std::size_t>(*mib),
                               static_cast<int>(*iters), static_cast<std::uint32_t>(*chunk));
  if (!r) return reportFailure(r.status());
  double med = median(*r);
  Json line = withLab({{"bench", "link"},
                       {"impl", "loco"},
                       {"streams", *streams},
                       {"mib", *mib},
                       {"gbit_s", jsonFixed(med, 3)},
                       {"best_gbit_s", jsonFixed(*std::max_element(r->begin(), r->end()), 3)},
                       {"iters", r->size()},
                       {"tls", tls}});
  if (relay_host > 0) line["relay_host"] = relay_host;
  if (iperf) line["ratio_vs_iperf3"] = jsonFixed(med / *iperf, 3);
  std::printf("%s\n", jsonDump(line).c_str());
  return 0;
}

}  // namespace loco::cli
