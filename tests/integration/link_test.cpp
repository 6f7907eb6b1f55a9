// Integration tests for the multi-stream link (p2p/link.h, ARCHITECTURE.md §3): two NetworkThreads
// in one process, a LinkListener on one and connectLink on the other, real TCP on 127.0.0.1.
//
// Every Link/LinkListener call runs on the network thread that owns it (post + promise); every
// wait is bounded (wait_for, at most 10 s) and fails the test instead of hanging. Buffers handed
// to send()/recv() live in the fixture, so they outlive the links even when a test fails with a
// transfer still pending, and each side is torn down on its own thread in TearDown().

#include "p2p/link.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <list>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "p2p/frame.h"
#include "p2p/messages.h"
#include "p2p/runtime.h"

namespace loco::p2p {
namespace {

using std::chrono::milliseconds;
using Bytes = std::vector<std::uint8_t>;

constexpr milliseconds kWait{10000};     // the longest any single wait may take
constexpr milliseconds kFailFast{3000};  // "within a couple of seconds"
constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

// Runs `fn` on `net` and waits for it (bounded). Non-void: the result, or nullopt on timeout.
// Void: true, or false on timeout. A timeout is recorded as a test failure.
template <typename F>
auto runOn(NetworkThread& net, F fn) {
  using R = std::invoke_result_t<F&>;
  if constexpr (std::is_void_v<R>) {
    auto done = std::make_shared<std::promise<void>>();
    auto f = done->get_future();
    net.post([done, fn = std::move(fn)]() mutable {
      fn();
      done->set_value();
    });
    if (f.wait_for(kWait) != std::future_status::ready) {
      ADD_FAILURE() << "the network thread did not run a task within 10 s";
      return false;
    }
    return true;
  } else {
    auto done = std::make_shared<std::promise<R>>();
    auto f = done->get_future();
    net.post([done, fn = std::move(fn)]() mutable { done->set_value(fn()); });
    if (f.wait_for(kWait) != std::future_status::ready) {
      ADD_FAILURE() << "the network thread did not run a task within 10 s";
      return std::optional<R>();
    }
    return std::optional<R>(f.get());
  }
}

// A send/recv completion. Safe to be called after the test gave up on it; counts its calls so a
// test can check "exactly once".
class Completion {
 public:
  Completion()
      : promise_(std::make_shared<std::promise<Status>>()),
        calls_(std::make_shared<std::atomic<int>>(0)) {
    future_ = promise_->get_future();
  }
  Link::Done callback() {
    return [p = promise_, c = calls_](const Status& st) {
      if (c->fetch_add(1) == 0) p->set_value(st);
    };
  }
  // The status, or nullopt when the completion did not run within `d`.
  std::optional<Status> wait(milliseconds d = kWait) {
    if (result_) return result_;
    if (future_.wait_for(d) != std::future_status::ready) return std::nullopt;
    result_ = future_.get();
    return result_;
  }
  bool doneWithin(milliseconds d) { return wait(d).has_value(); }
  int calls() const { return calls_->load(); }

 private:
  std::shared_ptr<std::promise<Status>> promise_;
  std::shared_ptr<std::atomic<int>> calls_;
  std::future<Status> future_;
  std::optional<Status> result_;
};

std::string describe(const std::optional<Status>& st) {
  if (!st) return "<did not complete>";
  return st->isOk() ? std::string("ok") : st->toString();
}

// Offset of the first differing byte, or -1 when equal.
long long firstMismatch(ByteSpan a, ByteSpan b) {
  if (a.size() != b.size()) return static_cast<long long>(std::min(a.size(), b.size()));
  auto [ia, ib] = std::mismatch(a.begin(), a.end(), b.begin());
  return ia == a.end() ? -1 : static_cast<long long>(ia - a.begin());
}

class LinkTest : public ::testing::Test {
 protected:
  // Connects a link with `opts` (both sides use the same options). Use with
  // ASSERT_NO_FATAL_FAILURE.
  void connect(LinkOptions opts) {
    opts_ = opts;
    auto accepted = std::make_shared<std::promise<std::shared_ptr<Link>>>();
    auto accepted_calls = std::make_shared<std::atomic<int>>(0);
    auto started = runOn(recv_net_, [this, opts, accepted, accepted_calls]() -> Status {
      auto l = LinkListener::start(recv_net_, {"127.0.0.1", 0}, opts,
                                   [accepted, accepted_calls](std::shared_ptr<Link> link,
                                                              const std::string&, std::uint64_t) {
                                     if (accepted_calls->fetch_add(1) == 0)
                                       accepted->set_value(std::move(link));
                                   });
      if (!l) return l.status();
      listener_ = std::move(l.value());
      return Status();
    });
    ASSERT_TRUE(started.has_value());
    ASSERT_TRUE(started->isOk()) << started->toString();
    auto port = runOn(recv_net_, [this] { return listener_->port(); });
    ASSERT_TRUE(port.has_value());

    auto dialed = std::make_shared<std::promise<Result<std::shared_ptr<Link>>>>();
    auto dialed_future = dialed->get_future();
    ASSERT_TRUE(runOn(send_net_, [this, opts, dialed, p = *port] {
      connectLink(send_net_, {"127.0.0.1", p}, "link-test-sender-0123456789abcdef", opts,
                  Deadline::after(Millis(5000)),
                  [dialed](Result<std::shared_ptr<Link>> r) { dialed->set_value(std::move(r)); });
    }));
    ASSERT_EQ(dialed_future.wait_for(kWait), std::future_status::ready)
        << "connectLink never completed";
    auto out = dialed_future.get();
    ASSERT_TRUE(out.isOk()) << out.status().toString();
    sender_ = std::move(out.value());

    auto in_future = accepted->get_future();
    ASSERT_EQ(in_future.wait_for(kWait), std::future_status::ready)
        << "the listener never produced the link";
    receiver_ = in_future.get();
    ASSERT_TRUE(receiver_);
    auto counts = runOn(recv_net_, [this] { return receiver_->streamCount(); });
    ASSERT_TRUE(counts.has_value());
    EXPECT_EQ(*counts, opts.streams);
  }

  void TearDown() override {
    // Each side on its own thread (a Link and its connections belong to their io_context).
    runOn(send_net_, [this] { sender_.reset(); });
    runOn(recv_net_, [this] {
      receiver_.reset();
      listener_.reset();
    });
  }

  // A buffer that lives as long as the fixture (longer than any link), filled with a pattern
  // that differs per `seed` and per offset, so misplaced or swapped chunks are detected.
  Bytes& pattern(std::size_t size, std::uint64_t seed) {
    Bytes& b = buffers_.emplace_back(size);
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + size);
    std::size_t i = 0;
    for (; i + 8 <= size; i += 8) {
      std::uint64_t v = rng();
      std::memcpy(b.data() + i, &v, 8);
    }
    for (; i < size; ++i) b[i] = static_cast<std::uint8_t>(rng());
    return b;
  }
  Bytes& filled(std::size_t size, std::uint8_t value) { return buffers_.emplace_back(size, value); }

  // Posts send() on the sender's thread.
  void postSend(std::uint64_t tag, const Bytes& src, Completion& c) {
    ASSERT_TRUE(runOn(send_net_, [this, tag, data = ByteSpan(src), cb = c.callback()] {
      sender_->send(tag, data, cb);
    }));
  }
  void postRecv(std::uint64_t tag, MutableByteSpan dst, Completion& c) {
    ASSERT_TRUE(
        runOn(recv_net_, [this, tag, dst, cb = c.callback()] { receiver_->recv(tag, dst, cb); }));
  }
  std::size_t stagedBytes() {
    auto v = runOn(recv_net_, [this] { return receiver_->stagedBytes(); });
    return v.value_or(0);
  }

  // One transfer, recv posted first: checks both completions and the bytes.
  void transfer(std::uint64_t tag, std::size_t size) {
    SCOPED_TRACE("transfer of " + std::to_string(size) + " bytes, tag " + std::to_string(tag));
    Bytes& src = pattern(size, tag + 1);
    Bytes& dst = filled(size, 0);
    Completion received, sent;
    ASSERT_NO_FATAL_FAILURE(postRecv(tag, MutableByteSpan(dst), received));
    ASSERT_NO_FATAL_FAILURE(postSend(tag, src, sent));
    auto r = received.wait();
    auto s = sent.wait();
    ASSERT_TRUE(r.has_value()) << "recv did not complete within 10 s";
    ASSERT_TRUE(s.has_value()) << "send did not complete within 10 s";
    EXPECT_TRUE(r->isOk()) << r->toString();
    EXPECT_TRUE(s->isOk()) << s->toString();
    EXPECT_EQ(firstMismatch(src, dst), -1) << "received bytes differ from the sent bytes";
    EXPECT_EQ(received.calls(), 1);
    EXPECT_EQ(sent.calls(), 1);
  }

  static LinkOptions options(std::uint32_t streams, std::uint32_t chunk,
                             std::size_t max_staged = 64 * MiB) {
    LinkOptions o;
    o.streams = streams;
    o.chunk_bytes = chunk;
    o.max_staged_bytes = max_staged;
    return o;
  }

  NetworkThread send_net_{"link-test-send"};
  NetworkThread recv_net_{"link-test-recv"};
  LinkOptions opts_;
  std::shared_ptr<Link> sender_;
  std::shared_ptr<Link> receiver_;
  std::unique_ptr<LinkListener> listener_;
  std::list<Bytes> buffers_;  // destroyed after TearDown(), so after both links
};

// ---- 1. bit-identical delivery
// --------------------------------------------------------------------

TEST_F(LinkTest, DeliversAMultiMiBTransferBitIdenticalOverFourStreams) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  ASSERT_NO_FATAL_FAILURE(transfer(1, 6 * MiB));
}

TEST_F(LinkTest, DeliversSizesThatAreNotAMultipleOfTheChunkSize) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  const std::size_t sizes[] = {
      3 * MiB + 12345, 64 * KiB + 1, 64 * KiB - 1, 3 * 64 * KiB - 1, 5 * 64 * KiB, 100, 1};
  std::uint64_t tag = 10;
  for (std::size_t size : sizes) ASSERT_NO_FATAL_FAILURE(transfer(tag++, size));
}

TEST_F(LinkTest, DeliversAOneByteTransfer) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  ASSERT_NO_FATAL_FAILURE(transfer(7, 1));
}

TEST_F(LinkTest, DeliversOverASingleStream) {
  ASSERT_NO_FATAL_FAILURE(connect(options(1, 64 * KiB)));
  ASSERT_NO_FATAL_FAILURE(transfer(1, 4 * MiB + 777));
  ASSERT_NO_FATAL_FAILURE(transfer(2, 1));
}

TEST_F(LinkTest, ZeroByteTransferCompletesAtOnce) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  Completion sent, received;
  ASSERT_NO_FATAL_FAILURE(postSend(3, Bytes(), sent));
  ASSERT_NO_FATAL_FAILURE(postRecv(3, MutableByteSpan(), received));
  auto s = sent.wait(kFailFast), r = received.wait(kFailFast);
  ASSERT_TRUE(s && r) << "send: " << describe(s) << ", recv: " << describe(r);
  EXPECT_TRUE(s->isOk() && r->isOk()) << "send: " << describe(s) << ", recv: " << describe(r);
}

TEST_F(LinkTest, ReusesTheLinkForManySequentialTransfers) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  for (std::uint64_t i = 0; i < 20; ++i)
    ASSERT_NO_FATAL_FAILURE(transfer(100 + i, 256 * KiB + i * 4099));
}

// ---- 2. several tags in flight, recvs posted late
// ---------------------------------------------------

TEST_F(LinkTest, DeliversConcurrentTagsWhoseRecvsArePostedLateInReverseOrder) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  constexpr int kTags = 8;
  std::vector<Bytes*> src, dst;
  std::vector<Completion> sent(kTags), received(kTags);
  for (int t = 0; t < kTags; ++t) {
    src.push_back(&pattern(512 * KiB + static_cast<std::size_t>(t) * 7919, 1000 + t));
    dst.push_back(&filled(src.back()->size(), 0));
  }
  // All sends back to back in one handler.
  std::vector<Link::Done> cbs;
  for (auto& c : sent) cbs.push_back(c.callback());
  ASSERT_TRUE(runOn(send_net_, [&] {
    for (int t = 0; t < kTags; ++t)
      sender_->send(static_cast<std::uint64_t>(t), ByteSpan(*src[t]), cbs[t]);
  }));
  std::this_thread::sleep_for(milliseconds(10));  // let chunks arrive before any recv exists
  for (int t = kTags - 1; t >= 0; --t) {
    ASSERT_NO_FATAL_FAILURE(
        postRecv(static_cast<std::uint64_t>(t), MutableByteSpan(*dst[t]), received[t]));
  }
  for (int t = 0; t < kTags; ++t) {
    SCOPED_TRACE("tag " + std::to_string(t));
    auto r = received[t].wait();
    auto s = sent[t].wait();
    EXPECT_TRUE(r && r->isOk()) << "recv: " << describe(r);
    EXPECT_TRUE(s && s->isOk()) << "send: " << describe(s);
    if (r && r->isOk()) {
      EXPECT_EQ(firstMismatch(*src[t], *dst[t]), -1) << "received bytes differ";
    }
  }
  EXPECT_EQ(stagedBytes(), 0u) << "staging must be empty once every transfer was received";
}

// The same with a staging bound smaller than the data in flight: streams park and resume while
// recvs for other tags are posted.
TEST_F(LinkTest, DeliversConcurrentTagsWhenStagingIsFull) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB, 512 * KiB)));
  constexpr int kTags = 8;
  std::vector<Bytes*> src, dst;
  std::vector<Completion> sent(kTags), received(kTags);
  for (int t = 0; t < kTags; ++t) {
    src.push_back(&pattern(1 * MiB + static_cast<std::size_t>(t) * 333, 2000 + t));
    dst.push_back(&filled(src.back()->size(), 0));
  }
  for (int t = 0; t < kTags; ++t)
    ASSERT_NO_FATAL_FAILURE(postSend(static_cast<std::uint64_t>(t), *src[t], sent[t]));
  std::this_thread::sleep_for(milliseconds(100));  // staging fills up, streams park
  for (int t = kTags - 1; t >= 0; --t) {
    ASSERT_NO_FATAL_FAILURE(
        postRecv(static_cast<std::uint64_t>(t), MutableByteSpan(*dst[t]), received[t]));
    std::this_thread::sleep_for(milliseconds(2));
  }
  for (int t = 0; t < kTags; ++t) {
    SCOPED_TRACE("tag " + std::to_string(t));
    auto r = received[t].wait();
    auto s = sent[t].wait();
    EXPECT_TRUE(r && r->isOk()) << "recv: " << describe(r);
    EXPECT_TRUE(s && s->isOk()) << "send: " << describe(s);
    if (r && r->isOk()) {
      EXPECT_EQ(firstMismatch(*src[t], *dst[t]), -1) << "received bytes differ";
    }
  }
}

// A recv() posted while a chunk of its transfer is half-read into a staging buffer must still get
// that chunk. The recv is posted from the receiver's thread the moment staging starts (stagedBytes
// counts a chunk as soon as its header was read), so the first chunk is almost surely mid-read.
TEST_F(LinkTest, RecvPostedWhileAChunkIsBeingStagedStillCompletes) {
  ASSERT_NO_FATAL_FAILURE(connect(options(1, 4 * MiB)));
  for (std::uint64_t round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::uint64_t tag = 50 + round;
    Bytes& src = pattern(24 * MiB, tag);
    Bytes& dst = filled(src.size(), 0);
    Completion sent, received;
    auto posted = std::make_shared<std::promise<std::size_t>>();
    auto posted_future = posted->get_future();
    auto stop = std::make_shared<std::atomic<bool>>(false);
    // Poll on the receiver's thread; post the recv as soon as anything is being staged.
    auto poll = std::make_shared<std::function<void()>>();
    *poll = [this, poll_weak = std::weak_ptr<std::function<void()>>(poll), posted, stop, tag,
             d = MutableByteSpan(dst), cb = received.callback()] {
      if (stop->load()) return;
      if (receiver_->stagedBytes() > 0) {
        std::size_t staged = receiver_->stagedBytes();
        receiver_->recv(tag, d, cb);
        posted->set_value(staged);
        return;
      }
      if (auto p = poll_weak.lock()) recv_net_.post(*p);
    };
    ASSERT_TRUE(runOn(recv_net_, [poll] { (*poll)(); }));
    ASSERT_NO_FATAL_FAILURE(postSend(tag, src, sent));
    if (posted_future.wait_for(kWait) != std::future_status::ready) {
      stop->store(true);
      FAIL() << "no chunk was ever staged";
    }
    posted_future.get();
    auto r = received.wait();
    auto s = sent.wait();
    stop->store(true);
    ASSERT_TRUE(r.has_value())
        << "recv posted while a chunk was being staged never completed (staged bytes now: "
        << stagedBytes() << ")";
    EXPECT_TRUE(r->isOk()) << r->toString();
    EXPECT_TRUE(s && s->isOk()) << "send: " << describe(s);
    EXPECT_EQ(firstMismatch(src, dst), -1);
    EXPECT_EQ(stagedBytes(), 0u);
  }
}

// ---- 3. bounded buffering
// ----------------------------------------------------------------------------

TEST_F(LinkTest, StagesEarlyChunksWithinTheBound) {
  constexpr std::size_t kBound = 1 * MiB;
  constexpr std::uint32_t kChunk = 64 * KiB;
  ASSERT_NO_FATAL_FAILURE(connect(options(4, kChunk, kBound)));
  Bytes& src = pattern(16 * MiB, 77);
  Bytes& dst = filled(src.size(), 0);
  Completion sent, received;
  ASSERT_NO_FATAL_FAILURE(postSend(9, src, sent));

  // ~300 ms with no recv posted; sample the staging level on the receiver's thread.
  std::size_t max_seen = 0;
  int samples = 0;
  auto until = Clock::now() + milliseconds(300);
  while (Clock::now() < until) {
    auto v = runOn(recv_net_, [this] { return receiver_->stagedBytes(); });
    ASSERT_TRUE(v.has_value());
    max_seen = std::max(max_seen, *v);
    ++samples;
    std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_LE(max_seen, kBound + kChunk) << "staging exceeded max_staged_bytes + one chunk";
  EXPECT_GT(max_seen, 0u) << "nothing was staged: the test did not exercise staging";
  EXPECT_FALSE(received.doneWithin(milliseconds(0)));

  ASSERT_NO_FATAL_FAILURE(postRecv(9, MutableByteSpan(dst), received));
  auto r = received.wait();
  auto s = sent.wait();
  ASSERT_TRUE(r.has_value()) << "recv posted after staging filled up never completed (deadlock); "
                             << samples << " samples, max staged " << max_seen;
  EXPECT_TRUE(r->isOk()) << r->toString();
  EXPECT_TRUE(s && s->isOk()) << "send: " << describe(s);
  EXPECT_EQ(firstMismatch(src, dst), -1) << "received bytes differ";
  EXPECT_EQ(stagedBytes(), 0u);
}

// K=1, bound = 4 chunks. Transfer A (4 chunks) fills staging exactly and the stream parks on the
// first chunk of B; C queues behind B. recv(C) is posted (the stream resumes and parks again on
// B), then recv(A), which completes entirely from staging and frees it. The parked stream must
// now move on (stage B, deliver C) without waiting for yet another recv().
TEST_F(LinkTest, ResumesParkedStreamsWhenARecvCompletesFromStaging) {
  constexpr std::uint32_t kChunk = 64 * KiB;
  ASSERT_NO_FATAL_FAILURE(connect(options(1, kChunk, 4 * kChunk)));
  Bytes& a = pattern(4 * kChunk, 1);
  Bytes& b = pattern(kChunk, 2);
  Bytes& c = pattern(kChunk, 3);
  Bytes& a_dst = filled(a.size(), 0);
  Bytes& c_dst = filled(c.size(), 0);
  Completion sent_a, sent_b, sent_c, recv_a, recv_c;
  ASSERT_NO_FATAL_FAILURE(postSend(1, a, sent_a));
  ASSERT_NO_FATAL_FAILURE(postSend(2, b, sent_b));
  ASSERT_NO_FATAL_FAILURE(postSend(3, c, sent_c));
  auto until = Clock::now() + kWait;
  while (stagedBytes() < a.size() && Clock::now() < until)
    std::this_thread::sleep_for(milliseconds(2));
  ASSERT_EQ(stagedBytes(), a.size()) << "transfer A was not staged";
  std::this_thread::sleep_for(milliseconds(50));
  ASSERT_EQ(stagedBytes(), a.size()) << "staging went past its bound";

  ASSERT_NO_FATAL_FAILURE(postRecv(3, MutableByteSpan(c_dst), recv_c));
  ASSERT_NO_FATAL_FAILURE(postRecv(1, MutableByteSpan(a_dst), recv_a));
  auto ra = recv_a.wait();
  ASSERT_TRUE(ra && ra->isOk()) << "recv A: " << describe(ra);
  EXPECT_EQ(firstMismatch(a, a_dst), -1);

  auto rc = recv_c.wait();
  EXPECT_TRUE(rc.has_value())
      << "recv C never completed although staging had room again: the stream stayed "
         "parked on B's chunk (staged bytes now "
      << stagedBytes() << ")";
  if (rc) {
    EXPECT_TRUE(rc->isOk()) << rc->toString();
    EXPECT_EQ(firstMismatch(c, c_dst), -1);
  }
  // Drain B either way so the sender finishes.
  Bytes& b_dst = filled(b.size(), 0);
  Completion recv_b;
  ASSERT_NO_FATAL_FAILURE(postRecv(2, MutableByteSpan(b_dst), recv_b));
  auto rb = recv_b.wait();
  EXPECT_TRUE(rb && rb->isOk()) << "recv B: " << describe(rb);
}

// ---- 4. failure
// ------------------------------------------------------------------------------------

// The sender's thread sends, lets the kernel take what it can, then closes the link; the transfer
// is far larger than what the streams have been handed, so it is certainly cut mid-way.
TEST_F(LinkTest, ClosingTheSenderFailsThePeersPendingRecv) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  Bytes& src = pattern(64 * MiB, 5);
  Bytes& dst = filled(src.size(), 0);
  Completion sent, received;
  ASSERT_NO_FATAL_FAILURE(postRecv(4, MutableByteSpan(dst), received));
  ASSERT_TRUE(runOn(send_net_, [this, data = ByteSpan(src), cb = sent.callback()] {
    sender_->send(4, data, cb);
    std::this_thread::sleep_for(milliseconds(30));  // the receiver drains what the kernel took
    sender_->close(Status(StatusCode::kAborted, "test closes the sender"));
  }));
  auto t0 = Clock::now();
  auto r = received.wait(kFailFast);
  ASSERT_TRUE(r.has_value())
      << "the receiver's pending recv did not fail within 3 s of the sender closing";
  EXPECT_FALSE(r->isOk()) << "a transfer cut mid-way completed ok";
  EXPECT_LT(Clock::now() - t0, milliseconds(2500));
  EXPECT_EQ(received.calls(), 1);

  // Once the link failed, a new recv fails at once.
  Bytes& more = filled(1000, 0);
  Completion late;
  ASSERT_NO_FATAL_FAILURE(postRecv(6, MutableByteSpan(more), late));
  auto l = late.wait(milliseconds(1000));
  ASSERT_TRUE(l.has_value()) << "recv on a link whose peer closed did not fail at once";
  EXPECT_FALSE(l->isOk());
}

TEST_F(LinkTest, RecvAndSendOnAClosedLinkFailAtOnce) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  Bytes& dst = filled(100 * KiB, 0);
  Bytes& src = pattern(100 * KiB, 8);
  Completion received, sent;
  ASSERT_TRUE(runOn(recv_net_, [this] {
    receiver_->close(Status(StatusCode::kAborted, "test closes the receiver"));
  }));
  ASSERT_NO_FATAL_FAILURE(postRecv(1, MutableByteSpan(dst), received));
  auto r = received.wait(milliseconds(1000));
  ASSERT_TRUE(r.has_value()) << "recv on a closed link did not fail at once";
  EXPECT_EQ(r->code(), StatusCode::kAborted) << r->toString();

  ASSERT_TRUE(runOn(send_net_, [this] {
    sender_->close(Status(StatusCode::kAborted, "test closes the sender"));
  }));
  ASSERT_NO_FATAL_FAILURE(postSend(1, src, sent));
  auto s = sent.wait(milliseconds(1000));
  ASSERT_TRUE(s.has_value()) << "send on a closed link did not fail at once";
  EXPECT_FALSE(s->isOk());
}

TEST_F(LinkTest, PeerCloseRunsTheCloseHandlerAndFailsLaterRecvs) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  Completion closed;
  ASSERT_TRUE(runOn(recv_net_, [this, cb = closed.callback()] { receiver_->setCloseHandler(cb); }));
  ASSERT_TRUE(runOn(send_net_, [this] {
    sender_->close(Status(StatusCode::kAborted, "test closes the sender"));
  }));
  auto c = closed.wait(kFailFast);
  ASSERT_TRUE(c.has_value()) << "the receiver never noticed that the sender closed";
  EXPECT_FALSE(c->isOk());
  Bytes& dst = filled(10, 0);
  Completion received;
  ASSERT_NO_FATAL_FAILURE(postRecv(1, MutableByteSpan(dst), received));
  auto r = received.wait(milliseconds(1000));
  ASSERT_TRUE(r.has_value()) << "recv after the peer closed did not fail at once";
  EXPECT_FALSE(r->isOk());
}

// "Every pending send/recv completes with the reason" (link.h): a send of many more chunks than
// the streams hold at once must complete when its own link is closed.
TEST_F(LinkTest, ClosingALinkFailsItsOwnPendingSend) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  Bytes& src = pattern(32 * MiB, 6);
  Completion sent;
  ASSERT_TRUE(runOn(send_net_, [this, data = ByteSpan(src), cb = sent.callback()] {
    sender_->send(1, data, cb);  // no recv posted anywhere: it cannot finish on its own quickly
    sender_->close(Status(StatusCode::kAborted, "test closes the sender"));
  }));
  auto s = sent.wait(kFailFast);
  ASSERT_TRUE(s.has_value()) << "the pending send never completed after its link was closed";
  EXPECT_FALSE(s->isOk());
  EXPECT_EQ(sent.calls(), 1);
}

// Same, when it is the peer that goes away: the sender's link fails and so must its send.
TEST_F(LinkTest, PeerCloseFailsThePendingSend) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB, 1 * MiB)));
  Bytes& src = pattern(32 * MiB, 7);
  Completion sent, closed;
  ASSERT_TRUE(runOn(send_net_, [this, cb = closed.callback()] { sender_->setCloseHandler(cb); }));
  ASSERT_NO_FATAL_FAILURE(postSend(1, src, sent));
  std::this_thread::sleep_for(milliseconds(100));  // receiver staging is full; the send is stuck
  EXPECT_FALSE(sent.doneWithin(milliseconds(0)));
  ASSERT_TRUE(runOn(recv_net_, [this] {
    receiver_->close(Status(StatusCode::kAborted, "test closes the receiver"));
  }));
  auto c = closed.wait(kFailFast);
  EXPECT_TRUE(c.has_value()) << "the sender never noticed that the receiver closed";
  auto s = sent.wait(kFailFast);
  ASSERT_TRUE(s.has_value()) << "the pending send never completed after the peer closed";
  EXPECT_FALSE(s->isOk());
}

// ---- 5. size mismatch
// --------------------------------------------------------------------------------

class LinkSizeMismatchTest : public LinkTest {
 protected:
  // Sends `sent` bytes; receives into a `expected`-byte buffer followed by a guard area. With
  // `recv_first`, the recv is posted before the send (chunks go straight to dst), else after the
  // chunks arrived (staged). Returns the recv's status (nullopt: did not complete within `wait`).
  std::optional<Status> mismatch(std::size_t sent_bytes, std::size_t expected, bool recv_first,
                                 milliseconds wait = kFailFast) {
    constexpr std::size_t kGuard = 256 * KiB;
    constexpr std::uint8_t kCanary = 0xA5;
    Bytes& src = pattern(sent_bytes, 31);
    Bytes& dst = filled(expected + kGuard, kCanary);
    Completion sent, received;
    if (recv_first) postRecv(1, MutableByteSpan(dst.data(), expected), received);
    postSend(1, src, sent);
    if (!recv_first) {
      std::this_thread::sleep_for(milliseconds(100));
      postRecv(1, MutableByteSpan(dst.data(), expected), received);
    }
    auto r = received.wait(wait);
    // Nothing may have been written past the receive buffer (the link may still be running if
    // the recv hung, so read the guard on the receiver's thread).
    auto guard_ok = runOn(recv_net_, [&dst, expected] {
      return std::all_of(dst.begin() + static_cast<std::ptrdiff_t>(expected), dst.end(),
                         [](std::uint8_t v) { return v == kCanary; });
    });
    EXPECT_TRUE(guard_ok.value_or(false))
        << "bytes were written past the end of the receive buffer";
    return r;
  }
};

TEST_F(LinkSizeMismatchTest, RecvIntoAShorterBufferFailsWithProtocolError) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  auto r = mismatch(300 * KiB + 123, 300 * KiB, /*recv_first=*/true);
  ASSERT_TRUE(r.has_value()) << "recv into a too-short buffer never completed";
  EXPECT_EQ(r->code(), StatusCode::kProtocolError) << describe(r);
}

TEST_F(LinkSizeMismatchTest, StagedChunksThatDoNotFitTheRecvBufferFailWithProtocolError) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  auto r = mismatch(300 * KiB + 123, 300 * KiB, /*recv_first=*/false);
  ASSERT_TRUE(r.has_value()) << "recv into a too-short buffer never completed";
  EXPECT_EQ(r->code(), StatusCode::kProtocolError) << describe(r);
}

TEST_F(LinkSizeMismatchTest, RecvIntoALongerBufferFailsWithProtocolError) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  auto r = mismatch(100 * KiB, 128 * KiB, /*recv_first=*/true);
  ASSERT_TRUE(r.has_value()) << "recv into a too-long buffer never completed";
  EXPECT_EQ(r->code(), StatusCode::kProtocolError) << describe(r);
}

// The sent size is a whole number of chunks and the buffer is whole chunks shorter: every chunk
// that arrives for the buffer has the length the buffer expects.
TEST_F(LinkSizeMismatchTest, RecvIntoABufferShorterByWholeChunksFails) {
  ASSERT_NO_FATAL_FAILURE(connect(options(1, 64 * KiB)));
  auto r = mismatch(4 * 64 * KiB, 2 * 64 * KiB, /*recv_first=*/true);
  ASSERT_TRUE(r.has_value()) << "recv into a too-short buffer never completed";
  EXPECT_EQ(r->code(), StatusCode::kProtocolError)
      << describe(r) << " (a 256 KiB transfer was accepted into a 128 KiB buffer)";
}

// ... and whole chunks longer: the last chunks never come.
TEST_F(LinkSizeMismatchTest, RecvIntoABufferLongerByWholeChunksFails) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  auto r = mismatch(2 * 64 * KiB, 4 * 64 * KiB, /*recv_first=*/true);
  ASSERT_TRUE(r.has_value())
      << "recv into a buffer longer than the transfer by whole chunks never completed "
         "(waits forever for chunks the sender never sends)";
  EXPECT_EQ(r->code(), StatusCode::kProtocolError) << describe(r);
}

// recvUpTo (compressed pieces): any length up to the buffer, posted before the chunks arrive or
// after they were staged; the length comes back, the rest of the buffer is untouched, and a
// transfer longer than the buffer is a protocol error.
TEST_F(LinkTest, RecvUpToTakesAnyLengthThatFitsAndRejectsALongerOne) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  std::uint64_t tag = 40;
  for (std::size_t size : {std::size_t{1}, 64 * KiB, 3 * 64 * KiB + 5, 300 * KiB}) {
    for (bool recv_first : {true, false}) {
      SCOPED_TRACE(std::to_string(size) +
                   (recv_first ? " bytes, recv first" : " bytes, recv after"));
      Bytes& src = pattern(size, tag);
      Bytes& dst = filled(300 * KiB + 64 * KiB, 0xA5);
      auto got = std::make_shared<std::optional<std::pair<Status, std::size_t>>>();
      std::promise<void> done;
      auto post = [&] {
        ASSERT_TRUE(runOn(recv_net_, [&, got] {
          receiver_->recvUpTo(tag, MutableByteSpan(dst), [&, got](const Status& st, std::size_t n) {
            *got = std::make_pair(st, n);
            done.set_value();
          });
        }));
      };
      Completion sent;
      if (recv_first) post();
      ASSERT_NO_FATAL_FAILURE(postSend(tag, src, sent));
      if (!recv_first) {
        std::this_thread::sleep_for(milliseconds(50));
        post();
      }
      ASSERT_EQ(done.get_future().wait_for(kWait), std::future_status::ready);
      ASSERT_TRUE((*got)->first.isOk()) << (*got)->first.toString();
      EXPECT_EQ((*got)->second, size);
      EXPECT_TRUE(std::equal(src.begin(), src.end(), dst.begin()));
      EXPECT_TRUE(std::all_of(dst.begin() + static_cast<std::ptrdiff_t>(size), dst.end(),
                              [](std::uint8_t v) { return v == 0xA5; }));
      ++tag;
    }
  }
  Bytes& big = pattern(2 * 64 * KiB + 1, 99);
  Bytes& small = filled(2 * 64 * KiB, 0);
  std::promise<Status> failed;
  ASSERT_TRUE(runOn(recv_net_, [&] {
    receiver_->recvUpTo(tag, MutableByteSpan(small),
                        [&](const Status& st, std::size_t) { failed.set_value(st); });
  }));
  Completion sent;
  ASSERT_NO_FATAL_FAILURE(postSend(tag, big, sent));
  auto f = failed.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(f.get().code(), StatusCode::kProtocolError);
}

TEST_F(LinkTest, SecondRecvForTheSameTagIsRejected) {
  ASSERT_NO_FATAL_FAILURE(connect(options(4, 64 * KiB)));
  Bytes& d1 = filled(1000, 0);
  Bytes& d2 = filled(1000, 0);
  Completion first, second;
  ASSERT_NO_FATAL_FAILURE(postRecv(1, MutableByteSpan(d1), first));
  ASSERT_NO_FATAL_FAILURE(postRecv(1, MutableByteSpan(d2), second));
  auto s = second.wait(milliseconds(1000));
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->code(), StatusCode::kInvalidArgument) << s->toString();
  EXPECT_FALSE(first.doneWithin(milliseconds(0)));
  // The first still works.
  Bytes& src = pattern(1000, 4);
  Completion sent;
  ASSERT_NO_FATAL_FAILURE(postSend(1, src, sent));
  auto f = first.wait();
  ASSERT_TRUE(f && f->isOk()) << describe(f);
  EXPECT_EQ(firstMismatch(src, d1), -1);
}

}  // namespace
}  // namespace loco::p2p

// ---- a link that is never completed
// --------------------------------------------------------------

namespace loco::p2p {
namespace {

// A dialer that sends the LinkHello of one stream of two and then goes silent (it gave up, or a
// partition ate its close): the listener must not hold that stream, and its descriptor, forever.
// The chaos soak saw a peer's open fds grow 11 -> 19 over 947 s of partitions and stalls.
TEST(LinkListenerPartial, AHalfDialedLinkIsDroppedAfterTheHandshakeTimeout) {
  NetworkThread net{"link-test-partial"};
  LinkOptions opts;
  opts.handshake_timeout = Millis(300);
  std::unique_ptr<LinkListener> listener;
  auto port = runOn(net, [&]() -> int {
    auto l = LinkListener::start(net, {"127.0.0.1", 0}, opts,
                                 [](std::shared_ptr<Link>, const std::string&, std::uint64_t) {});
    if (!l) return -1;
    listener = std::move(l.value());
    return listener->port();
  });
  ASSERT_TRUE(port.has_value());
  ASSERT_GT(*port, 0);

  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(*port));
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  const auto hello = encodeLinkHello(
      {"a1b2c3d4e5f60718", "0123456789abcdef0123456789abcdef", 0, 2, opts.chunk_bytes});
  FrameHeader h;
  h.type = MsgType::kLinkHello;
  h.length = static_cast<std::uint32_t>(hello.size());
  const auto frame = encodeFrame(h, hello);
  ASSERT_EQ(::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(frame.size()));

  // The listener accepts the stream (kLinkAccept), then, with the second stream missing for 4
  // handshake timeouts, closes it: EOF here. Without that it stays open as long as we do.
  const auto start = std::chrono::steady_clock::now();
  bool eof = false;
  std::vector<std::uint8_t> buf(4096);
  while (!eof && std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    eof = n <= 0;
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(eof) << "the half-dialed stream is still open after " << waited << " s";
  EXPECT_GE(waited, 1.1) << "dropped before 4 handshake timeouts";
  ::close(fd);
  runOn(net, [&] { listener.reset(); });
}

}  // namespace
}  // namespace loco::p2p
