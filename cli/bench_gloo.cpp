// The Gloo baseline of `loco bench allreduce --baseline gloo`: gloo::allreduce with the ring
// algorithm (the path torch.distributed's gloo backend takes) over Gloo's TCP transport, on the
// same inputs and hosts as loco's run. Kept in its own
// translation unit so Gloo's headers touch nothing else.
#include <gloo/allreduce.h>
#include <gloo/math.h>
#include <gloo/barrier_all_to_all.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <vector>

#include "p2p/base/status.h"

namespace loco::cli {

Status glooAllReduce(int rank, int size, const std::string& hostname, const std::string& store_dir,
                     const std::vector<float>& input, std::vector<float>& buf, int iters, std::vector<double>& times_ms) {
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    gloo::rendezvous::FileStore store(store_dir);
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    context->connectFullMesh(store, device);
    gloo::BarrierAllToAll barrier(context);
    std::vector<float> out(buf.size());
    for (int it = -1; it < iters; ++it) {  // -1 warms up
      std::memcpy(buf.data(), input.data(), input.size() * sizeof(float));
      barrier.run();
      auto t0 = std::chrono::steady_clock::now();
      gloo::AllreduceOptions opts(context);
      opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
      opts.setInput(buf.data(), buf.size());
      opts.setOutput(out.data(), out.size());
      opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
      gloo::allreduce(opts);
      if (it >= 0) times_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = out[i] / static_cast<float>(size);  // sum -> avg, like loco's run
    barrier.run();
    return Status();
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, std::string("gloo: ") + e.what());
  }
}

}  // namespace loco::cli
