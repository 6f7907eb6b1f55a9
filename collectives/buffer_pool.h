#pragma once
// Large buffers (receive buffers, encodings, backups) reused across operations: allocating 64 MiB
// per operation costs page faults on every call (measured: a third of the all-reduce time at
// 64 MiB). Buffers are never zero-filled. Bounded, so an idle communicator holds at most a few
// spare buffers. Thread-safe.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "p2p/base/bytes.h"

namespace loco::collectives {

// An uninitialized byte buffer of a fixed size (up to its capacity).
class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&& o) noexcept
      : data_(std::move(o.data_)),
        capacity_(std::exchange(o.capacity_, 0)),
        size_(std::exchange(o.size_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    data_ = std::move(o.data_);
    capacity_ = std::exchange(o.capacity_, 0);
    size_ = std::exchange(o.size_, 0);
    return *this;
  }
  std::uint8_t* data() { return data_.get(); }
  const std::uint8_t* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  std::size_t capacity() const { return capacity_; }
  bool empty() const { return size_ == 0; }
  // Changes the size within the capacity (no reallocation, contents kept).
  void resize(std::size_t n) { size_ = n <= capacity_ ? n : capacity_; }
  MutableByteSpan span() { return {data_.get(), size_}; }
  ByteSpan span() const { return {data_.get(), size_}; }
  float* floats() { return reinterpret_cast<float*>(data_.get()); }
  const float* floats() const { return reinterpret_cast<const float*>(data_.get()); }

 private:
  friend class BufferPool;
  std::unique_ptr<std::uint8_t[]> data_;
  std::size_t capacity_ = 0;
  std::size_t size_ = 0;
};

class BufferPool {
 public:
  // A buffer of exactly `bytes` bytes, contents unspecified. Aligned for floats.
  Buffer take(std::size_t bytes);
  void give(Buffer&& b);

 private:
  static constexpr std::size_t kMaxSpare = 32;
  std::mutex mu_;
  std::vector<Buffer> spare_;  // largest first
};

}  // namespace loco::collectives
