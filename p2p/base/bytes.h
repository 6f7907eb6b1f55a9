#pragma once
// Little-endian byte encoding for the wire. ByteReader never reads past its span: every getter
// fails (and stays failed) instead, so decoders are safe on arbitrary, hostile input.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace loco {

using ByteSpan = std::span<const std::uint8_t>;
using MutableByteSpan = std::span<std::uint8_t>;

class ByteWriter {
 public:
  explicit ByteWriter(std::vector<std::uint8_t>& out) : out_(out) {}
  void u8(std::uint8_t v) { out_.push_back(v); }
  void u16(std::uint16_t v) { putLe(v); }
  void u32(std::uint32_t v) { putLe(v); }
  void u64(std::uint64_t v) { putLe(v); }
  void i64(std::int64_t v) { putLe(static_cast<std::uint64_t>(v)); }
  // u32 length prefix, then the bytes.
  void str(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void bytes(ByteSpan b) { out_.insert(out_.end(), b.begin(), b.end()); }

 private:
  template <typename T>
  void putLe(T v) {
    for (std::size_t i = 0; i < sizeof(T); ++i)
      out_.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  std::vector<std::uint8_t>& out_;
};

class ByteReader {
 public:
  explicit ByteReader(ByteSpan in) : in_(in) {}
  bool u8(std::uint8_t& v) { return getLe(v); }
  bool u16(std::uint16_t& v) { return getLe(v); }
  bool u32(std::uint32_t& v) { return getLe(v); }
  bool u64(std::uint64_t& v) { return getLe(v); }
  bool i64(std::int64_t& v) {
    std::uint64_t u = 0;
    if (!getLe(u)) return false;
    v = static_cast<std::int64_t>(u);
    return true;
  }
  // Reads a u32 length prefix and that many bytes; fails if longer than max_len or the input.
  bool str(std::string& s, std::size_t max_len) {
    std::uint32_t n = 0;
    if (!u32(n)) return false;
    if (n > max_len || n > remaining()) return fail();
    s.assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return true;
  }
  std::size_t remaining() const { return ok_ ? in_.size() - pos_ : 0; }
  bool ok() const { return ok_; }
  // True when everything was read and nothing is left over.
  bool done() const { return ok_ && pos_ == in_.size(); }

 private:
  bool fail() {
    ok_ = false;
    return false;
  }
  template <typename T>
  bool getLe(T& v) {
    if (!ok_ || in_.size() - pos_ < sizeof(T)) return fail();
    T out = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i)
      out |= static_cast<T>(static_cast<T>(in_[pos_ + i]) << (8 * i));
    pos_ += sizeof(T);
    v = out;
    return true;
  }
  ByteSpan in_;
  std::size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace loco
