#pragma once
// The pipelined ring all-reduce (ARCHITECTURE.md §5), for large buffers: reduce-scatter, then
// all-gather, each of the world's N segments cut into pieces that travel the ring on their own
// (a piece moves on as soon as it has arrived and been reduced), so links, reductions and the
// next hop overlap. Steps: 0 descriptors; 1..N-1 reduce-scatter; N..2N-2 all-gather. At step N
// peer r owns segment r+1: it finishes it (÷N for avg), encodes it once and takes the decoded
// value itself, so every peer decodes the same bytes.
//
// Memory: the buffer, its backup, and per piece in flight (at most 16 MiB of pieces of at most
// 256 KiB of fp32) two receive buffers. Raw all-gather pieces land straight in the buffer: the
// range they overwrite was sent earlier in the ring, and its bytes had to arrive downstream
// before the piece that overwrites them could come round.

#include "collectives/allreduce.h"

namespace loco::collectives {

class RingAllReduce final : public AllReduce {
 public:
  RingAllReduce(BufferPool& pool, const AllReduceArgs& args)
      : AllReduce(pool, args, Algorithm::kRing) {}
  void start() override;
  void release() override;

  // Piece arithmetic, public for the unit tests. Segment s of n elements over N peers.
  static std::pair<std::size_t, std::size_t> segment(std::size_t n, std::size_t world,
                                                     std::size_t s);
  static std::size_t piecesPerSegment(std::size_t n, std::size_t world);
  // Which segment peer `rank` sends and receives at step s (1 <= s <= 2N-2).
  static std::size_t sendSegment(std::size_t world, std::size_t rank, std::size_t step);
  static std::size_t recvSegment(std::size_t world, std::size_t rank, std::size_t step);

 private:
  struct Piece {
    Buffer in[2];  // receive buffers, alternating: the next step's is posted before reducing
    std::size_t len[2] = {0, 0};  // bytes received into in[]: shorter than in[] when compressed
    bool owned = false;           // this peer's segment of the piece is finished and sent
    std::size_t gathered = 0;     // all-gather steps arrived
    bool busy = false;            // a step of this piece is being handled
  };
  // Element range of piece p of segment `seg`.
  std::pair<std::size_t, std::size_t> piece(std::size_t seg, std::size_t p) const;
  void startPieces();
  void postRecv(std::size_t p, std::size_t step);
  void onReceived(std::size_t p, std::size_t step);
  void receiveStep(std::size_t p, std::size_t step);
  // Sends piece p of step `step`: `owned` bytes, or (raw) the range of work_ directly.
  void sendPiece(std::size_t p, std::size_t step, Buffer owned);
  void maybeFinishPiece(std::size_t p);
  void maybeComplete();
  // `bytes` compressed (compress.h) if that makes them shorter, else `bytes` themselves.
  Buffer compressed(Buffer bytes);

  std::size_t world_ = 1, rank_ = 0, pieces_ = 1;
  std::size_t in_flight_ = 2;  // pieces this peer keeps in flight
  std::size_t started_ = 0, finished_ = 0, sends_in_flight_ = 0;
  bool complete_ = false;
  bool compress_ = false;  // pieces this peer encodes go compressed to the next peer
  std::vector<Piece> piece_state_;
};

}  // namespace loco::collectives
