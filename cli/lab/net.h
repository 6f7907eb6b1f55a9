#pragma once
// Building and removing a lab's network: namespaces NAME1..NAMEN, one veth each (inside: eth0
// with the host's address; outside: the hub's port), per-namespace sysctls. Uses iproute2 and
// sysctl as child processes. Needs root.

#include <functional>
#include <string>
#include <vector>

#include "cli/lab/config.h"
#include "p2p/base/status.h"

namespace loco::lab {

std::string stateRoot();  // /run/loco-lab (LOCO_LAB_STATE_DIR overrides, for tests)
std::string stateDir(const std::string& name);
std::string configPath(const std::string& name);
std::string supervisorPidPath(const std::string& name);
std::string hubReadyPath(const std::string& name);
std::string logPath(const std::string& name);

// One sentence saying what is missing when this process cannot build labs (not root, no
// network namespaces, no iproute2); ok otherwise.
Status checkLabSupport();

// Runs a command, feeding `input` on stdin. kInternal with the command and its stderr on
// failure.
Status runCommand(const std::vector<std::string>& argv, const std::string& input = "");

// A lab that exists, from its state file. kNotFound names the lab and how to create it.
Result<LabConfig> loadLab(const std::string& name);

// Moves this process into host `host` of the lab: the calling thread, and every thread it
// creates afterwards, uses that host's network. Call before starting any thread.
Status enterHost(const LabConfig& cfg, int host);

// argv prefix that runs a command inside host `host`: {"ip", "netns", "exec", NAMEi}.
std::vector<std::string> inHost(const LabConfig& cfg, int host);

// Namespaces that belong to lab `name` (NAME followed by digits).
std::vector<std::string> labNamespaces(const std::string& name);

// A /24 that no other lab uses.
Result<int> pickSubnet();

// Creates everything; on failure or when `interrupted()` turns true, removes what it made.
Status buildNetwork(const LabConfig& cfg, const std::function<bool()>& interrupted);
// Sets per-namespace TCP buffer limits (--tcp-rmem-max).
Status applySysctls(const LabConfig& cfg);
// Kills every process in the lab's namespaces (by pid), deletes the namespaces and any
// leftover outside veth, and removes the state directory. Idempotent; works on half-built labs.
void teardown(const std::string& name);

}  // namespace loco::lab
