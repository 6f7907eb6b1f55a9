// `loco local`: a coordinator and N peers as separate processes on this machine (or in a lab's
// hosts), supervised with libuv.
//
// Default: the main job. The peers train the small GPT together (DiLoCo unless told otherwise;
// every training flag is passed on to them); a live line shows each outer step; at the end
// OUT/run.jsonl (one line per outer step), loss plots (SVG) and a summary are written. Peers
// start one after another, so the ring order, and with it every result bit, repeats run to run.
// --kill-at / --join-at kill a peer (SIGKILL) and add one mid-run. Ctrl+C stops every peer.
//
// --idle: the membership demo: all peers join, one leaves, then everyone stops.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>

#include "cli/commands.h"
#include "cli/lab/net.h"
#include "cli/plot.h"
#include "cli/training_flags.h"
#include "crypto/identity.h"
#include "p2p/base/text.h"
#include "p2p/status_client.h"
#include "training/text_data.h"

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

enum class Phase {
  kStartCoordinator,
  kWaitAdmitted,  // --idle
  kHold,
  kWaitLeave,
  kStartPeers,  // training: one peer after another
  kTraining,
  kStopPeers,
  kStopCoordinator,
  kDone
};

// One outer step as the peers reported it (training).
struct StepRecord {
  std::uint64_t inner_step = 0;
  std::size_t world = 0;
  double loss = NAN, val_loss = NAN, bytes_sent = 0, wall_s = 0, tokens_per_s = 0;
  std::uint32_t retries = 0;
  std::map<std::string, std::string> digests;  // peer name -> shared-state digest
};

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
  // Training:
  bool training = false;
  std::vector<std::string> training_args;  // forwarded to every peer
  std::uint64_t total_steps = 0;
  std::size_t next_peer = 1;  // the next child to start (kStartPeers)
  std::int64_t kill_at = -1, join_at = -1;
  bool killed = false, added = false;
  std::map<std::string, std::size_t> metrics_read;  // metrics file -> bytes consumed
  std::map<std::uint64_t, StepRecord> steps;
  std::uint64_t last_shown = 0;
  bool shown_any = false;

  // Host for process `index` (0: coordinator, then peers), and how to reach it.
  int hostOf(std::size_t index) const { return lab ? static_cast<int>(index % lab->hosts) + 1 : 0; }
  std::string addressOf(std::size_t index) const {
    return lab ? lab->address(hostOf(index)) : "127.0.0.1";
  }

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
  if (rc != 0)
    return Status(StatusCode::kIoError,
                  fmt::format("cannot start {}: {}", child.name, uv_strerror(rc)));
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
  if (s.phase == Phase::kStopPeers || s.phase == Phase::kStopCoordinator || s.phase == Phase::kDone)
    return;
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
    std::string label = shortId(p.id);
    for (std::size_t i = 1; i < s.children.size(); ++i) {
      if (s.children[i]->peer_id == p.id) label = s.children[i]->name;
    }
    ids += " " + label + (p.state == p2p::PeerState::kPending ? "(pending)" : "");
  }
  return fmt::format("epoch {:>2}  world {}  pending {}  |{}", v.epoch, v.world(), v.pending(),
                     ids);
}

std::vector<std::string> trainingPeerArgs(const Swarm& s, std::size_t index, bool initial) {
  const Child& c = *s.children[index];
  std::vector<std::string> args{
      "join", "--coordinator", fmt::format("{}:{}", s.addressOf(0), s.port), "--listen",
      s.addressOf(index) + ":0", "--identity", fmt::format("{}/{}.id", s.out_dir, c.name),
      "--log-level", s.log_level, "--rank", std::to_string(index - 1), "--world-hint",
      std::to_string(s.peers), "--wait-for", initial ? std::to_string(s.peers) : "1", "--metrics",
      fmt::format("{}/{}.jsonl", s.out_dir, c.name),
      // On one machine the links say nothing about a WAN; a fixed ring keeps runs repeatable.
      "--measure-topology", s.lab ? "on" : "off"};
  args.insert(args.end(), s.training_args.begin(), s.training_args.end());
  return args;
}

std::optional<double> jsonField(const std::string& line, const std::string& key) {
  static const std::regex number(R"(^-?[0-9.eE+-]+)");
  auto at = line.find("\"" + key + "\":");
  if (at == std::string::npos) return std::nullopt;
  std::string rest = line.substr(at + key.size() + 3);
  std::smatch m;
  if (!std::regex_search(rest, m, number)) return std::nullopt;  // null
  return std::stod(m[0]);
}

std::string jsonString(const std::string& line, const std::string& key) {
  auto at = line.find("\"" + key + "\":\"");
  if (at == std::string::npos) return "";
  auto from = at + key.size() + 4;
  return line.substr(from, line.find('"', from) - from);
}

// Reads what the peers appended to their metrics files since the last tick.
void readMetrics(Swarm& s) {
  for (std::size_t i = 1; i < s.children.size(); ++i) {
    const std::string path = fmt::format("{}/{}.jsonl", s.out_dir, s.children[i]->name);
    std::ifstream in(path);
    if (!in) continue;
    std::size_t& consumed = s.metrics_read[path];
    in.seekg(static_cast<std::streamoff>(consumed));
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // a line still being written
      consumed += line.size() + 1;
      auto step = jsonField(line, "step");
      if (!step) continue;
      StepRecord& r = s.steps[static_cast<std::uint64_t>(*step)];
      r.inner_step = static_cast<std::uint64_t>(jsonField(line, "inner_step").value_or(0));
      r.world = static_cast<std::size_t>(jsonField(line, "world").value_or(0));
      if (auto v = jsonField(line, "loss")) r.loss = *v;
      if (auto v = jsonField(line, "val_loss")) r.val_loss = *v;
      r.bytes_sent = std::max(r.bytes_sent, jsonField(line, "bytes_sent").value_or(0));
      r.wall_s = std::max(r.wall_s, jsonField(line, "wall_s").value_or(0));
      r.tokens_per_s = std::max(r.tokens_per_s, jsonField(line, "tokens_per_s").value_or(0));
      r.retries =
          std::max(r.retries, static_cast<std::uint32_t>(jsonField(line, "retries").value_or(0)));
      r.digests[s.children[i]->name] = jsonString(line, "digest");
    }
  }
}

std::uint64_t innerStepReached(const Swarm& s) {
  return s.steps.empty() ? 0 : s.steps.rbegin()->second.inner_step;
}

// One line per outer step, once the evaluating peer has reported it.
void showProgress(Swarm& s) {
  for (auto& [step, r] : s.steps) {
    if (s.shown_any && step <= s.last_shown) continue;
    if (std::isnan(r.val_loss) && s.steps.rbegin()->first == step && s.phase == Phase::kTraining)
      break;  // wait for the evaluation
    s.say(fmt::format(
        "step {:>4} | inner {:>5}/{} | world {} | loss {} | val {} | {:>6.0f} tok/s/peer | sent "
        "{:8.1f} MB{}",
        step, r.inner_step, s.total_steps, r.world,
        std::isnan(r.loss) ? std::string("  -   ") : fmt::format("{:.4f}", r.loss),
        std::isnan(r.val_loss) ? std::string("  -   ") : fmt::format("{:.4f}", r.val_loss),
        r.tokens_per_s, r.bytes_sent / 1e6,
        r.retries ? fmt::format(" ({} retries)", r.retries) : ""));
    s.last_shown = step;
    s.shown_any = true;
  }
}

void startPeer(Swarm& s, std::size_t index, bool initial) {
  Status st = spawn(s, *s.children[index], index, trainingPeerArgs(s, index, initial));
  if (!st.isOk()) {
    s.failure = st.message();
    beginShutdown(s, s.failure);
  }
}

void tickTraining(Swarm& s, const std::optional<p2p::GroupView>& view) {
  auto since = Clock::now() - s.phase_since;
  if (s.phase == Phase::kStartPeers) {
    if (s.next_peer > static_cast<std::size_t>(s.peers)) {
      s.say(fmt::format("all {} peers started; training ({} inner steps per peer)", s.peers,
                        s.total_steps));
      s.setPhase(Phase::kTraining);
      return;
    }
    // The ring is the order of registration: start the next peer once the previous one is known
    // (the first peers wait for all of them before training, so they are still registered).
    if (s.next_peer == 1 || (view && view->peers.size() >= s.next_peer - 1)) {
      startPeer(s, s.next_peer, true);
      ++s.next_peer;
      s.phase_since = Clock::now();
    } else if (since > Millis(30000)) {
      s.failure = fmt::format("peer-{} did not register within 30 s", s.next_peer - 1);
      beginShutdown(s, s.failure);
    }
    return;
  }
  if (s.phase != Phase::kTraining) return;
  readMetrics(s);
  showProgress(s);
  const std::uint64_t reached = innerStepReached(s);
  if (s.kill_at >= 0 && !s.killed && reached >= static_cast<std::uint64_t>(s.kill_at)) {
    Child& victim = *s.children[static_cast<std::size_t>(s.peers)];
    victim.expected_exit = true;
    s.killed = true;
    s.say(fmt::format("chaos: kill -9 {} at inner step {}", victim.name, reached));
    signalChild(victim, SIGKILL);
  }
  if (s.join_at >= 0 && !s.added && reached >= static_cast<std::uint64_t>(s.join_at)) {
    s.added = true;
    const std::size_t index = s.children.size() - 1;  // prepared in runLocal
    s.say(fmt::format("chaos: {} joins at inner step {}", s.children[index]->name, reached));
    startPeer(s, index, false);
  }
  // The peers leave by themselves when the schedule is done.
  bool any_peer = false;
  for (std::size_t i = 1; i < s.children.size(); ++i) any_peer = any_peer || s.children[i]->running;
  if (!any_peer && s.next_peer > static_cast<std::size_t>(s.peers)) {
    readMetrics(s);
    showProgress(s);
    s.say("all peers finished; stopping the coordinator (SIGTERM)");
    s.children[0]->expected_exit = true;
    signalChild(*s.children[0], SIGTERM);
    s.setPhase(Phase::kStopCoordinator);
  }
}

// run.jsonl, plots and the summary lines of a training run.
void writeTrainingResults(Swarm& s) {
  readMetrics(s);
  std::string jsonl;
  PlotSeries train_vs_step{"train loss", "#1f77b4", {}},
      val_vs_step{"validation loss", "#d62728", {}};
  PlotSeries train_vs_bytes{"train loss", "#1f77b4", {}},
      val_vs_bytes{"validation loss", "#d62728", {}};
  std::size_t disagreements = 0;
  std::optional<double> first_val, last_val;
  double tokens = 0;
  std::size_t token_samples = 0;
  for (const auto& [step, r] : s.steps) {
    std::set<std::string> distinct;
    for (const auto& [peer, d] : r.digests) distinct.insert(d);
    const bool agree = distinct.size() <= 1;
    if (!agree) ++disagreements;
    auto num = [](double v) {
      return std::isfinite(v) ? fmt::format("{:.6f}", v) : std::string("null");
    };
    jsonl += fmt::format(
        R"({{"step":{},"inner_step":{},"world":{},"loss":{},"val_loss":{},"bytes_sent":{:.0f},"wall_s":{:.3f},"retries":{},"peers_reporting":{},"digests_agree":{}}})"
        "\n",
        step, r.inner_step, r.world, num(r.loss), num(r.val_loss), r.bytes_sent, r.wall_s,
        r.retries, r.digests.size(), agree ? "true" : "false");
    train_vs_step.points.emplace_back(static_cast<double>(r.inner_step), r.loss);
    val_vs_step.points.emplace_back(static_cast<double>(r.inner_step), r.val_loss);
    train_vs_bytes.points.emplace_back(r.bytes_sent, r.loss);
    val_vs_bytes.points.emplace_back(r.bytes_sent, r.val_loss);
    if (std::isfinite(r.val_loss)) {
      if (!first_val) first_val = r.val_loss;
      last_val = r.val_loss;
    }
    if (r.tokens_per_s > 0) tokens += r.tokens_per_s, ++token_samples;
  }
  for (Status st :
       {writeFileAtomic(s.out_dir + "/run.jsonl", jsonl),
        writeSvgPlot(s.out_dir + "/loss_vs_steps.svg", "loss against inner steps",
                     "inner steps per peer", "loss (nats/byte)", {train_vs_step, val_vs_step}),
        writeSvgPlot(s.out_dir + "/loss_vs_bytes.svg", "loss against bytes sent",
                     "bytes sent by all peers", "loss (nats/byte)",
                     {train_vs_bytes, val_vs_bytes})}) {
    if (!st.isOk()) s.say("could not write results: " + st.message());
  }
  std::printf("\ntraining: %zu outer steps",
              s.steps.empty() ? 0 : static_cast<std::size_t>(s.steps.rbegin()->first));
  if (first_val && last_val) std::printf(", validation loss %.4f -> %.4f", *first_val, *last_val);
  if (!s.steps.empty())
    std::printf(", %.1f MB sent, %.1f s", s.steps.rbegin()->second.bytes_sent / 1e6, s.elapsed());
  if (token_samples)
    std::printf(", %.0f tokens/s per peer", tokens / static_cast<double>(token_samples));
  std::printf("\nshared-state digests: %s\n",
              disagreements == 0 ? "equal on every reporting peer after every round"
                                 : fmt::format("DIFFERED in {} round(s)", disagreements).c_str());
  std::printf("wrote %s/run.jsonl, %s/loss_vs_steps.svg, %s/loss_vs_bytes.svg\n", s.out_dir.c_str(),
              s.out_dir.c_str(), s.out_dir.c_str());
  if (disagreements != 0 && s.failure.empty()) s.failure = "peers disagreed on the shared state";
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
    if (s.training && c->started && !c->running && c->exit_status == 0 && c->term_signal == 0 &&
        c.get() != &coord) {
      c->expected_exit = true;  // finished its schedule
    }
    if (c->started && !c->running && !c->expected_exit && s.failure.empty()) {
      s.failure = fmt::format("{} exited unexpectedly (status {}, signal {}); see {}/{}.log",
                              c->name, c->exit_status, c->term_signal, s.out_dir, c->name);
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
        s.say(fmt::format("coordinator listening on {}:{}; starting {} peers", s.addressOf(0), port,
                          s.peers));
        if (s.training) {
          s.setPhase(Phase::kStartPeers);
          break;
        }
        for (std::size_t i = 1; i < s.children.size(); ++i) {
          Child& c = *s.children[i];
          Status st =
              spawn(s, c, i,
                    {"join", "--idle", "--coordinator", fmt::format("{}:{}", s.addressOf(0), port),
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
      if (!s.children.back()->running && view &&
          view->world() == static_cast<std::size_t>(s.peers - 1) && since >= Millis(1000)) {
        beginShutdown(s, "stopping the remaining peers (SIGTERM)");
      }
      break;
    case Phase::kStartPeers:
    case Phase::kTraining:
      tickTraining(s, view);
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
  std::vector<FlagSpec> specs{
      {"peers", "number of peers", "4"},
      {"out", "directory for logs, identities, run.jsonl and plots", "loco-local"},
      {"idle", "membership demo instead of training: all join, one leaves, all stop", "", true},
      {"hold-ms", "--idle: ms to keep the full group before one peer leaves", "2000"},
      {"timeout-ms",
       "give up (and kill everything) after this long (default: 60 s idle, 30 min training)", ""},
      {"kill-at", "training: kill -9 the last peer once the run reaches this inner step", ""},
      {"join-at", "training: start one more peer once the run reaches this inner step", ""},
      {"lab", "place the coordinator in host 1 and the peers round-robin in this lab's hosts", ""}};
  for (auto& spec : trainingFlagSpecs()) specs.push_back(std::move(spec));
  Flags flags("local",
              "train on this machine: a coordinator and N peers as processes, with a live view",
              std::move(specs));
  if (int rc = parseAndSetUp(flags, args, "local"); rc >= 0) return rc;
  const bool training = !flags.getBool("idle");
  // A training run of one peer is the single-worker baseline; the membership demo needs two.
  auto peers = flags.getInt("peers", training ? 1 : 2, 64);
  auto hold = flags.getInt("hold-ms", 0, 3600000);
  for (const auto* r : {&peers, &hold}) {
    if (!*r) return reportFailure(r->status());
  }
  std::int64_t timeout_ms = training ? 1800000 : 60000;
  if (flags.isSet("timeout-ms")) {
    auto t = flags.getInt("timeout-ms", 1000, 86400000);
    if (!t) return reportFailure(t.status());
    timeout_ms = *t;
  }
  Swarm s;
  s.training = training;
  if (training) {
    // Every problem with the training flags or the data shows here, before any process starts.
    auto config = trainingConfigFromFlags(flags);
    if (!config) return reportFailure(config.status());
    auto corpus = training::TextCorpus::load(config->train.data, config->train.model.context);
    if (!corpus) return reportFailure(corpus.status());
    s.training_args = forwardedTrainingFlags(flags);
    s.total_steps = config->steps;
    for (auto [name, out] :
         {std::pair<const char*, std::int64_t*>{"kill-at", &s.kill_at}, {"join-at", &s.join_at}}) {
      if (!flags.isSet(name)) continue;
      auto v = flags.getInt(name, 0, static_cast<std::int64_t>(config->steps));
      if (!v) return reportFailure(v.status());
      *out = *v;
    }
    if (s.kill_at >= 0 && s.join_at >= 0 && s.join_at < s.kill_at) {
      return reportFailure(
          Status(StatusCode::kInvalidArgument, "--join-at must not come before --kill-at"));
    }
    // One LibTorch/OpenMP thread per peer unless told otherwise; spinning OpenMP threads steal
    // the cores the other peers need.
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    ::setenv("OMP_NUM_THREADS", flags.get("threads").c_str(), 0);
  } else if (flags.isSet("kill-at") || flags.isSet("join-at")) {
    return reportFailure(Status(StatusCode::kInvalidArgument,
                                "--kill-at and --join-at are for training runs, not --idle"));
  }
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
  s.deadline_after = Millis(timeout_ms);
  s.log_level = flags.get("log-level");
  if (std::error_code ec; !std::filesystem::create_directories(s.out_dir, ec) && ec) {
    return reportFailure(
        Status(StatusCode::kIoError,
               fmt::format("cannot create --out directory {}: {}", s.out_dir, ec.message())));
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
  if (s.join_at >= 0) {  // the late joiner, started by --join-at
    auto c = std::make_unique<Child>();
    c->name = fmt::format("peer-{}", s.peers + 1);
    auto ident = crypto::loadOrCreateIdentity(fmt::format("{}/{}.id", s.out_dir, c->name));
    if (!ident) return reportFailure(ident.status());
    c->peer_id = ident->id;
    s.children.push_back(std::move(c));
  }
  for (auto& c : s.children)
    ::unlink(fmt::format("{}/{}.jsonl", s.out_dir, c->name).c_str());  // a fresh run

  uv_loop_init(&s.loop);
  uv_timer_init(&s.loop, &s.timer);
  s.timer.data = &s;
  uv_signal_init(&s.loop, &s.sigint);
  uv_signal_init(&s.loop, &s.sigterm);
  s.sigint.data = s.sigterm.data = &s;
  uv_signal_start(&s.sigint, onSignal, SIGINT);
  uv_signal_start(&s.sigterm, onSignal, SIGTERM);

  s.say(fmt::format("local swarm: 1 coordinator + {} peers{}, logs in {}/", s.peers,
                    s.lab ? fmt::format(" in lab {} ({} hosts)", s.lab->name, s.lab->hosts) : "",
                    s.out_dir));
  Status st = spawn(s, *s.children[0], 0,
                    {"coordinator", "--listen", s.addressOf(0) + ":0", "--port-file",
                     s.out_dir + "/coordinator.port", "--heartbeat-interval", "250",
                     "--heartbeat-timeout", "2000", "--log-level", s.log_level});
  if (!st.isOk()) return reportFailure(st);
  uv_timer_start(
      &s.timer, [](uv_timer_t* t) { tick(*static_cast<Swarm*>(t->data)); }, 0, 200);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  uv_loop_close(&s.loop);

  if (s.training) writeTrainingResults(s);
  std::printf("\nsummary:\n");
  bool clean = s.failure.empty() && !s.interrupted;
  for (auto& c : s.children) {
    if (!c->started) continue;
    bool ok = c->exit_status == 0 && c->term_signal == 0;
    if (c->term_signal == SIGKILL && s.killed &&
        c.get() == s.children[static_cast<std::size_t>(s.peers)].get()) {
      std::printf("  %-12s killed by --kill-at (as asked)\n", c->name.c_str());
      continue;
    }
    clean = clean && ok;
    std::printf(
        "  %-12s %s\n", c->name.c_str(),
        ok ? "exited cleanly (status 0)"
           : fmt::format("exit status {}, signal {}", c->exit_status, c->term_signal).c_str());
  }
  if (!s.failure.empty()) std::printf("failure: %s\n", s.failure.c_str());
  std::printf("%s\n",
              clean ? "all processes exited cleanly" : "the local swarm did not finish cleanly");
  if (s.interrupted) return 130;
  return clean ? 0 : 1;
}

}  // namespace loco::cli
