#include "collectives/accelerator.h"

namespace loco::collectives {

#ifdef LOCO_CUDA
namespace cuda {
bool probe(std::string& description);  // accelerator_cuda.cu
bool addInPlace(float* dst, const float* src, std::size_t n);
}  // namespace cuda
#endif

const AcceleratorInfo& accelerator() {
  static const AcceleratorInfo info = [] {
    AcceleratorInfo i;
#ifdef LOCO_CUDA
    i.cuda_compiled = true;
    i.cuda_available = cuda::probe(i.description);
#else
    i.description = "CPU (built without CUDA)";
#endif
    return i;
  }();
  return info;
}

void addInPlace(float* dst, const float* src, std::size_t n) {
#ifdef LOCO_CUDA
  // Copying to the device costs more than the add for anything this small; the device path is
  // worth it only for large buffers.
  if (n >= (1u << 22) && accelerator().cuda_available && cuda::addInPlace(dst, src, n)) return;
#endif
  for (std::size_t i = 0; i < n; ++i) dst[i] += src[i];
}

}  // namespace loco::collectives
