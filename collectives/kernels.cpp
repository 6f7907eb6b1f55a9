#include "collectives/kernels.h"

#include <algorithm>

namespace loco::collectives {
namespace {
bool powerOfTwo(std::size_t x) {
  return x != 0 && (x & (x - 1)) == 0;
}
}  // namespace

void addInto(float* __restrict dst, const float* __restrict src, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] += src[i];
}

void minInto(float* __restrict dst, const float* __restrict src, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = std::min(dst[i], src[i]);
}

void maxInto(float* __restrict dst, const float* __restrict src, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = std::max(dst[i], src[i]);
}

void addDivideInto(float* __restrict dst, const float* __restrict src, std::size_t n,
                   std::size_t divisor) {
  if (powerOfTwo(divisor)) {
    const float r = 1.0f / static_cast<float>(divisor);  // exact
    for (std::size_t i = 0; i < n; ++i) dst[i] = (dst[i] + src[i]) * r;
    return;
  }
  const float w = static_cast<float>(divisor);
  for (std::size_t i = 0; i < n; ++i) dst[i] = (dst[i] + src[i]) / w;
}

void divideBy(float* __restrict dst, std::size_t n, std::size_t divisor) {
  if (powerOfTwo(divisor)) {
    const float r = 1.0f / static_cast<float>(divisor);
    for (std::size_t i = 0; i < n; ++i) dst[i] *= r;
    return;
  }
  const float w = static_cast<float>(divisor);
  for (std::size_t i = 0; i < n; ++i) dst[i] /= w;
}

}  // namespace loco::collectives
