#include <gtest/gtest.h>

#include <vector>

#include "collectives/accelerator.h"

namespace loco::collectives {
namespace {

TEST(Accelerator, ProbeDescribesWhatRunsAndNeverFails) {
  const AcceleratorInfo& info = accelerator();
  EXPECT_FALSE(info.description.empty());
  if (!info.cuda_compiled) {
    EXPECT_FALSE(info.cuda_available);
  }
  EXPECT_EQ(&accelerator(), &info) << "probed once";
}

// Small buffers stay on the CPU; large ones go to the device when there is one. Either way the
// sums must be exact (these values are exactly representable).
TEST(Accelerator, AddInPlaceIsExactForSmallAndLargeBuffers) {
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1000}, std::size_t{1} << 22}) {
    std::vector<float> dst(n), src(n);
    for (std::size_t i = 0; i < n; ++i) {
      dst[i] = static_cast<float>(i % 1024);
      src[i] = static_cast<float>(i % 7) - 3.0f;
    }
    addInPlace(dst.data(), src.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_EQ(dst[i], static_cast<float>(i % 1024) + static_cast<float>(i % 7) - 3.0f)
          << "n=" << n << " i=" << i;
    }
  }
}

}  // namespace
}  // namespace loco::collectives
