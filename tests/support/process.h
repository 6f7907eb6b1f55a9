#pragma once
// Test support: start `loco` as real child processes, signal them, wait with deadlines, read
// /proc. Every Process is killed (SIGKILL, by pid) and reaped in its destructor, so a failing test
// leaves nothing behind; children also get PR_SET_PDEATHSIG, so even a crashing test binary
// takes them with it.

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "p2p/messages.h"

namespace loco::testing {

using std::chrono::milliseconds;

// Path of the `loco` binary under test (compiled in; LOCO_BINARY overrides).
std::string locoBinary();

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

class Process {
 public:
  // Starts `loco args...` with stdout+stderr appended to `log_path`.
  Process(const std::vector<std::string>& args, std::string log_path);
  // Starts another executable (a test helper such as loco_fault_worker) the same way.
  Process(const std::string& executable, const std::vector<std::string>& args,
          std::string log_path);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  void signal(int sig) const;
  bool running();
  // Exit code (or 128 + signal) once the process ends within `timeout`.
  std::optional<int> waitExit(milliseconds timeout);
  std::string log() const;

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
  std::string log_path_;
};

inline double secondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Polls `pred` every 10 ms until it is true or `timeout` passes; returns whether it became true.
bool eventually(milliseconds timeout, const std::function<bool()>& pred);

// Reads a file that another process writes atomically; "" if absent.
std::string readFile(const std::string& path);

int openFdCount(pid_t pid);
long rssKib(pid_t pid);
// User + system CPU time of `pid` in milliseconds.
long cpuMillis(pid_t pid);

// A coordinator on 127.0.0.1 with an ephemeral port (or `port`: a restart on the same address),
// its log in `<name>.log` under `dir`.
class CoordinatorProcess {
 public:
  CoordinatorProcess(const TempDir& dir, int heartbeat_interval_ms, int heartbeat_timeout_ms,
                     const std::vector<std::string>& extra = {},
                     const std::string& name = "coordinator", std::uint16_t port = 0);
  std::uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  Process& process() { return *proc_; }
  // The coordinator's view, via the same client `loco status` uses.
  std::optional<p2p::GroupView> view() const;
  std::uint64_t counter(const std::string& name) const;

 private:
  std::unique_ptr<Process> proc_;
  std::uint16_t port_ = 0;
};

}  // namespace loco::testing
