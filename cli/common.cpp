#include <fmt/format.h>
#include <unistd.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "p2p/base/log.h"

namespace loco::cli {

int parseAndSetUp(Flags& flags, const Args& args, const std::string& process_name) {
  Status st = flags.parse(args, processEnv());
  if (flags.helpRequested()) {
    std::fputs(flags.usage().c_str(), stdout);
    return 0;
  }
  if (!st.isOk()) {
    std::fprintf(stderr, "loco: %s\n", st.message().c_str());
    return 2;
  }
  auto level = parseLogLevel(flags.get("log-level"));
  if (!level) return reportFailure(level.status());
  auto format = parseLogFormat(flags.get("log-format"));
  if (!format) return reportFailure(format.status());
  configureLogging(*level, *format, process_name);
  return -1;
}

int reportFailure(const Status& status) {
  std::fprintf(stderr, "loco: %s\n", status.message().c_str());
  return status.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

Status writeFileAtomic(const std::string& path, const std::string& content) {
  std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << content;
    f.flush();
    if (!f)
      return Status(StatusCode::kIoError,
                    fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return Status(StatusCode::kIoError,
                  fmt::format("cannot rename {} to {}: {}", tmp, path, std::strerror(errno)));
  }
  return Status();
}

std::string readTextFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

double processCpuMs() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto ms = [](const timeval& tv) { return tv.tv_sec * 1e3 + tv.tv_usec / 1e3; };
  return ms(ru.ru_utime) + ms(ru.ru_stime);
}

pid_t spawnProcess(const std::vector<std::string>& argv, const std::string& log) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int in = ::open("/dev/null", O_RDONLY);
    if (in >= 0) ::dup2(in, 0);
    if (!log.empty()) {
      int fd = ::open(log.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
    }
    std::vector<std::string> copy = argv;
    std::vector<char*> cargv;
    for (auto& a : copy) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    ::execvp(cargv[0], cargv.data());
    ::_exit(127);
  }
  return pid;
}

std::string selfExecutable() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "loco";
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace loco::cli

namespace loco::cli {

int execTrainingBinary(const std::vector<std::string>& command) {
  std::string self = selfExecutable();
  const std::string path = self.substr(0, self.rfind('/') + 1) + "loco-train";
  std::vector<std::string> argv{path};
  argv.insert(argv.end(), command.begin(), command.end());
  std::vector<char*> raw;
  for (auto& a : argv) raw.push_back(a.data());
  raw.push_back(nullptr);
  ::execv(path.c_str(), raw.data());
  return reportFailure(
      Status(StatusCode::kUnavailable,
             fmt::format("training runs in {} (built with loco; cmake target loco-train), which "
                         "cannot be started: {}",
                         path, std::strerror(errno))));
}

}  // namespace loco::cli
