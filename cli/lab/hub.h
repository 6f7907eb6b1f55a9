#pragma once
// The lab's L2 hub: one AF_PACKET socket on the root-namespace end of every host's veth. It
// forwards whole Ethernet frames (TCP is never terminated, so end-to-end dynamics stay real) and
// applies, per frame and direction: partition, loss, the sender's uplink rate, the pair's rate
// cap, delay plus jitter (FIFO per pair, no reordering), and the receiver's downlink rate. Rates
// are serialisation delays with a tail-drop buffer, like a router port.
//
// Frames carry a virtio_net_hdr (PACKET_VNET_HDR), so the kernel's GSO super-frames and
// partially checksummed packets pass through intact: one frame can be many TCP segments. Loss
// is applied per segment (a frame of k segments is dropped with probability 1-(1-p)^k).

#include <string>

namespace loco::lab {

// Runs until SIGTERM or SIGINT; SIGHUP re-reads `config_path`. Writes `ready_path` once every
// socket is open. Returns the process exit code.
int runHub(const std::string& config_path, const std::string& ready_path);

}  // namespace loco::lab
