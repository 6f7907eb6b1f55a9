// The Gloo baseline of `loco bench allreduce --baseline gloo`, driven the way Gloo's users drive
// it (torch.distributed's gloo backend): one TCP device, a context connected once over a
// FileStore, gloo::allreduce with AllreduceOptions on the output buffer in place, summing with
// gloo::sum, and only the call timed. Kept in its own translation unit so Gloo's headers touch
// nothing else.
//
// Algorithms: gloo::allreduce exposes RING and BCUBE in Debian's Gloo (0.0~git20220518); the
// classic halving-doubling and chunked-ring classes are still in the library, and at small sizes
// (halving-doubling) or on long-fat links (chunked ring) they can beat both, so "auto" times
// every one of them on the same context and reports the fastest. Gloo's classic AllreduceRing is
// not offered: it passes the whole buffer around the ring N-1 times and reduces it in one piece
// without overlapping the network, so at N = 4 it moves twice the bytes of a reduce-scatter ring
// and took 2.7x as long as gloo::allreduce's ring; it was this baseline until that was measured.
#include <gloo/allreduce.h>
#include <gloo/allreduce_halving_doubling.h>
#include <gloo/allreduce_ring_chunked.h>
#include <gloo/barrier.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <vector>

#include "cli/bench_gloo.h"
#include "cli/commands.h"

namespace loco::cli {
namespace {

// Gloo's own operations time out after this (its context default, 30 s, is shorter than one
// 64 MiB all-reduce on a 10 Mbit/s lab link); the bench's parent kills workers after 10 minutes.
constexpr std::chrono::minutes kGlooTimeout{10};

// The slowest rank's time per iteration, the same on every rank (so every rank picks the same
// algorithm), and its median.
double agreedP50(const std::shared_ptr<gloo::Context>& context, std::vector<double> times_ms) {
  gloo::AllreduceOptions o(context);
  o.setOutput(times_ms.data(), times_ms.size());
  o.setReduceFunction(
      static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::max<double>));
  gloo::allreduce(o);
  std::sort(times_ms.begin(), times_ms.end());
  return times_ms[times_ms.size() / 2];
}

// One algorithm, set up once on `buf`; run() all-reduces (sums) buf in place.
std::function<void()> prepare(const std::string& algo,
                              const std::shared_ptr<gloo::Context>& context, float* buf,
                              std::size_t n) {
  if (algo == "ring" || algo == "bcube") {
    auto o = std::make_shared<gloo::AllreduceOptions>(context);
    o->setAlgorithm(algo == "ring" ? gloo::AllreduceOptions::Algorithm::RING
                                   : gloo::AllreduceOptions::Algorithm::BCUBE);
    o->setOutput(buf, n);
    o->setReduceFunction(
        static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    return [o] { gloo::allreduce(*o); };
  }
  std::shared_ptr<gloo::Algorithm> a;
  if (algo == "halving-doubling")
    a = std::make_shared<gloo::AllreduceHalvingDoubling<float>>(context, std::vector<float*>{buf},
                                                                static_cast<int>(n));
  else
    a = std::make_shared<gloo::AllreduceRingChunked<float>>(context, std::vector<float*>{buf},
                                                            static_cast<int>(n));
  return [a] { a->run(); };
}

}  // namespace

Result<GlooRun> glooAllReduce(int rank, int size, const std::string& hostname,
                              const std::string& store_dir, const std::string& algo,
                              const std::vector<float>& input, std::vector<float>& buf, int iters) {
  // The classic classes count elements and bytes in int.
  const bool classic_fits = input.size() * sizeof(float) <= static_cast<std::size_t>(INT_MAX);
  std::vector<std::string> algos;
  if (algo == "auto") {
    for (std::string_view a : kGlooAlgorithms)
      if (classic_fits || a == "ring" || a == "bcube") algos.emplace_back(a);
  } else if (std::find(kGlooAlgorithms.begin(), kGlooAlgorithms.end(), algo) !=
             kGlooAlgorithms.end()) {
    if (!classic_fits && algo != "ring" && algo != "bcube")
      return Status(StatusCode::kInvalidArgument, "gloo: " + algo + " takes at most 2 GiB");
    algos.push_back(algo);
  } else {
    return Status(
        StatusCode::kInvalidArgument,
        "gloo: --baseline-algo takes ring, bcube, halving-doubling, ring-chunked or auto");
  }
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    gloo::rendezvous::FileStore store(store_dir);
    auto context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    context->setTimeout(kGlooTimeout);
    context->connectFullMesh(store, device);
    // One barrier, set up once like everything else. Barrier options made and dropped around
    // each barrier stalled the all-reduce that followed by ~3.4 ms (4 KiB, N = 4: bcube p50
    // 3.9 ms instead of 0.5 ms; times in multiples of ~3.9 ms).
    gloo::BarrierOptions barrier_options(context);
    auto barrier = [&] { gloo::barrier(barrier_options); };
    GlooRun out;
    double best = 0;
    std::function<void()> best_run;
    for (const auto& a : algos) {
      std::function<void()> run = prepare(a, context, buf.data(), buf.size());
      std::vector<double> times_ms;
      double cpu_ms = 0;
      for (int it = -1; it < iters; ++it) {  // -1 warms up
        // Every call starts from the inputs, at the same moment everywhere; neither is timed.
        std::memcpy(buf.data(), input.data(), input.size() * sizeof(float));
        barrier();
        const double cpu0 = processCpuMs();
        const auto t0 = std::chrono::steady_clock::now();
        run();
        if (it >= 0) {
          times_ms.push_back(
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                  .count());
          cpu_ms += processCpuMs() - cpu0;
        }
      }
      const double p50 = algos.size() > 1 ? agreedP50(context, times_ms) : 0;
      out.candidates_p50_ms.emplace_back(a, p50);
      if (out.algo.empty() || p50 < best) {
        best = p50;
        out.algo = a;
        out.times_ms = times_ms;
        out.cpu_ms = cpu_ms / iters;
        best_run = run;
      }
    }
    if (algos.size() > 1) {
      // The result reported is the fastest algorithm's: run it once more on the inputs.
      std::memcpy(buf.data(), input.data(), input.size() * sizeof(float));
      barrier();
      best_run();
    } else {
      out.candidates_p50_ms.clear();
    }
    for (float& x : buf) x /= static_cast<float>(size);  // sum -> avg, as loco's run computes
    barrier();
    return out;
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, std::string("gloo: ") + e.what());
  }
}

}  // namespace loco::cli
