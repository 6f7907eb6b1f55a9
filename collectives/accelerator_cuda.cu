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

__global__ void addKernel(float* dst, const float* src, std::size_t n) {
  std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (; i < n; i += stride) dst[i] += src[i];
}

bool addInPlace(float* dst, const float* src, std::size_t n) {
  float* d_dst = nullptr;
  float* d_src = nullptr;
  const std::size_t bytes = n * sizeof(float);
  bool ok = cudaMalloc(&d_dst, bytes) == cudaSuccess && cudaMalloc(&d_src, bytes) == cudaSuccess &&
            cudaMemcpy(d_dst, dst, bytes, cudaMemcpyHostToDevice) == cudaSuccess &&
            cudaMemcpy(d_src, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess;
  if (ok) {
    addKernel<<<256, 256>>>(d_dst, d_src, n);
    ok = cudaGetLastError() == cudaSuccess &&
         cudaMemcpy(dst, d_dst, bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
  }
  cudaFree(d_dst);
  cudaFree(d_src);
  return ok;
}

}  // namespace loco::collectives::cuda
