#include "p2p/enroll.h"

namespace loco::p2p {
namespace {
constexpr std::size_t kMaxToken = 128;
constexpr std::size_t kMaxId = 64;
constexpr std::size_t kMaxPem = 6000;
constexpr std::uint8_t kVersion = 1;

Status malformed(const char* what) {
  return Status(StatusCode::kProtocolError, std::string("malformed ") + what + " payload");
}
}  // namespace

std::vector<std::uint8_t> encodeEnroll(const EnrollMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u8(kVersion);
  w.str(m.token);
  w.str(m.peer_id);
  w.str(m.public_key_pem);
  return out;
}

Result<EnrollMsg> decodeEnroll(ByteSpan in) {
  ByteReader r(in);
  EnrollMsg m;
  std::uint8_t version = 0;
  if (!(r.u8(version) && version >= 1 && r.str(m.token, kMaxToken) && r.str(m.peer_id, kMaxId) &&
        r.str(m.public_key_pem, kMaxPem))) {
    return malformed("Enroll");
  }
  return m;
}

std::vector<std::uint8_t> encodeEnrollReply(const EnrollReplyMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u8(kVersion);
  w.str(m.cert_pem);
  w.str(m.ca_pem);
  return out;
}

Result<EnrollReplyMsg> decodeEnrollReply(ByteSpan in) {
  ByteReader r(in);
  EnrollReplyMsg m;
  std::uint8_t version = 0;
  if (!(r.u8(version) && version >= 1 && r.str(m.cert_pem, kMaxPem) && r.str(m.ca_pem, kMaxPem))) {
    return malformed("EnrollReply");
  }
  return m;
}

}  // namespace loco::p2p
