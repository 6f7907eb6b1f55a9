#pragma once
// An in-memory network of transports (transport.h) for unit tests: the algorithms, the engine's
// commit/abort and restore-on-abort run without sockets or processes. Single-threaded and
// deterministic: run() executes queued work (deliveries, completions, posted tasks) in order and
// jumps virtual time to the next alarm when nothing else is left. Faults: a peer can be killed
// (its links break, like kill -9), killed after a given number of sends (mid-operation), or
// stalled (nothing of it runs or arrives, like SIGSTOP).
//
// Thread rules: one thread (the test's) for everything, post() included.

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "collectives/transport.h"

namespace loco::collectives {

class MemoryNetwork {
 public:
  explicit MemoryNetwork(std::size_t peers, std::uint64_t seed = 0);
  ~MemoryNetwork();
  MemoryNetwork(const MemoryNetwork&) = delete;
  MemoryNetwork& operator=(const MemoryNetwork&) = delete;

  Transport& transport(std::size_t rank);
  std::size_t peers() const { return endpoints_.size(); }

  // Runs queued work until `until()` holds (checked between steps) or nothing is left; virtual
  // time jumps to the next alarm when idle. False if `max_steps` ran out first.
  bool run(const std::function<bool()>& until = {}, std::size_t max_steps = 50'000'000);
  // Runs queued work until none is left, without letting virtual time pass (no alarm fires).
  void runPending();
  // Posts `fn` as work of `rank` (skipped if the rank is dead or stalled by then).
  void post(std::size_t rank, std::function<void()> fn);

  void kill(std::size_t rank);
  // Lets `rank` start `sends` more sends; it dies during the last one (that message is lost).
  void killAfterSends(std::size_t rank, std::size_t sends);
  void stall(std::size_t rank);
  bool alive(std::size_t rank) const;
  TimePoint now() const { return now_; }
  std::size_t messagesSent() const { return messages_; }

 private:
  class Endpoint;
  struct Message {
    std::size_t from, to;
    std::uint64_t tag;
    std::uint64_t generation;  // of the (from, to) link when sent
    std::vector<std::uint8_t> bytes;
  };
  struct Task {
    std::size_t rank;
    std::function<void()> fn;
  };
  struct AlarmEntry {
    std::size_t rank;
    std::function<void()> fn;
    std::shared_ptr<bool> cancelled;
  };

  void deliver(Message m);
  // Runs one delivery or task; false when there is none.
  bool step();
  std::uint64_t nextRandom();
  // Breaks every link of `rank`: pending transfers on both ends fail, bytes in flight vanish.
  void breakLinks(std::size_t rank, const Status& own, const Status& others);
  std::uint64_t& generation(std::size_t from, std::size_t to);
  bool runnable(std::size_t rank) const;

  std::vector<std::unique_ptr<Endpoint>> endpoints_;
  std::vector<std::uint64_t> generations_;  // per ordered pair
  std::deque<Task> tasks_;
  std::vector<Message> in_flight_;  // not yet delivered
  std::uint64_t rng_;
  std::multimap<TimePoint, AlarmEntry> alarms_;
  std::vector<Message> held_;  // to or from a stalled peer
  TimePoint now_{};
  std::size_t messages_ = 0;
};

}  // namespace loco::collectives
