#pragma once
// The `loco` subcommands. Each takes the arguments after its name and returns the exit code:
// 0 success, 1 runtime failure, 2 bad usage.

#include <sys/types.h>

#include <string>
#include <vector>

#include "cli/flags.h"
#include "p2p/base/status.h"

namespace loco::cli {

using Args = std::vector<std::string>;

int runCoordinator(const Args& args);
int runJoin(const Args& args);
int runStatus(const Args& args);
int runLocal(const Args& args);
int runBench(const Args& args);
int runLab(const Args& args);
int runDoctor(const Args& args);
int runRelay(const Args& args);
int runChaos(const Args& args);
int runBenchAllReduce(const Args& args);
int runBenchJoin(const Args& args);
int runBenchTrain(const Args& args);
int runCa(const Args& args);
int runToken(const Args& args);

// Shared plumbing for the commands.
// Parses flags (printing usage on --help) and configures logging. Returns an exit code to stop
// with, or -1 to go on.
int parseAndSetUp(Flags& flags, const Args& args, const std::string& process_name);
// Prints "loco: <message>" to stderr and returns 2 for kInvalidArgument, 1 otherwise.
int reportFailure(const Status& status);
// Writes `content` to `path` via a temporary file and rename, so readers never see half a file.
Status writeFileAtomic(const std::string& path, const std::string& content);
// Path of the running `loco` binary (to start children).
std::string selfExecutable();
// The whole file as text; "" when it cannot be read.
std::string readTextFile(const std::string& path);
// Starts argv[0] (searched on PATH) with stdout and stderr going to `log` ("" keeps them) and
// stdin from /dev/null. Returns the child's pid, or -1.
pid_t spawnProcess(const std::vector<std::string>& argv, const std::string& log = "");
// User + system CPU time of this process (every thread), in ms. A load-independent measure of
// what an operation costs, next to its wall time.
double processCpuMs();
// Replaces this process with `loco-train COMMAND...` from the same directory: LibTorch lives only
// in that binary, so `loco` itself starts fast and stays small. Returns only on failure (exit
// code).
int execTrainingBinary(const std::vector<std::string>& command);

}  // namespace loco::cli
