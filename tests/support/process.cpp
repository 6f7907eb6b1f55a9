#include "tests/support/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "p2p/status_client.h"

namespace loco::testing {

std::string locoBinary() {
  if (const char* env = std::getenv("LOCO_BINARY")) return env;
  return LOCO_TEST_BINARY;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "loco-test-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Process::Process(const std::vector<std::string>& args, std::string log_path)
    : Process(locoBinary(), args, std::move(log_path)) {}

Process::Process(const std::string& executable, const std::vector<std::string>& args,
                 std::string log_path)
    : log_path_(std::move(log_path)) {
  std::vector<std::string> full = {executable};
  full.insert(full.end(), args.begin(), args.end());
  pid_ = ::fork();
  if (pid_ == 0) {
    // Die with the test process even if it crashes or aborts before its destructors run (an
    // ASan abort once left dozens of peers behind).
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = ::open(log_path_.c_str(), O_CREAT | O_APPEND | O_WRONLY, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
}

Process::~Process() {
  if (pid_ > 0 && !exit_code_) {
    ::kill(pid_, SIGKILL);
    ::kill(pid_, SIGCONT);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
}

void Process::signal(int sig) const {
  if (pid_ > 0) ::kill(pid_, sig);
}

bool Process::running() {
  if (exit_code_) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

std::optional<int> Process::waitExit(milliseconds timeout) {
  eventually(timeout, [&] { return !running(); });
  return exit_code_;
}

std::string Process::log() const {
  return readFile(log_path_);
}

bool eventually(milliseconds timeout, const std::function<bool()>& pred) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(10));
  }
}

std::string readFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

int openFdCount(pid_t pid) {
  int n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

long rssKib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

long cpuMillis(pid_t pid) {
  std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream in(stat.substr(close + 2));
  std::string field;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  return (utime + stime) * 1000 / ::sysconf(_SC_CLK_TCK);
}

CoordinatorProcess::CoordinatorProcess(const TempDir& dir, int heartbeat_interval_ms,
                                       int heartbeat_timeout_ms,
                                       const std::vector<std::string>& extra,
                                       const std::string& name, std::uint16_t port) {
  std::string port_file = dir.file(name + ".port");
  ::unlink(port_file.c_str());
  std::vector<std::string> args = {"coordinator",
                                   "--listen",
                                   "127.0.0.1:" + std::to_string(port),
                                   "--port-file",
                                   port_file,
                                   "--heartbeat-interval",
                                   std::to_string(heartbeat_interval_ms),
                                   "--heartbeat-timeout",
                                   std::to_string(heartbeat_timeout_ms)};
  args.insert(args.end(), extra.begin(), extra.end());
  proc_ = std::make_unique<Process>(args, dir.file(name + ".log"));
  eventually(milliseconds(10000), [&] { return !readFile(port_file).empty(); });
  port_ = static_cast<std::uint16_t>(std::atoi(readFile(port_file).c_str()));
  if (port_ == 0) throw std::runtime_error("coordinator did not start: " + proc_->log());
}

std::optional<p2p::GroupView> CoordinatorProcess::view() const {
  auto v = p2p::fetchStatus({"127.0.0.1", port_}, Deadline::after(Millis(2000)));
  if (!v) return std::nullopt;
  return std::move(v.value());
}

std::uint64_t CoordinatorProcess::counter(const std::string& name) const {
  auto v = view();
  if (!v) return 0;
  for (auto& [n, value] : v->counters) {
    if (n == name) return value;
  }
  return 0;
}

}  // namespace loco::testing
