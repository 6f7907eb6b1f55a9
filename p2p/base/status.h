#pragma once
// Errors are values in loco (ARCHITECTURE.md §2): every fallible function returns Status or
// Result<T>. A message says what failed, where, and what to do about it.

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace loco {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad flag, bad address, malformed input from the user
  kNotFound,
  kAlreadyExists,  // e.g. a second live peer with the same identity
  kPeerLost,       // the other end closed or reset the connection
  kTimeout,        // a deadline passed (connect, handshake, heartbeat)
  kAborted,        // the caller or a membership change cancelled the operation
  kProtocolError,  // bytes on the wire that violate the protocol
  kUnauthenticated,
  kDataLoss,           // content does not match its hash
  kResourceExhausted,  // a bound was hit (connections, buffered bytes)
  kUnavailable,        // the service cannot be reached right now (connection refused)
  kEvicted,            // the coordinator removed this peer from the group
  kIoError,            // file or socket error not covered above
  kInternal,
  kFailedPrecondition,  // a call out of order (an all-reduce before admission, a sync point
                        // with operations in flight)
  kCompleted,  // the work is already done without the caller (a run that finished while this
               // peer was away: there is nothing left for it to do)
};
// The highest code (wire decoders clamp unknown codes to kInternal).
inline constexpr StatusCode kLastStatusCode = StatusCode::kCompleted;

std::string_view statusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }

  bool isOk() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return isOk(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "kTimeout: connect to 10.0.0.1:7000 timed out after 5000 ms"
  std::string toString() const;

  // Prefixes context: Status(kTimeout, "x").withContext("join") -> "join: x".
  Status withContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}          // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool isOk() const { return value_.has_value(); }
  explicit operator bool() const { return isOk(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace loco

// Returns early from the enclosing function when `expr` yields a non-ok Status.
#define LOCO_RETURN_IF_ERROR(expr)                 \
  do {                                             \
    ::loco::Status loco_status_ = (expr);          \
    if (!loco_status_.isOk()) return loco_status_; \
  } while (0)
