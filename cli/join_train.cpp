// `loco join` without --idle: a training peer. It builds the model and data from the training
// flags, joins the group through a Communicator and runs DDP or DiLoCo (training/distributed.h)
// until the schedule is done or a signal asks it to stop. Every round is logged and, with
// --metrics, appended as one JSON line (what `loco local` reads).
#include <fmt/format.h>
#include <signal.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>

#include "cli/commands.h"
#include "cli/join_train.h"
#include "cli/ops/http_server.h"
#include "cli/ops/run_jsonl.h"
#include "cli/ops/run_metrics.h"
#include "cli/ops/status_json.h"
#include "cli/training_flags.h"
#include "collectives/communicator.h"
#include "p2p/base/log.h"
#include "p2p/base/text.h"
#include "training/calibrate.h"
#include "training/data_assignment.h"
#include "training/local_trainer.h"

namespace loco::cli {
namespace {

std::atomic<bool> g_stop{false};
extern "C" void onStopSignal(int) {
  g_stop.store(true);
}

// What this peer's /api/status shows; written by the training thread, read by HTTP threads.
struct LiveStatus {
  std::mutex mu;
  collectives::Communicator* comm = nullptr;  // while it exists
  std::optional<p2p::PeerReportMsg> last_round;
  double last_round_unix_s = 0;
};

std::map<std::string, ops::HttpHandler> peerRoutes(LiveStatus& live, const TrainingPeerSetup& setup,
                                                   const std::string& coordinator_flag) {
  auto routes = ops::baseRoutes([] { return std::string(); });  // alive while it answers
  routes["/api/status"] = [&live, &setup, coordinator_flag] {
    ops::PeerStatus s;
    s.id = setup.peer_id;
    s.coordinator = coordinator_flag;
    {
      std::lock_guard lock(live.mu);
      if (live.comm == nullptr) {
        s.state = "connecting";
      } else {
        const auto ring = live.comm->ring();
        const bool member = std::find(ring.begin(), ring.end(), setup.peer_id) != ring.end();
        s.state = member ? "member" : "waiting for admission";
        s.epoch = live.comm->epoch();
        s.world = live.comm->world();
      }
      s.last_round = live.last_round;
      s.last_round_unix_s = live.last_round_unix_s;
    }
    return ops::HttpResponse{200, "application/json", ops::peerStatusJson(s, unixSeconds())};
  };
  return routes;
}

}  // namespace

int runTrainingPeer(const Flags& flags, const TrainingPeerSetup& setup) {
  // From the start, so that a peer stopped while it loads its data or reaches the coordinator
  // still ends through its own code (and a fresh identity's key is removed with it); each step
  // below finishes first (connecting is bounded by --connect-timeout).
  struct sigaction sa {};
  sa.sa_handler = onStopSignal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  sigset_t stops;  // held back by `loco join` while it enrolled, across its exec of this binary
  sigemptyset(&stops);
  sigaddset(&stops, SIGINT);
  sigaddset(&stops, SIGTERM);
  ::pthread_sigmask(SIG_UNBLOCK, &stops, nullptr);
  auto stoppedEarly = [] {
    if (g_stop.load()) LOG_INFO(training::kLogTrain, "stopped by a signal before training");
    return g_stop.load();
  };
  auto config = trainingConfigFromFlags(flags);
  if (!config) return reportFailure(config.status());
  auto rank = flags.getInt("rank", 0, 1 << 20);
  auto world_hint = flags.getInt("world-hint", 1, 1 << 20);
  auto wait_for = flags.getInt("wait-for", 1, 4096);
  auto nan_round = flags.getInt("inject-nan-at-round", -1, 1LL << 40);
  for (const auto* r : {&rank, &world_hint, &wait_for, &nan_round}) {
    if (!*r) return reportFailure(r->status());
  }
  auto topology = flags.getOnOff("measure-topology");
  if (!topology) return reportFailure(topology.status());
  config->train.rank = static_cast<std::uint32_t>(*rank);
  config->train.world = static_cast<std::uint32_t>(std::max<std::int64_t>(*world_hint, *rank + 1));
  config->wait_for_world = static_cast<std::size_t>(*wait_for);
  config->inject_nan_at_round = *nan_round;
  // Without --rank every peer draws its own samples (training/data_assignment.h).
  config->derive_data_rank = !flags.isSet("rank");
  if (config->derive_data_rank) config->train.stream = training::streamOf(setup.peer_id);

  // Data and model first: a bad path or shape fails before this peer joins anyone.
  auto trainer = training::LocalTrainer::create(config->train);
  if (!trainer) return reportFailure(trainer.status());
  // Switch mode measures this machine's micro-batch limits before the group waits for it.
  if (Status st = training::calibrateForRun(**trainer, *config); !st.isOk())
    return reportFailure(st);
  if (stoppedEarly()) return 0;
  LOG_INFO(
      training::kLogTrain, "{} peer rank {}: {} parameters, {} steps{}",
      methodDescription(flags, *config), *rank, (*trainer)->numParams(), config->steps,
      config->method != training::Method::kDdp ? fmt::format(", H={}", config->inner_steps) : "");

  std::FILE* metrics = nullptr;
  if (flags.isSet("metrics")) {
    metrics = std::fopen(flags.get("metrics").c_str(), "a");
    if (metrics == nullptr) {
      return reportFailure(Status(StatusCode::kIoError,
                                  fmt::format("cannot open --metrics {}", flags.get("metrics"))));
    }
  }

  LiveStatus live;
  std::unique_ptr<ops::HttpServer> http_server;
  if (setup.http) {
    ops::describeRunMetrics(/*coordinator=*/false);
    auto server = ops::HttpServer::start(
        *setup.http, peerRoutes(live, setup, setup.coordinators.front().toString()));
    if (!server) {
      if (metrics) std::fclose(metrics);
      return reportFailure(server.status());
    }
    http_server = std::move(server.value());
  }

  collectives::CommunicatorOptions o;
  o.coordinator = setup.coordinators.front();
  o.standby_coordinators.assign(setup.coordinators.begin() + 1, setup.coordinators.end());
  o.coordinator_timeout = setup.coordinator_timeout;
  o.peer_id = setup.peer_id;
  o.listen = setup.listen;
  o.advertise = setup.advertise;
  o.relay = setup.relay;
  o.streams = setup.streams;
  o.measure_topology = *topology;
  auto comm = collectives::Communicator::create(o, Deadline::after(setup.connect_timeout));
  if (!comm) {
    if (metrics) std::fclose(metrics);
    if (comm.status().code() == StatusCode::kCompleted) {
      // The group finished the run while this peer was away: nothing to do, and no failure.
      LOG_WARN(training::kLogTrain, "{}; exiting", comm.status().message());
      return 0;
    }
    return reportFailure(comm.status());
  }

  {
    std::lock_guard lock(live.mu);
    live.comm = comm->get();
  }
  double last_round_wall_s = -1;
  const std::string http_addr =
      http_server ? p2p::HostPort{setup.http->host, http_server->port()}.toString() : std::string();
  Status st = training::runDistributed(
      **comm, **trainer, *config, g_stop, [&](const training::RoundRecord& r) {
        const double round_s = last_round_wall_s >= 0 ? r.wall_s - last_round_wall_s : 0;
        last_round_wall_s = r.wall_s;
        p2p::PeerReportMsg report = ops::recordRound(r, round_s, (*comm)->bytesSent());
        report.http = http_addr;
        (*comm)->reportProgress(report);
        {
          std::lock_guard lock(live.mu);
          live.last_round = report;
          live.last_round_unix_s = unixSeconds();
        }
        LOG_INFO(training::kLogTrain,
                 "outer step {} inner step {} world {} loss {:.4f}{} sent {:.1f} MB{}{}",
                 r.outer_step, r.inner_step, r.world, r.train_loss,
                 r.val_loss ? fmt::format(" val {:.4f}", *r.val_loss) : "", r.bytes_sent / 1e6,
                 r.retries ? fmt::format(" after {} retries", r.retries) : "",
                 config->batch.test != training::BatchTest::kNone
                     ? fmt::format(" batch {}", r.batch)
                     : "");
        if (metrics) {
          std::fprintf(
              metrics, "%s\n",
              ops::peerRoundLine(r, r.data_rank, setup.peer_id, ::getpid(), unixSeconds()).c_str());
          std::fflush(metrics);
        }
      });
  if (metrics) std::fclose(metrics);
  Status left = (*comm)->leave(Deadline::after(Millis(2000)));
  if (!left.isOk()) LOG_WARN(kLogPeer, "leave: {}", left.message());
  http_server.reset();  // before the communicator its handlers read goes
  if (!st.isOk()) return reportFailure(st);
  LOG_INFO(training::kLogTrain, "{}", g_stop.load() ? "stopped by a signal" : "training finished");
  return 0;
}

}  // namespace loco::cli
