#pragma once
// CPU quotas for groups of processes through cgroups: a lab host with `--host I:cpu=0.33`, or a
// `loco local --peer I:cpu=0.33`, runs as a machine with a third of one core (the kernel's CFS
// bandwidth control: the group gets `cores` x 100 ms of CPU time per 100 ms period, then waits).
// That is a genuinely slower machine: every thread of every process in the group is throttled,
// whatever it does, unlike a sleep in the code.
//
// Both cgroup versions work: v2 (cpu.max) where the unified hierarchy offers the cpu controller,
// else v1's cpu controller (cpu.cfs_quota_us / cpu.cfs_period_us), as on hosts booted in hybrid
// mode. loco's groups live in a `loco` folder under the controller's root and are named by the
// caller ("lab-wan-h3", "local-1234-peer-2").
//
// Needs root (writes under /sys/fs/cgroup). Every function is blocking file I/O and may be called
// from any thread; errors are kUnavailable (no usable cpu controller: the message says what is
// missing) or kIoError naming the file.

#include <sys/types.h>

#include <string>
#include <vector>

#include "p2p/base/status.h"

namespace loco::lab {

// Where the cpu controller lives.
struct CpuCgroupRoot {
  int version = 0;   // 1 or 2
  std::string path;  // mount point of the hierarchy that has the cpu controller
};

// Pure: the hierarchy with the cpu controller, from /proc/self/mountinfo text and the v2
// hierarchy's cgroup.controllers ("" when unreadable). v2 wins when it offers cpu.
Result<CpuCgroupRoot> findCpuCgroup(const std::string& mountinfo,
                                    const std::string& v2_controllers);
// findCpuCgroup on this machine (reads /proc/self/mountinfo).
Result<CpuCgroupRoot> detectCpuCgroup();

// One line saying which cgroup version and controller this machine offers, or what is missing.
std::string describeCpuCgroupSupport();

// Pure: the quota file contents for `cores` CPUs' worth per 100 ms period; cores <= 0 means no
// limit. v2: "33000 100000" / "max 100000"; v1: "33000" / "-1" (the period is written apart).
std::string quotaText(int version, double cores);

// Creates cgroup `name` when needed and sets its quota (cores <= 0: unlimited).
Status setCpuQuota(const std::string& name, double cores);
// Moves `pid` (all its threads) into cgroup `name`, which must exist.
Status addToCgroup(const std::string& name, pid_t pid);
// Whether cgroup `name` exists.
bool cgroupExists(const std::string& name);
// Moves whatever is left in cgroup `name` back to the root and removes it. Idempotent.
void removeCgroup(const std::string& name);
// The pids whose network namespace is the one bound at `netns_path` (/run/netns/NAME).
std::vector<pid_t> pidsInNetns(const std::string& netns_path);

}  // namespace loco::lab
