// `loco local`: a coordinator and N peers as separate processes on this machine, supervised with
// libuv, with a live view of the membership. Until training lands the scenario is: all peers
// join, one leaves, then everyone stops; every process must exit cleanly.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "cli/commands.h"
#include "cli/lab/net.h"
#include "crypto/identity.h"
#include "p2p/status_client.h"

namespace loco::cli {
namespace {

struct Child {
  std::string name;
  std::string peer_id;  // empty for the coordinator
  uv_process_t proc{};
  bool started = false;
  bool running = false;
  std::int64_t exit_status = -1;
  int term_signal = 0;
  bool expected_exit = false;
};

enum class Phase { kStartCoordinator, kWaitAdmitted, kHold, kWaitLeave, kStopPeers, kStopCoordinator, kDone };

struct Swarm {
  uv_loop_t loop{};
  uv_timer_t timer{};
  uv_signal_t sigint{}, sigterm{};
  std::string exe, out_dir;
  int peers = 4;
  Millis hold{2000};
  Millis deadline_after{60000};
  TimePoint started = Clock::now();
  TimePoint phase_since = Clock::now();
  Phase phase = Phase::kStartCoordinator;
  std::vector<std::unique_ptr<Child>> children;  // [0] coordinator, then peers
  std::uint16_t port = 0;
  std::string last_view;
  std::string failure;
  bool interrupted = false;
  std::string log_level = "info";
  std::optional<lab::LabConfig> lab;  // --lab: processes live in the lab's hosts

  // Host for process `index` (0: coordinator, then peers), and how to reach it.
  int hostOf(std::size_t index) const { return lab ? static_cast<int>(index % lab->hosts) + 1 : 0; }
  std::string addressOf(std::size_t index) const { return lab ? lab->address(hostOf(index)) : "127.0.0.1"; }

  double elapsed() const { return std::chrono::duration<double>(Clock::now() - started).count(); }
  void say(const std::string& msg) {
    std::printf("[%6.2fs] %s\n", elapsed(), msg.c_str());
    std::fflush(stdout);
  }
  void setPhase(Phase p) {
    phase = p;
    phase_since = Clock::now();
  }
};

void onExit(uv_process_t* proc, int64_t exit_status, int term_signal) {
  auto* child = static_cast<Child*>(proc->data);
  child->running = false;
  child->exit_status = exit_status;
  child->term_signal = term_signal;
  uv_close(reinterpret_cast<uv_handle_t*>(proc), nullptr);
}

Status spawn(Swarm& s, Child& child, std::size_t index, const std::vector<std::string>& args) {
  std::string log_path = fmt::format("{}/{}.log", s.out_dir, child.name);
  int fd = ::open(log_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return Status(StatusCode::kIoError, fmt::format("cannot create {}", log_path));
  std::vector<std::string> full;
  if (s.lab) full = lab::inHost(*s.lab, s.hostOf(index));
  full.push_back(s.exe);
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = fd;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = fd;
  uv_process_options_t opts{};
  opts.file = full[0].c_str();
  opts.args = argv.data();
  opts.exit_cb = onExit;
  opts.stdio = stdio;
  opts.stdio_count = 3;
  child.proc.data = &child;
  int rc = uv_spawn(&s.loop, &child.proc, &opts);
  ::close(fd);
  if (rc != 0) return Status(StatusCode::kIoError, fmt::format("cannot start {}: {}", child.name, uv_strerror(rc)));
  child.started = child.running = true;
  return Status();
}

void signalChild(Child& c, int sig) {
  if (c.running) uv_process_kill(&c.proc, sig);
}

bool anyRunning(const Swarm& s, std::size_t from = 0) {
  for (std::size_t i = from; i < s.children.size(); ++i) {
    if (s.children[i]->running) return true;
  }
  return false;
}

void beginShutdown(Swarm& s, const std::string& why) {
  if (s.phase == Phase::kStopPeers || s.phase == Phase::kStopCoordinator || s.phase == Phase::kDone) return;
  if (!why.empty()) s.say(why);
  for (std::size_t i = 1; i < s.children.size(); ++i) {
    s.children[i]->expected_exit = true;
    signalChild(*s.children[i], SIGTERM);
  }
  s.setPhase(Phase::kStopPeers);
}

std::string viewLine(const p2p::GroupView& v, const Swarm& s) {
  std::string ids;
  for (const auto& p : v.peers) {
    std::string label = p.id.substr(0, 8);
    for (std::size_t i = 1; i < s.children.size(); ++i) {
      if (s.children[i]->peer_id == p.id) label = s.children[i]->name;
    }
    ids += " " + label + (p.state == p2p::PeerState::kPending ? "(pending)" : "");
  }
  return fmt::format("epoch {:>2}  world {}  pending {}  |{}", v.epoch, v.world(), v.pending(), ids);
}

void tick(Swarm& s) {
  auto since = Clock::now() - s.phase_since;
  Child& coord = *s.children[0];
  if (s.phase != Phase::kDone && Clock::now() - s.started > s.deadline_after) {
    s.failure = fmt::format("the scenario did not finish within {} ms", s.deadline_after.count());
    for (auto& c : s.children) signalChild(*c, SIGKILL);
    s.setPhase(Phase::kDone);
  }
  // Unexpected deaths end the run.
  for (auto& c : s.children) {
    if (c->started && !c->running && !c->expected_exit && s.failure.empty()) {
      s.failure = fmt::format("{} exited unexpectedly (status {}, signal {}); see {}/{}.log", c->name, c->exit_status,
                              c->term_signal, s.out_dir, c->name);
      c->expected_exit = true;
      beginShutdown(s, s.failure);
    }
  }
  std::optional<p2p::GroupView> view;
  if (s.port != 0 && coord.running) {
    auto v = p2p::fetchStatus({s.addressOf(0), s.port}, Deadline::after(Millis(500)));
    if (v) {
      view = std::move(v.value());
      std::string line = viewLine(*view, s);
      if (line != s.last_view) {
        s.say(line);
        s.last_view = line;
      }
    }
  }
  switch (s.phase) {
    case Phase::kStartCoordinator: {
      std::ifstream f(s.out_dir + "/coordinator.port");
      int port = 0;
      if (f >> port && port > 0) {
        s.port = static_cast<std::uint16_t>(port);
        s.say(fmt::format("coordinator listening on {}:{}; starting {} peers", s.addressOf(0), port, s.peers));
        for (std::size_t i = 1; i < s.children.size(); ++i) {
          Child& c = *s.children[i];
          Status st = spawn(s, c, i, {"join", "--idle", "--coordinator", fmt::format("{}:{}", s.addressOf(0), port),
                                      "--listen", s.addressOf(i) + ":0", "--identity",
                                      fmt::format("{}/{}.id", s.out_dir, c.name), "--log-level", s.log_level});
          if (!st.isOk()) {
            s.failure = st.message();
            return beginShutdown(s, s.failure);
          }
        }
        s.setPhase(Phase::kWaitAdmitted);
      } else if (since > Millis(10000)) {
        s.failure = "the coordinator did not start listening within 10 s";
        beginShutdown(s, s.failure);
      }
      break;
    }
    case Phase::kWaitAdmitted:
      if (view && view->world() == static_cast<std::size_t>(s.peers) && view->pending() == 0) {
        s.say(fmt::format("all {} peers admitted; holding {} ms", s.peers, s.hold.count()));
        s.setPhase(Phase::kHold);
      }
      break;
    case Phase::kHold:
      if (since >= s.hold) {
        Child& leaver = *s.children.back();
        leaver.expected_exit = true;
        s.say(fmt::format("{} leaves (SIGTERM)", leaver.name));
        signalChild(leaver, SIGTERM);
        s.setPhase(Phase::kWaitLeave);
      }
      break;
    case Phase::kWaitLeave:
      if (!s.children.back()->running && view && view->world() == static_cast<std::size_t>(s.peers - 1) &&
          since >= Millis(1000)) {
        beginShutdown(s, "stopping the remaining peers (SIGTERM)");
      }
      break;
    case Phase::kStopPeers:
      if (!anyRunning(s, 1)) {
        s.say("all peers exited; stopping the coordinator (SIGTERM)");
        coord.expected_exit = true;
        signalChild(coord, SIGTERM);
        s.setPhase(Phase::kStopCoordinator);
      } else if (since > Millis(5000)) {
        s.say("peers did not stop within 5 s; killing them");
        for (std::size_t i = 1; i < s.children.size(); ++i) signalChild(*s.children[i], SIGKILL);
      }
      break;
    case Phase::kStopCoordinator:
      if (!coord.running) {
        s.setPhase(Phase::kDone);
      } else if (since > Millis(5000)) {
        signalChild(coord, SIGKILL);
      }
      break;
    case Phase::kDone:
      break;
  }
  if (s.phase == Phase::kDone && !anyRunning(s)) {
    uv_timer_stop(&s.timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.timer), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.sigint), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.sigterm), nullptr);
  }
}

void onSignal(uv_signal_t* h, int sig) {
  auto* s = static_cast<Swarm*>(h->data);
  s->interrupted = true;
  beginShutdown(*s, fmt::format("signal {}: stopping every process", sig));
}

}  // namespace

int runLocal(const Args& args) {
  Flags flags("local", "start a coordinator and N peers on this machine and watch them",
              {{"peers", "number of peers", "4"},
               {"out", "directory for logs and identities", "loco-local"},
               {"hold-ms", "ms to keep the full group before one peer leaves", "2000"},
               {"timeout-ms", "give up (and kill everything) after this long", "60000"},
               {"lab", "place the coordinator in host 1 and the peers round-robin in this lab's hosts", ""}});
  if (int rc = parseAndSetUp(flags, args, "local"); rc >= 0) return rc;
  auto peers = flags.getInt("peers", 2, 64);
  auto hold = flags.getInt("hold-ms", 0, 3600000);
  auto timeout = flags.getInt("timeout-ms", 1000, 86400000);
  for (const auto* r : {&peers, &hold, &timeout}) {
    if (!*r) return reportFailure(r->status());
  }
  Swarm s;
  if (flags.isSet("lab")) {
    auto cfg = lab::loadLab(flags.get("lab"));
    if (!cfg) return reportFailure(cfg.status());
    // This process watches from host 1, where the coordinator lives (before any thread starts).
    if (Status st = lab::enterHost(*cfg, 1); !st.isOk()) return reportFailure(st);
    s.lab = std::move(cfg.value());
  }
  s.exe = selfExecutable();
  s.out_dir = flags.get("out");
  s.peers = static_cast<int>(*peers);
  s.hold = Millis(*hold);
  s.deadline_after = Millis(*timeout);
  s.log_level = flags.get("log-level");
  if (::mkdir(s.out_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return reportFailure(Status(StatusCode::kIoError, fmt::format("cannot create --out directory {}", s.out_dir)));
  }
  ::unlink((s.out_dir + "/coordinator.port").c_str());

  s.children.push_back(std::make_unique<Child>(Child{"coordinator"}));
  for (int i = 1; i <= s.peers; ++i) {
    auto c = std::make_unique<Child>();
    c->name = fmt::format("peer-{}", i);
    auto ident = crypto::loadOrCreateIdentity(fmt::format("{}/{}.id", s.out_dir, c->name));
    if (!ident) return reportFailure(ident.status());
    c->peer_id = ident->id;
    s.children.push_back(std::move(c));
  }

  uv_loop_init(&s.loop);
  uv_timer_init(&s.loop, &s.timer);
  s.timer.data = &s;
  uv_signal_init(&s.loop, &s.sigint);
  uv_signal_init(&s.loop, &s.sigterm);
  s.sigint.data = s.sigterm.data = &s;
  uv_signal_start(&s.sigint, onSignal, SIGINT);
  uv_signal_start(&s.sigterm, onSignal, SIGTERM);

  s.say(fmt::format("local swarm: 1 coordinator + {} peers{}, logs in {}/", s.peers,
                    s.lab ? fmt::format(" in lab {} ({} hosts)", s.lab->name, s.lab->hosts) : "", s.out_dir));
  Status st = spawn(s, *s.children[0], 0,
                    {"coordinator", "--listen", s.addressOf(0) + ":0", "--port-file", s.out_dir + "/coordinator.port",
                     "--heartbeat-interval", "250", "--heartbeat-timeout", "2000", "--log-level", s.log_level});
  if (!st.isOk()) return reportFailure(st);
  uv_timer_start(&s.timer, [](uv_timer_t* t) { tick(*static_cast<Swarm*>(t->data)); }, 0, 200);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  uv_loop_close(&s.loop);

  std::printf("\nsummary:\n");
  bool clean = s.failure.empty() && !s.interrupted;
  for (auto& c : s.children) {
    bool ok = c->exit_status == 0 && c->term_signal == 0;
    clean = clean && ok;
    std::printf("  %-12s %s\n", c->name.c_str(),
                ok ? "exited cleanly (status 0)"
                   : fmt::format("exit status {}, signal {}", c->exit_status, c->term_signal).c_str());
  }
  if (!s.failure.empty()) std::printf("failure: %s\n", s.failure.c_str());
  std::printf("%s\n", clean ? "all processes exited cleanly" : "the local swarm did not finish cleanly");
  if (s.interrupted) return 130;
  return clean ? 0 : 1;
}

}  // namespace loco::cli
