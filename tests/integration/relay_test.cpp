// The relay (p2p/relay.h) in one process on 127.0.0.1: a peer registers, a multi-stream link
// dialed at its relayed address carries data both ways byte for byte, garbage and a second
// claim on a registered id leave that peer's service intact, the per-peer rate cap holds, and a
// relay that goes away fails the link at once (a link failure like any other).
#include "p2p/relay.h"

#include <gtest/gtest.h>
#include <asio.hpp>

#include <chrono>
#include <future>
#include <numeric>
#include <optional>
#include <random>

#include "p2p/base/metrics.h"
#include "p2p/link.h"
#include "p2p/net.h"
#include "p2p/runtime.h"
#include "p2p/stream.h"

namespace loco::p2p {
namespace {

using std::chrono::milliseconds;
constexpr milliseconds kWait{15000};
const std::string kPeerId = "0123456789abcdef0123456789abcdef";

template <typename F>
auto runOn(NetworkThread& net, F fn) {
  using R = std::invoke_result_t<F&>;
  auto done = std::make_shared<std::promise<R>>();
  auto f = done->get_future();
  net.post([done, fn = std::move(fn)]() mutable {
    if constexpr (std::is_void_v<R>) {
      fn();
      done->set_value();
    } else {
      done->set_value(fn());
    }
  });
  EXPECT_EQ(f.wait_for(kWait), std::future_status::ready) << "network thread stuck";
  return f.get();
}

std::vector<std::uint8_t> pattern(std::size_t n, unsigned seed) {
  std::vector<std::uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<std::uint8_t>(rng());
  return v;
}

// The relayed peer: a LinkListener fed by a RelayClient, on its own network thread; the relay
// and the dialer share another.
struct RelayFixture : ::testing::Test {
  NetworkThread relay_net{"relay"}, peer_net{"peer"}, dial_net{"dialer"};
  std::unique_ptr<RelayServer> relay;
  std::unique_ptr<LinkListener> listener;
  std::shared_ptr<RelayClient> client;
  std::promise<std::shared_ptr<Link>> accepted;
  std::string relayed_addr;
  LinkOptions opts;

  void startRelay(RelayOptions o = {}) {
    o.listen = {"127.0.0.1", 0};
    relay = runOn(relay_net, [&] { return std::move(RelayServer::start(relay_net, o).value()); });
  }
  HostPort relayAddr() { return {"127.0.0.1", relay->port()}; }

  // Registers kPeerId; the listener's links land in `accepted` (the first one).
  Result<std::string> registerPeer(const std::string& id, std::shared_ptr<RelayClient>& out) {
    auto done = std::make_shared<std::promise<Result<std::string>>>();
    auto f = done->get_future();
    runOn(peer_net, [&] {
      out = RelayClient::start(
          peer_net, relayAddr(), id,
          [this](std::unique_ptr<Stream> s) { listener->acceptStream(std::move(s)); }, nullptr,
          Deadline::after(milliseconds(5000)),
          [done](Result<std::string> r) { done->set_value(std::move(r)); });
    });
    EXPECT_EQ(f.wait_for(kWait), std::future_status::ready);
    return f.get();
  }

  void SetUp() override {
    opts.streams = 4;
    opts.chunk_bytes = 64 << 10;
    runOn(peer_net, [&] {
      listener = std::move(
          LinkListener::start(peer_net, {"127.0.0.1", 0}, opts,
                              [this](std::shared_ptr<Link> l, const std::string&, std::uint64_t) {
                                try {
                                  accepted.set_value(std::move(l));
                                } catch (...) {
                                }
                              })
              .value());
    });
  }
  void TearDown() override {
    runOn(peer_net, [&] {
      client.reset();
      listener.reset();
    });
    runOn(relay_net, [&] { relay.reset(); });
  }

  Result<std::shared_ptr<Link>> dial(const std::string& addr) {
    auto done = std::make_shared<std::promise<Result<std::shared_ptr<Link>>>>();
    auto f = done->get_future();
    runOn(dial_net, [&] {
      connectLink(dial_net, parseHostPort(addr).value(), "fedcba9876543210fedcba9876543210", opts,
                  Deadline::after(milliseconds(5000)),
                  [done](Result<std::shared_ptr<Link>> r) { done->set_value(std::move(r)); });
    });
    EXPECT_EQ(f.wait_for(kWait), std::future_status::ready);
    return f.get();
  }

  // Sends `data` from `from` (on `from_net`) to `to`; returns both completions' statuses.
  std::pair<Status, Status> transfer(NetworkThread& from_net, std::shared_ptr<Link> from,
                                     NetworkThread& to_net, std::shared_ptr<Link> to,
                                     const std::vector<std::uint8_t>& data,
                                     std::vector<std::uint8_t>& out, std::uint64_t tag) {
    out.assign(data.size(), 0);
    auto sent = std::make_shared<std::promise<Status>>();
    auto got = std::make_shared<std::promise<Status>>();
    auto fs = sent->get_future(), fg = got->get_future();
    runOn(to_net, [&] {
      to->recv(tag, {out.data(), out.size()}, [got](const Status& st) { got->set_value(st); });
    });
    runOn(from_net, [&] {
      from->send(tag, {data.data(), data.size()},
                 [sent](const Status& st) { sent->set_value(st); });
    });
    if (fs.wait_for(kWait) != std::future_status::ready ||
        fg.wait_for(kWait) != std::future_status::ready)
      return {Status(StatusCode::kTimeout, "send"), Status(StatusCode::kTimeout, "recv")};
    return {fs.get(), fg.get()};
  }
};

TEST_F(RelayFixture, MultiStreamLinkCarriesBytesBothWaysThroughTheRelay) {
  startRelay();
  auto addr = registerPeer(kPeerId, client);
  ASSERT_TRUE(addr.isOk()) << addr.status().toString();
  EXPECT_NE(*addr, relayAddr().toString()) << "the peer gets a port of its own";
  auto out = dial(*addr);
  ASSERT_TRUE(out.isOk()) << out.status().toString();
  auto fin = accepted.get_future();
  ASSERT_EQ(fin.wait_for(kWait), std::future_status::ready) << "no link reached the peer";
  auto in = fin.get();
  EXPECT_EQ(in->streamCount(), 4u);
  const auto data = pattern(3 << 20, 1);
  std::vector<std::uint8_t> got;
  auto [s1, r1] = transfer(dial_net, out.value(), peer_net, in, data, got, 7);
  EXPECT_TRUE(s1.isOk() && r1.isOk()) << s1.toString() << " / " << r1.toString();
  EXPECT_EQ(got, data) << "forwarded byte for byte";
  const auto back = pattern(1 << 20, 2);
  auto [s2, r2] = transfer(peer_net, in, dial_net, out.value(), back, got, 8);
  EXPECT_TRUE(s2.isOk() && r2.isOk()) << s2.toString() << " / " << r2.toString();
  EXPECT_EQ(got, back);
  EXPECT_GE(counter("relay.bytes", {{"peer", kPeerId.substr(0, 8)}}).value(), 4u << 20);
  runOn(dial_net, [&] { out.value()->close(Status(StatusCode::kAborted, "test done")); });
}

TEST_F(RelayFixture, GarbageAndAStolenIdLeaveTheRegisteredPeerServed) {
  startRelay();
  auto addr = registerPeer(kPeerId, client);
  ASSERT_TRUE(addr.isOk()) << addr.status().toString();
  const auto refused_before = counter("relay.refused", {{"reason", "bad_magic"}}).value();
  // Garbage: 20 connections sending random bytes, and 5 that send nothing at all.
  {
    asio::io_context io;
    std::vector<asio::ip::tcp::socket> socks;
    for (int i = 0; i < 25; ++i) {
      socks.emplace_back(io);
      socks.back().connect({asio::ip::make_address("127.0.0.1"), relay->port()});
      if (i < 20) {
        auto junk = pattern(41 + i * 13, 100 + i);
        asio::write(socks.back(), asio::buffer(junk));
      }
    }
    // A stolen id: the same peer id registering from another connection.
    std::shared_ptr<RelayClient> thief;
    auto stolen = registerPeer(kPeerId, thief);
    EXPECT_EQ(stolen.status().code(), StatusCode::kAlreadyExists) << stolen.status().toString();
    runOn(peer_net, [&] { thief.reset(); });
    // An attach with a token nobody issued.
    asio::ip::tcp::socket attach(io);
    attach.connect({asio::ip::make_address("127.0.0.1"), relay->port()});
    std::string req = std::string("LOCORLY1A") + std::string(32, 'a');
    asio::write(attach, asio::buffer(req));
    std::array<char, 1> one{};
    std::error_code ec;
    attach.read_some(asio::buffer(one), ec);
    EXPECT_TRUE(ec) << "an unknown token is closed";
  }
  EXPECT_TRUE([&] {
    for (int i = 0; i < 300; ++i) {
      if (counter("relay.refused", {{"reason", "bad_magic"}}).value() >= refused_before + 20)
        return true;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  }()) << "every garbage connection was refused";
  // The registered peer is still served.
  auto out = dial(*addr);
  ASSERT_TRUE(out.isOk()) << out.status().toString();
  auto fin = accepted.get_future();
  ASSERT_EQ(fin.wait_for(kWait), std::future_status::ready);
  const auto data = pattern(1 << 20, 3);
  std::vector<std::uint8_t> got;
  auto [s, r] = transfer(dial_net, out.value(), peer_net, fin.get(), data, got, 9);
  EXPECT_TRUE(s.isOk() && r.isOk()) << s.toString() << " / " << r.toString();
  EXPECT_EQ(got, data);
  runOn(dial_net, [&] { out.value()->close(Status(StatusCode::kAborted, "test done")); });
}

TEST_F(RelayFixture, PerPeerRateCapHolds) {
  RelayOptions o;
  o.peer_rate_mbit = 40;  // 5 MB/s
  startRelay(o);
  auto addr = registerPeer(kPeerId, client);
  ASSERT_TRUE(addr.isOk()) << addr.status().toString();
  auto out = dial(*addr);
  ASSERT_TRUE(out.isOk()) << out.status().toString();
  auto fin = accepted.get_future();
  ASSERT_EQ(fin.wait_for(kWait), std::future_status::ready);
  const auto data = pattern(4 << 20, 4);
  std::vector<std::uint8_t> got;
  const auto t0 = std::chrono::steady_clock::now();
  auto [s, r] = transfer(dial_net, out.value(), peer_net, fin.get(), data, got, 10);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(s.isOk() && r.isOk()) << s.toString() << " / " << r.toString();
  EXPECT_EQ(got, data);
  // 4 MiB at 5 MB/s is 0.84 s; the bucket's burst (256 KiB) allows a little less.
  EXPECT_GT(secs, 0.6) << "the cap did not hold";
  runOn(dial_net, [&] { out.value()->close(Status(StatusCode::kAborted, "test done")); });
}

TEST_F(RelayFixture, LosingTheRelayFailsTheLinkAtOnce) {
  RelayOptions o;
  o.peer_rate_mbit = 8;  // slow enough that the relay dies mid-transfer
  startRelay(o);
  auto lost = std::make_shared<std::promise<Status>>();
  auto addr_done = std::make_shared<std::promise<Result<std::string>>>();
  runOn(peer_net, [&] {
    client = RelayClient::start(
        peer_net, relayAddr(), kPeerId,
        [this](std::unique_ptr<Stream> s) { listener->acceptStream(std::move(s)); },
        [lost](const Status& why) { lost->set_value(why); }, Deadline::after(milliseconds(5000)),
        [addr_done](Result<std::string> r) { addr_done->set_value(std::move(r)); });
  });
  auto addr = addr_done->get_future().get();
  ASSERT_TRUE(addr.isOk()) << addr.status().toString();
  auto out = dial(*addr);
  ASSERT_TRUE(out.isOk()) << out.status().toString();
  auto fin = accepted.get_future();
  ASSERT_EQ(fin.wait_for(kWait), std::future_status::ready);
  auto in = fin.get();
  const auto data = pattern(8 << 20, 5);  // 8 s at the cap
  std::vector<std::uint8_t> got(data.size());
  auto sent = std::make_shared<std::promise<Status>>();
  auto recvd = std::make_shared<std::promise<Status>>();
  runOn(peer_net, [&] {
    in->recv(11, {got.data(), got.size()}, [recvd](const Status& st) { recvd->set_value(st); });
  });
  runOn(dial_net, [&] {
    out.value()->send(11, {data.data(), data.size()},
                      [sent](const Status& st) { sent->set_value(st); });
  });
  std::this_thread::sleep_for(milliseconds(500));
  const auto t0 = std::chrono::steady_clock::now();
  runOn(relay_net, [&] { relay->shutdown(); });
  auto fr = recvd->get_future();
  ASSERT_EQ(fr.wait_for(milliseconds(3000)), std::future_status::ready) << "the receive hangs";
  EXPECT_FALSE(fr.get().isOk());
  auto fs = sent->get_future();
  ASSERT_EQ(fs.wait_for(milliseconds(3000)), std::future_status::ready) << "the send hangs";
  EXPECT_FALSE(fs.get().isOk());
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 3.0);
  auto fl = lost->get_future();
  EXPECT_EQ(fl.wait_for(milliseconds(3000)), std::future_status::ready)
      << "the relayed peer learns that its address is dead";
}

}  // namespace
}  // namespace loco::p2p
