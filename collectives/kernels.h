#pragma once
// The element-wise loops reductions spend their time in, compiled with -O3 (CMakeLists.txt) so
// that they vectorize; -O2 leaves loops that need alias checks scalar. `dst` and `src` never
// overlap.

#include <cstddef>

namespace loco::collectives {

void addInto(float* dst, const float* src, std::size_t n);  // dst += src
void minInto(float* dst, const float* src, std::size_t n);
void maxInto(float* dst, const float* src, std::size_t n);
// dst = (dst + src) / divisor, in one pass. Division, or for a power of two a multiplication by
// its reciprocal, which gives the same bits.
void addDivideInto(float* dst, const float* src, std::size_t n, std::size_t divisor);
void divideBy(float* dst, std::size_t n, std::size_t divisor);
// memcpy for a destination that is not read again soon (a backup): non-temporal stores skip
// reading the destination into the cache first, a third of a plain copy's memory traffic.
// Fenced: the bytes are visible to other threads once it returns. `dst` is 16-byte aligned.
void copyStreaming(void* dst, const void* src, std::size_t bytes);

}  // namespace loco::collectives
