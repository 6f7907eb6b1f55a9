#include "p2p/base/status.h"

namespace loco {

std::string_view statusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "kOk";
    case StatusCode::kInvalidArgument:
      return "kInvalidArgument";
    case StatusCode::kNotFound:
      return "kNotFound";
    case StatusCode::kAlreadyExists:
      return "kAlreadyExists";
    case StatusCode::kPeerLost:
      return "kPeerLost";
    case StatusCode::kTimeout:
      return "kTimeout";
    case StatusCode::kAborted:
      return "kAborted";
    case StatusCode::kProtocolError:
      return "kProtocolError";
    case StatusCode::kUnauthenticated:
      return "kUnauthenticated";
    case StatusCode::kDataLoss:
      return "kDataLoss";
    case StatusCode::kResourceExhausted:
      return "kResourceExhausted";
    case StatusCode::kUnavailable:
      return "kUnavailable";
    case StatusCode::kEvicted:
      return "kEvicted";
    case StatusCode::kIoError:
      return "kIoError";
    case StatusCode::kInternal:
      return "kInternal";
    case StatusCode::kFailedPrecondition:
      return "kFailedPrecondition";
    case StatusCode::kCompleted:
      return "kCompleted";
  }
  return "kUnknown";
}

std::string Status::toString() const {
  if (isOk()) return "ok";
  std::string out(statusCodeName(code_));
  out += ": ";
  out += message_;
  return out;
}

Status Status::withContext(std::string_view context) const {
  if (isOk()) return *this;
  std::string msg(context);
  msg += ": ";
  msg += message_;
  return Status(code_, std::move(msg));
}

}  // namespace loco
