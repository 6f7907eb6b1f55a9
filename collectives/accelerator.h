#pragma once
// Which accelerator this process may use for reductions. CUDA kernels are compiled only with
// -DLOCO_CUDA=ON; without them, or without a device or driver at run time, everything runs on
// the CPU. Thread-safe; the probe runs once.

#include <cstddef>
#include <string>

namespace loco::collectives {

struct AcceleratorInfo {
  bool cuda_compiled = false;   // built with LOCO_CUDA
  bool cuda_available = false;  // a device answered at run time
  std::string description;      // "CPU (built without CUDA)", "CUDA: NVIDIA H100 ...", ...
};

const AcceleratorInfo& accelerator();

// dst[i] += src[i], on the device when one is available, else on the CPU.
void addInPlace(float* dst, const float* src, std::size_t n);

}  // namespace loco::collectives
