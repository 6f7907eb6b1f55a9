#include "collectives/kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

void copyStreaming(void* dst, const void* src, std::size_t bytes) {
#if defined(__SSE2__)
  auto* d = static_cast<__m128i*>(dst);
  const auto* s = static_cast<const __m128i*>(src);
  const std::size_t vecs = bytes / 16;
  for (std::size_t i = 0; i < vecs; ++i) _mm_stream_si128(d + i, _mm_loadu_si128(s + i));
  std::memcpy(static_cast<std::uint8_t*>(dst) + vecs * 16,
              static_cast<const std::uint8_t*>(src) + vecs * 16, bytes - vecs * 16);
  _mm_sfence();  // streaming stores are weakly ordered
#else
  std::memcpy(dst, src, bytes);
#endif
}

}  // namespace loco::collectives
