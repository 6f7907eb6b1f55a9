#pragma once
// Shared state (ARCHITECTURE.md §5): named buffers that every peer of a group holds identically
// (outer parameters, outer optimizer state, step counters). Communicator::syncSharedState compares
// them across the group and repairs whoever differs:
//
// - Every buffer is cut into fixed-size chunks (chunk_bytes; buffers of any alignment) and each
//   chunk is hashed with XXH3-64. The coordinator sees layouts, revisions and hashes only.
// - The canonical content is elected per chunk by popularity among the peers at the highest
//   revision (p2p/state_sync.h has the exact rules). Revision 0 means "resume from whatever the
//   peers hold" (a restart from a checkpoint): then every peer that holds something votes.
// - The runtime advances the revision by one per successful sync. The application may advance it
//   too (advanceRevision) after a change every member makes alike, such as a committed training
//   round: a peer that missed the change (it aborted the round because its coordinator died
//   while the commit was on its way) then holds an older revision and loses the next election,
//   instead of tying with the peers that applied it.
// - Out-of-date and new peers download only the chunks whose hashes differ, from every peer
//   that holds them at once (each over a K-stream link, requests striped over the streams),
//   and verify each chunk by hash before it touches their buffers. A source that dies is
//   replaced by the others. A chunk that fails its hash is fetched from another source; a source
//   that serves kMaxCorruptChunksPerSource bad chunks is dropped and reported to the
//   coordinator, which evicts it.
// - Peers whose buffer names, sizes or dtypes differ from the group's are refused with an error
//   that names the first mismatching buffer.
//
// Thread rules: register buffers and call sync from the application thread, between collective
// operations (none in flight). The buffers must stay valid and untouched during a sync: this
// peer serves them to others until the whole group is done.

#include <cstdint>
#include <string>
#include <vector>

#include "collectives/types.h"
#include "p2p/base/status.h"

namespace loco::collectives {

enum class SyncStrategy : std::uint8_t {
  kEnforcePopular = 1,  // vote with what this peer holds; take the group's content where it lost
  kReceiveOnly = 2,     // a newcomer that holds nothing yet: take everything from the group
  kSendOnly = 3,        // this peer must win (it restores a checkpoint); kAborted if it loses
};

inline constexpr std::uint32_t kDefaultStateChunkBytes = 1u << 20;
inline constexpr std::uint32_t kMaxCorruptChunksPerSource = 3;

struct SyncOptions {
  SyncStrategy strategy = SyncStrategy::kEnforcePopular;
  // Sources fetched from at once; 0: every peer that holds needed chunks. The others stand by
  // and replace a source that dies. 1 gives the single-source baseline of `loco bench join`.
  std::size_t max_sources = 0;
  std::uint32_t requests_per_source = 8;  // chunks in flight per source
  // Caps the upload this peer spends serving chunks to others (0: unlimited), so a volunteer's
  // uplink is not saturated by joiners.
  double max_serve_mbit = 0;
  // Tests only: this peer flips one byte in every chunk it serves (a corrupt source).
  bool corrupt_served_chunks_for_tests = false;
};

// What one sync did on this peer.
struct SyncReport {
  std::uint64_t revision = 0;          // this peer's revision now
  std::uint64_t elected_revision = 0;  // the revision whose content won
  std::uint64_t bytes_sent = 0;        // chunk bytes served to others during this sync
  std::uint64_t bytes_received = 0;    // verified chunk bytes written into this peer's buffers
  std::size_t chunks_received = 0;
  std::size_t chunks_rejected = 0;  // failed their hash check (fetched again elsewhere)
  std::size_t sources_used = 0;     // peers this peer downloaded from
  std::size_t sources_dropped = 0;  // sources that died, left or served corrupt data
  bool drift = false;           // this peer was current, yet had to download: its state had drifted
  double seconds = 0;           // the whole call
  double transfer_seconds = 0;  // from the coordinator's plan to the last verified chunk
};

// The application's registered buffers. Not thread-safe; owned by the application thread.
class SharedState {
 public:
  explicit SharedState(std::uint32_t chunk_bytes = kDefaultStateChunkBytes);

  // Registers `count` elements at `data` under `name`. Every peer must register the same
  // buffers (names, dtypes, counts) in the same order. kInvalidArgument: empty or duplicate
  // name, null data with count > 0, a name longer than 256 bytes, too many buffers or chunks.
  Status add(std::string name, DType dtype, void* data, std::size_t count);

  std::size_t buffers() const { return buffers_.size(); }
  std::size_t bytes() const;
  std::size_t chunks() const;
  std::uint64_t revision() const { return revision_; }
  // One step newer: the application changed the content as every member did (see above).
  void advanceRevision() { ++revision_; }
  // XXH3-64 of every chunk, buffers in order (what a sync compares).
  std::vector<std::uint64_t> chunkHashes() const;
  // One hash of the whole content (of chunkHashes()): equal digests, equal state.
  std::uint64_t digest() const;

 private:
  friend class StateEngine;
  struct Entry {
    std::string name;
    DType dtype;
    std::uint8_t* data;
    std::size_t count;
    std::size_t bytes() const { return count * dtypeSize(dtype); }
  };
  std::vector<Entry> buffers_;
  std::uint32_t chunk_bytes_;
  std::uint64_t revision_ = 0;
  bool synced_once_ = false;
};

}  // namespace loco::collectives
