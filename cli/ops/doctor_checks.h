#pragma once
// `loco doctor`'s checks (cli/doctor_cmd.cpp runs them): each one says what it found, and when
// something is wrong, what exactly to do about it. The local ones read files under injectable
// roots, so unit tests run them on fake trees. Blocking file I/O; thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "p2p/address.h"
#include "p2p/doctor_probe.h"

namespace loco::ops {

enum class CheckLevel { kOk, kInfo, kWarn, kFail };
std::string_view checkLevelName(CheckLevel l);  // "ok", "info", "warn", "FAIL"

struct Check {
  std::string name;  // "coordinator", "listen port", "disk", ...
  CheckLevel level = CheckLevel::kOk;
  std::string message;
  std::string fix;  // a command or flag; "" when nothing is to be done
};

// ---- network (from one probeCoordinator conversation) ------------------------------------------

// The coordinator, the dial-back, the path MTU and the clock, from the probe's outcome.
// `listen_flag`: --listen as given ("" when not), for the fixes.
std::vector<Check> networkChecks(const Result<p2p::DoctorProbe>& probe,
                                 const p2p::HostPort& coordinator, const std::string& listen_flag);

// ---- local
// ---------------------------------------------------------------------------------------

// Free space where checkpoints go (`dir`, or its closest existing parent) against what a
// checkpoint of `checkpoint_bytes` needs while it is replaced atomically (old + new), and
// whether the directory is writable. `dir` "": checkpoints are off.
Check checkDisk(const std::string& dir, std::uint64_t checkpoint_bytes);

// Which BLAS LibTorch will load: `blas_path` is where libblas.so.3 resolves ("" when missing).
// `threads`: LibTorch threads per peer (--threads); OMP_NUM_THREADS and OPENBLAS_NUM_THREADS
// from `omp_env` and `openblas_env` ("" unset); `cpus`: CPUs this process may use.
std::vector<Check> checkBlas(const std::string& blas_path, int threads, const std::string& omp_env,
                             const std::string& openblas_env, double cpus);
// Where libblas.so.3 resolves on this machine ("" when it does not exist).
std::string findBlas();

struct CgroupLimits {
  int version = 0;                            // 0: no cgroup found
  std::optional<double> cpus;                 // CPU quota in CPUs; nullopt: unlimited
  std::optional<std::uint64_t> memory_bytes;  // nullopt: unlimited
};
// The tightest limits on this process along its cgroup path. `sys_root`: /sys/fs/cgroup;
// `self_cgroup`: the text of /proc/self/cgroup.
CgroupLimits readCgroupLimits(const std::string& sys_root, const std::string& self_cgroup);
// `memory_need`: what one peer needs (estimateMemory).
std::vector<Check> checkCgroup(const CgroupLimits& limits, int threads, std::uint64_t memory_need);

// What a training peer of `params` parameters needs: LibTorch's own footprint plus ~12 fp32
// copies of the parameters (weights, gradients, AdamW moments, θ, momentum, Δ, the reduce
// buffer and its backup). Measured: 120-135 MiB RSS for the 0.44M-parameter default.
std::uint64_t estimateMemory(std::uint64_t params);
// A checkpoint: weights, AdamW moments, θ and momentum, fp32 (checkpoint.h), plus headers.
std::uint64_t estimateCheckpoint(std::uint64_t params);

// ---- output
// --------------------------------------------------------------------------------------

bool anyFailed(const std::vector<Check>& checks);
std::string renderChecks(const std::vector<Check>& checks, const std::string& title);
std::string checksJson(const std::vector<Check>& checks);

}  // namespace loco::ops
