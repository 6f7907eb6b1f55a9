// `loco`: the one binary for coordinators, peers, local swarms, status and benchmarks.
#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "collectives/accelerator.h"

namespace {
// A crash prints where it happened (addresses; `addr2line -e loco` names them) before dying
// with the same signal, so logs of peers on far-away machines say something useful.
void onCrash(int sig) {
  static const char kMsg[] = "loco: fatal signal; backtrace:\n";
  (void)!::write(2, kMsg, sizeof(kMsg) - 1);
  void* frames[64];
  int n = ::backtrace(frames, 64);
  ::backtrace_symbols_fd(frames, n, 2);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void installCrashHandler() {
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) ::signal(sig, onCrash);
}

void printUsage(FILE* out) {
  std::fputs(
      "usage: loco COMMAND [flags]   (every flag also as LOCO_<FLAG>; `loco COMMAND --help` lists "
      "them)\n"
      "\n"
      "  coordinator  run the membership coordinator of a training run\n"
      "  join         join a run as a peer (--idle: membership only)\n"
      "  status       show a run's membership (--json for machines)\n"
      "  local        start a coordinator and N peers on this machine and watch them\n"
      "  bench        benchmarks: `loco bench link|allreduce|join|train`\n"
      "  lab          emulate a WAN on this machine (namespaces + delay, loss, rate, partitions)\n"
      "  doctor       check whether this machine can join a run, and how to fix what is wrong\n"
      "  relay        forward link connections for peers behind a NAT\n"
      "  chaos        train in a lab under a schedule of faults; check invariants; report\n"
      "  ca           `loco ca init --dir D`: a run's certificate authority (TLS)\n"
      "  token        `loco token create|revoke|list --ca D`: join tokens and join strings\n"
      "  version      print the version and the accelerator in use\n",
      out);
}
}  // namespace

int main(int argc, char** argv) {
  installCrashHandler();
  if (argc < 2) {
    printUsage(stderr);
    return 2;
  }
  std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  using namespace loco::cli;
#ifdef LOCO_TRAINING_BINARY
  // loco-train: the LibTorch half of loco, started by `loco join` (training) and `loco bench
  // train`.
  if (cmd == "join") return runJoin(args);
  if (cmd == "bench" && !args.empty() && args[0] == "train")
    return runBenchTrain(Args(args.begin() + 1, args.end()));
  std::fprintf(
      stderr,
      "loco-train runs `join` (training) and `bench train`; use `loco` for everything else\n");
  return 2;
#else
  if (cmd == "coordinator") return runCoordinator(args);
  if (cmd == "join") return runJoin(args);
  if (cmd == "status") return runStatus(args);
  if (cmd == "local") return runLocal(args);
  if (cmd == "bench") return runBench(args);
  if (cmd == "lab") return runLab(args);
  if (cmd == "doctor") return runDoctor(args);
  if (cmd == "relay") return runRelay(args);
  if (cmd == "chaos") return runChaos(args);
  if (cmd == "ca") return runCa(args);
  if (cmd == "token") return runToken(args);
  if (cmd == "version" || cmd == "--version") {
    std::printf("loco %s\naccelerator: %s\n", LOCO_VERSION,
                loco::collectives::accelerator().description.c_str());
    return 0;
  }
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    printUsage(stdout);
    return 0;
  }
  std::fprintf(stderr, "loco: unknown command '%s'\n\n", cmd.c_str());
  printUsage(stderr);
  return 2;
#endif
}
