#include "collectives/buffer_pool.h"

#include <algorithm>

namespace loco::collectives {

Buffer BufferPool::take(std::size_t bytes) {
  {
    std::lock_guard lock(mu_);
    // The smallest spare that fits: handing a small request the resident buffer of a large
    // operation would leave the next large one to be allocated anew.
    for (auto it = spare_.rbegin(); it != spare_.rend(); ++it) {
      if (it->capacity_ >= bytes) {
        Buffer b = std::move(*it);
        spare_.erase(std::next(it).base());
        b.size_ = bytes;
        return b;
      }
    }
  }
  Buffer b;
  b.data_ = std::make_unique_for_overwrite<std::uint8_t[]>(std::max<std::size_t>(bytes, 1));
  b.capacity_ = bytes;
  b.size_ = bytes;
  return b;
}

void BufferPool::give(Buffer&& b) {
  if (b.capacity_ == 0) return;
  Buffer spare = std::move(b);
  std::lock_guard lock(mu_);
  spare_.push_back(std::move(spare));
  std::sort(spare_.begin(), spare_.end(),
            [](const Buffer& x, const Buffer& y) { return x.capacity_ > y.capacity_; });
  if (spare_.size() > kMaxSpare) spare_.resize(kMaxSpare);
}

}  // namespace loco::collectives
