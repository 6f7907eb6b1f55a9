// libFuzzer target for everything that parses bytes from the network: the frame decoder over a
// stream of frames, every message decoder, the all-reduce descriptor and join strings. Build with
// the `fuzz` preset (clang):
//   cmake --preset fuzz && cmake --build build-fuzz && build-fuzz/tests/fuzz/loco_wire_fuzz
//   -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "collectives/descriptor.h"
#include "crypto/token.h"
#include "p2p/enroll.h"
#include "p2p/frame.h"
#include "p2p/messages.h"

using namespace loco;
using namespace loco::p2p;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ByteSpan whole(data, size);
  // As a stream: decode frames back to back until the input runs out or is rejected.
  ByteSpan in = whole;
  for (;;) {
    FrameDecode d = decodeFrame(in);
    if (d.kind != FrameDecode::Kind::kFrame) break;
    if (d.consumed > in.size() || d.header.length > maxPayload(d.header.type) ||
        d.payload.size() != d.header.length) {
      std::abort();  // the decoder broke its own contract
    }
    switch (d.header.type) {
      case MsgType::kHello: {
        // Whatever decodes (version 1, 2 or a newer peer's) must survive our own encoding.
        auto h = decodeHello(d.payload);
        if (h.isOk()) {
          auto again = decodeHello(encodeHello(*h));
          if (!again.isOk() || again->peer_id != h->peer_id ||
              again->last_members != h->last_members || again->attempt != h->attempt ||
              again->incarnation != h->incarnation || again->progress != h->progress) {
            std::abort();
          }
        }
        break;
      }
      case MsgType::kWelcome:
        (void)decodeWelcome(d.payload);
        break;
      case MsgType::kRefused:
        (void)decodeRefused(d.payload);
        break;
      case MsgType::kEvicted:
        (void)decodeEvicted(d.payload);
        break;
      case MsgType::kMembership:
      case MsgType::kStatusReply:
        (void)decodeGroupView(d.payload);
        break;
      case MsgType::kLinkHello:
        (void)decodeLinkHello(d.payload);
        break;
      case MsgType::kLinkReport:
        (void)decodeLinkReport(d.payload);
        break;
      case MsgType::kProgress: {
        auto p = decodeProgress(d.payload);
        if (p.isOk()) {
          auto again = decodeProgress(encodeProgress(*p));
          if (!again.isOk() || again->progress != p->progress || again->finished != p->finished)
            std::abort();
        }
        break;
      }
      case MsgType::kStateManifest: {
        auto m = decodeStateManifest(d.payload);
        // Whatever decodes must encode back to the same bytes.
        if (m.isOk() && encodeStateManifest(*m).size() != d.payload.size()) std::abort();
        break;
      }
      case MsgType::kStatePlan: {
        auto p = decodeStatePlan(d.payload);
        if (p.isOk() && encodeStatePlan(*p).size() != d.payload.size()) std::abort();
        break;
      }
      case MsgType::kStateComplaint:
        (void)decodeStateComplaint(d.payload);
        break;
      case MsgType::kOpReport: {
        auto r = decodeOpReport(d.payload);
        if (r.isOk() &&
            encodeOpReport(*r) != std::vector<std::uint8_t>(d.payload.begin(), d.payload.end()))
          std::abort();
        break;
      }
      case MsgType::kPeerReport:
        (void)decodePeerReport(d.payload);
        break;
      case MsgType::kDialBack:
      case MsgType::kDialBackProbe:
        (void)decodeDialBack(d.payload);
        break;
      case MsgType::kDialBackResult:
        (void)decodeDialBackResult(d.payload);
        break;
      case MsgType::kEnroll:
        (void)decodeEnroll(d.payload);
        break;
      case MsgType::kEnrollReply:
        (void)decodeEnrollReply(d.payload);
        break;
      case MsgType::kConnectRequest:
      case MsgType::kConnectReply:
        (void)decodeConnect(d.payload);
        break;
      default:
        break;
    }
    in = in.subspan(d.consumed);
  }
  // As bare payloads.
  (void)decodeHello(whole);
  (void)decodeWelcome(whole);
  (void)decodePeerReport(whole);
  (void)decodeDialBack(whole);
  (void)decodeDialBackResult(whole);
  (void)decodeEnroll(whole);
  (void)decodeEnrollReply(whole);
  (void)crypto::parseJoinString(
      std::string_view(reinterpret_cast<const char*>(whole.data()), whole.size()));
  (void)decodeRefused(whole);
  (void)decodeEvicted(whole);
  (void)decodeLinkHello(whole);
  (void)decodeLinkReport(whole);
  (void)decodeStateManifest(whole);
  (void)decodeStatePlan(whole);
  (void)decodeStateComplaint(whole);
  // The all-reduce descriptor (collectives/descriptor.h), which peers send each other.
  auto desc = collectives::decodeDescriptor(whole);
  if (desc.isOk() &&
      collectives::encodeDescriptor(*desc) != std::vector<std::uint8_t>(whole.begin(), whole.end()))
    std::abort();
  auto report = decodeOpReport(whole);
  if (report.isOk() &&
      encodeOpReport(*report) != std::vector<std::uint8_t>(whole.begin(), whole.end()))
    std::abort();
  auto view = decodeGroupView(whole);
  if (view.isOk()) {
    // Whatever decodes must encode back to the same bytes.
    auto again = encodeGroupView(*view);
    if (again.size() != size) std::abort();
  }
  return 0;
}
