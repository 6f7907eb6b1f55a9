#pragma once
// Test support for lab tests (ctest label `lab`): whether this machine can build labs, lab names
// unique to the test process, and `loco` commands run to completion.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/process.h"

namespace loco::testing {

// What `loco lab` would refuse for, as one sentence; empty when labs can be built here.
inline std::string labUnsupported() {
  if (::geteuid() != 0)
    return "loco lab needs root (network namespaces, veths, raw sockets); these tests run as root "
           "in CI";
  std::string probe = "locotestprobe" + std::to_string(::getpid());
  if (std::system(("ip netns add " + probe + " 2>/dev/null").c_str()) != 0) {
    return "this machine cannot create network namespaces (`ip netns add` failed)";
  }
  (void)std::system(("ip netns del " + probe).c_str());
  return "";
}

#define SKIP_WITHOUT_LAB_SUPPORT()                                             \
  do {                                                                         \
    if (std::string why = labUnsupported(); !why.empty()) GTEST_SKIP() << why; \
  } while (0)

// Lab names may not end in a digit; derive a unique one per test from the pid.
inline std::string uniqueLabName(const std::string& stem) {
  std::string name = stem;
  for (char c : std::to_string(::getpid())) name.push_back(static_cast<char>('a' + (c - '0')));
  return name.substr(0, 12);
}

struct CommandResult {
  int code;  // -1: did not finish within the timeout
  std::string out;
};

// Runs `loco args...` to completion; its output goes to a log in `dir`.
inline CommandResult loco(const TempDir& dir, const std::vector<std::string>& args,
                          milliseconds timeout = milliseconds(30000)) {
  static int n = 0;
  Process p(args, dir.file("cmd" + std::to_string(n++) + ".log"));
  auto rc = p.waitExit(timeout);
  return {rc.value_or(-1), p.log()};
}

// The lab's subnet S (its hosts are 10.213.S.i), from its state file; 0 when there is none.
inline int labSubnet(const std::string& lab) {
  std::ifstream f("/run/loco-lab/" + lab + "/config");
  std::string key;
  int value = 0;
  while (f >> key) {
    if (key == "subnet" && f >> value) return value;
    f.ignore(1 << 20, '\n');
  }
  return 0;
}

// Removes a lab when the test ends, passed or failed.
struct LabGuard {
  const TempDir& dir;
  std::string name;
  ~LabGuard() { (void)loco(dir, {"lab", "down", name}); }
};

}  // namespace loco::testing
