// The Gloo baseline of `loco bench allreduce --baseline gloo`: Gloo's classic ring all-reduce
// (gloo::AllreduceRing) over its TCP transport, on the same inputs and hosts as loco's run.
// gloo::allreduce with the RING algorithm measured about 10x slower here (64 MiB, 2 peers:
// 0.094 GB/s), so the faster of Gloo's rings is the baseline. Kept in its own
// translation unit so Gloo's headers touch nothing else.
#include <gloo/allreduce_ring.h>
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
                     const std::vector<float>& input, std::vector<float>& buf, int iters,
                     std::vector<double>& times_ms) {
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    gloo::rendezvous::FileStore store(store_dir);
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    context->connectFullMesh(store, device);
    gloo::AllreduceRing<float> ring(context, {buf.data()}, static_cast<int>(buf.size()));
    gloo::BarrierAllToAll barrier(context);
    for (int it = -1; it < iters; ++it) {  // -1 warms up
      std::memcpy(buf.data(), input.data(), input.size() * sizeof(float));
      barrier.run();
      auto t0 = std::chrono::steady_clock::now();
      ring.run();
      if (it >= 0)
        times_ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
    }
    for (float& x : buf) x /= static_cast<float>(size);  // sum -> avg, as loco's run computes
    barrier.run();
    return Status();
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, std::string("gloo: ") + e.what());
  }
}

}  // namespace loco::cli
