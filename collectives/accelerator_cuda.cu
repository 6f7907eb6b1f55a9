// CUDA side of accelerator.h; compiled only with -DLOCO_CUDA=ON.
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace loco::collectives::cuda {

bool probe(std::string& description) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    // Error 35 (insufficient driver) is what a machine without a GPU driver returns.
    description = std::string("CPU (CUDA compiled, no device: ") +
                  (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices") + ")";
    cudaGetLastError();  // clear the sticky error
    return false;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  description = std::string("CUDA: ") + prop.name;
  return true;
}

}  // namespace loco::collectives::cuda
