#include <gtest/gtest.h>

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

}  // namespace
}  // namespace loco::collectives
