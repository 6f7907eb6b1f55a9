#include "collectives/shared_state.h"

#include <fmt/format.h>
#include <xxhash.h>

#include <algorithm>

#include "p2p/messages.h"

namespace loco::collectives {

namespace {
constexpr std::uint32_t kMinChunkBytes = 1024;
constexpr std::uint32_t kMaxChunkBytes = 64u << 20;

std::uint64_t hashBytes(const std::uint8_t* data, std::size_t len) {
  return XXH3_64bits(data, len);
}
}  // namespace

// ---- SharedState
// -----------------------------------------------------------------------------------

SharedState::SharedState(std::uint32_t chunk_bytes) : chunk_bytes_(chunk_bytes) {}

Status SharedState::add(std::string name, DType dtype, void* data, std::size_t count) {
  if (chunk_bytes_ < kMinChunkBytes || chunk_bytes_ > kMaxChunkBytes) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("shared-state chunk size {} is outside [{}, {}] bytes", chunk_bytes_,
                              kMinChunkBytes, kMaxChunkBytes));
  }
  if (name.empty() || name.size() > p2p::kMaxStateNameLen) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("shared-state buffer name must be 1 to {} bytes long", p2p::kMaxStateNameLen));
  }
  if (dtypeSize(dtype) == 0)
    return Status(StatusCode::kInvalidArgument, "unknown shared-state dtype");
  if (data == nullptr && count > 0) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("shared-state buffer '{}' has no memory", name));
  }
  for (const Entry& b : buffers_) {
    if (b.name == name) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("shared-state buffer '{}' is registered twice", name));
    }
  }
  if (buffers_.size() >= p2p::kMaxStateBuffers) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("more than {} shared-state buffers", p2p::kMaxStateBuffers));
  }
  const std::size_t extra = (count * dtypeSize(dtype) + chunk_bytes_ - 1) / chunk_bytes_;
  if (chunks() + extra > p2p::kMaxStateChunks) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("shared state would have more than {} chunks; raise the chunk size",
                              p2p::kMaxStateChunks));
  }
  buffers_.push_back(Entry{std::move(name), dtype, static_cast<std::uint8_t*>(data), count});
  return Status();
}

std::size_t SharedState::bytes() const {
  std::size_t n = 0;
  for (const Entry& b : buffers_) n += b.bytes();
  return n;
}

std::size_t SharedState::chunks() const {
  std::size_t n = 0;
  for (const Entry& b : buffers_) n += (b.bytes() + chunk_bytes_ - 1) / chunk_bytes_;
  return n;
}

std::vector<std::uint64_t> SharedState::chunkHashes() const {
  std::vector<std::uint64_t> out;
  out.reserve(chunks());
  for (const Entry& b : buffers_) {
    for (std::size_t off = 0; off < b.bytes(); off += chunk_bytes_) {
      out.push_back(hashBytes(b.data + off, std::min<std::size_t>(chunk_bytes_, b.bytes() - off)));
    }
  }
  return out;
}

std::uint64_t SharedState::digest() const {
  auto h = chunkHashes();
  return XXH3_64bits(h.data(), h.size() * sizeof(std::uint64_t));
}

}  // namespace loco::collectives
