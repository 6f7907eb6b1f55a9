#include "collectives/accelerator.h"

namespace loco::collectives {

#ifdef LOCO_CUDA
namespace cuda {
bool probe(std::string& description);  // accelerator_cuda.cu
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

}  // namespace loco::collectives
