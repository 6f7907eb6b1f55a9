#pragma once
// Enrollment messages (ARCHITECTURE.md §10): a new peer, holding a join token, asks the
// coordinator to sign a certificate for its id over a key it generated. Pure codecs (loco_wire),
// fuzzed with the other messages.

#include <string>
#include <vector>

#include "p2p/base/bytes.h"
#include "p2p/base/status.h"

namespace loco::p2p {

struct EnrollMsg {
  std::string token;
  std::string peer_id;
  std::string public_key_pem;
};

struct EnrollReplyMsg {
  std::string cert_pem;
  std::string ca_pem;
};

std::vector<std::uint8_t> encodeEnroll(const EnrollMsg& m);
Result<EnrollMsg> decodeEnroll(ByteSpan in);
std::vector<std::uint8_t> encodeEnrollReply(const EnrollReplyMsg& m);
Result<EnrollReplyMsg> decodeEnrollReply(ByteSpan in);

}  // namespace loco::p2p
