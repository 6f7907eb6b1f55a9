#include "cli/lab/cgroup.h"

#include <dirent.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

namespace loco::lab {
namespace {

constexpr long kPeriodUs = 100000;  // the kernel's default CFS period
constexpr long kMinQuotaUs = 1000;  // the kernel refuses less than 1 ms

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) out.push_back(cur);
  return out;
}

bool hasWord(const std::string& list, const std::string& word, char sep) {
  for (const auto& w : split(list, sep)) {
    if (w == word) return true;
  }
  return false;
}

std::string readSmall(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status writeSmall(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  if (!out)
    return Status(StatusCode::kIoError,
                  fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  out << text;
  out.flush();
  if (!out)
    return Status(StatusCode::kIoError,
                  fmt::format("cannot write '{}' to {}: {}", text, path, std::strerror(errno)));
  return Status();
}

// detectCpuCgroup() once per process: mounts do not change under a running lab.
const Result<CpuCgroupRoot>& cachedRoot() {
  static std::once_flag once;
  static std::optional<Result<CpuCgroupRoot>> root;
  std::call_once(once, [] { root.emplace(detectCpuCgroup()); });
  return *root;
}

std::string groupDir(const CpuCgroupRoot& root, const std::string& name) {
  return root.path + "/loco/" + name;
}

}  // namespace

Result<CpuCgroupRoot> findCpuCgroup(const std::string& mountinfo,
                                    const std::string& v2_controllers) {
  std::optional<CpuCgroupRoot> v1, v2;
  std::istringstream in(mountinfo);
  std::string line;
  while (std::getline(in, line)) {
    auto dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    auto left = split(line.substr(0, dash), ' ');
    auto right = split(line.substr(dash + 3), ' ');
    if (left.size() < 5 || right.size() < 3) continue;
    const std::string& mount_point = left[4];
    const std::string& fstype = right[0];
    if (fstype == "cgroup2" && !v2) v2 = CpuCgroupRoot{2, mount_point};
    if (fstype == "cgroup" && !v1 && hasWord(right[2], "cpu", ','))
      v1 = CpuCgroupRoot{1, mount_point};
  }
  if (v2 && hasWord(v2_controllers.substr(0, v2_controllers.find('\n')), "cpu", ' ')) return *v2;
  if (v1) return *v1;
  return Status(StatusCode::kUnavailable,
                v2 ? fmt::format("no cgroup cpu controller: the cgroup v2 hierarchy at {} offers "
                                 "only '{}' and no v1 hierarchy has cpu",
                                 v2->path, v2_controllers.substr(0, v2_controllers.find('\n')))
                   : "no cgroup hierarchy with the cpu controller is mounted");
}

Result<CpuCgroupRoot> detectCpuCgroup() {
  const std::string mountinfo = readSmall("/proc/self/mountinfo");
  std::string controllers;
  std::istringstream in(mountinfo);
  std::string line;
  while (std::getline(in, line)) {
    auto dash = line.find(" - cgroup2 ");
    if (dash == std::string::npos) continue;
    auto left = split(line.substr(0, dash), ' ');
    if (left.size() >= 5) {
      controllers = readSmall(left[4] + "/cgroup.controllers");
      break;
    }
  }
  return findCpuCgroup(mountinfo, controllers);
}

std::string describeCpuCgroupSupport() {
  auto root = cachedRoot();
  if (!root) return root.status().message();
  return fmt::format("cgroup v{} cpu controller at {}", root->version, root->path);
}

std::string quotaText(int version, double cores) {
  if (!(cores > 0)) return version == 2 ? fmt::format("max {}", kPeriodUs) : "-1";
  const long quota =
      std::max(kMinQuotaUs, static_cast<long>(std::lround(cores * static_cast<double>(kPeriodUs))));
  return version == 2 ? fmt::format("{} {}", quota, kPeriodUs) : std::to_string(quota);
}

Status setCpuQuota(const std::string& name, double cores) {
  const auto& root = cachedRoot();
  if (!root) return root.status();
  if (::geteuid() != 0)
    return Status(StatusCode::kUnavailable, "a CPU quota needs root (it writes cgroup files)");
  const std::string parent = root->path + "/loco";
  const std::string dir = groupDir(*root, name);
  if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST)
    return Status(StatusCode::kIoError,
                  fmt::format("cannot create {}: {}", parent, std::strerror(errno)));
  if (root->version == 2) {
    // v2 enables a controller for the children of a group through its parent's subtree_control.
    for (const std::string& p : {root->path, parent}) {
      if (hasWord(readSmall(p + "/cgroup.subtree_control"), "cpu", ' ')) continue;
      LOCO_RETURN_IF_ERROR(writeSmall(p + "/cgroup.subtree_control", "+cpu"));
    }
  }
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return Status(StatusCode::kIoError,
                  fmt::format("cannot create {}: {}", dir, std::strerror(errno)));
  if (root->version == 2) return writeSmall(dir + "/cpu.max", quotaText(2, cores));
  LOCO_RETURN_IF_ERROR(writeSmall(dir + "/cpu.cfs_period_us", std::to_string(kPeriodUs)));
  return writeSmall(dir + "/cpu.cfs_quota_us", quotaText(1, cores));
}

Status addToCgroup(const std::string& name, pid_t pid) {
  const auto& root = cachedRoot();
  if (!root) return root.status();
  return writeSmall(groupDir(*root, name) + "/cgroup.procs", std::to_string(pid));
}

bool cgroupExists(const std::string& name) {
  const auto& root = cachedRoot();
  struct stat st {};
  return root && ::stat(groupDir(*root, name).c_str(), &st) == 0;
}

void removeCgroup(const std::string& name) {
  const auto& root = cachedRoot();
  if (!root) return;
  const std::string dir = groupDir(*root, name);
  // rmdir fails while the group holds a process; processes just killed take a moment to go.
  for (int attempt = 0; attempt < 50; ++attempt) {
    std::istringstream procs(readSmall(dir + "/cgroup.procs"));
    pid_t pid;
    while (procs >> pid) (void)writeSmall(root->path + "/cgroup.procs", std::to_string(pid));
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::vector<pid_t> pidsInNetns(const std::string& netns_path) {
  std::vector<pid_t> out;
  struct stat ns {};
  if (::stat(netns_path.c_str(), &ns) != 0) return out;
  const std::string want = fmt::format("net:[{}]", ns.st_ino);
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  while (dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || *end != '\0') continue;
    char link[64] = {};
    ssize_t n = ::readlink(fmt::format("/proc/{}/ns/net", pid).c_str(), link, sizeof(link) - 1);
    if (n > 0 && want == std::string(link, static_cast<std::size_t>(n)))
      out.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(proc);
  return out;
}

}  // namespace loco::lab
