#pragma once
// Which accelerator this process may use. The CUDA probe is compiled only with -DLOCO_CUDA=ON;
// without it, or without a device or driver at run time, everything runs on the CPU (reductions
// always do: a ring's pieces are too small to pay for the copies to a device and back).
// Thread-safe; the probe runs once.

#include <cstddef>
#include <string>

namespace loco::collectives {

struct AcceleratorInfo {
  bool cuda_compiled = false;   // built with LOCO_CUDA
  bool cuda_available = false;  // a device answered at run time
  std::string description;      // "CPU (built without CUDA)", "CUDA: NVIDIA H100 ...", ...
};

const AcceleratorInfo& accelerator();

}  // namespace loco::collectives
