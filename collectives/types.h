#pragma once
// Element types and reductions shared by the collectives and shared state.

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace loco::collectives {

// In-memory element types. All-reduce takes f32, f16 and bf16 (accumulating in fp32); shared
// state takes every type (its buffers are hashed and copied, never reduced).
enum class DType : std::uint8_t {
  kF32 = 1,
  kF16 = 2,
  kBF16 = 3,
  kF64 = 4,
  kI32 = 5,
  kI64 = 6,
  kU8 = 7
};
// 0 for a value outside the enum (bytes from the wire).
std::size_t dtypeSize(DType d);
std::string_view dtypeName(DType d);

enum class ReduceOp : std::uint8_t { kSum, kAvg, kMin, kMax };
std::string_view reduceOpName(ReduceOp op);

}  // namespace loco::collectives
