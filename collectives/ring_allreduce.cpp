#include "collectives/ring_allreduce.h"

#include <algorithm>

#include "collectives/compress.h"

namespace loco::collectives {
namespace {
// Pieces of at least 64 KiB of fp32 (fewer and the per-transfer overhead shows) and at most
// 256 KiB: each piece in flight holds receive buffers, so memory grows with the pieces in flight,
// not with the buffer.
constexpr std::size_t kMinPieceElems = 16384;
constexpr std::size_t kMaxPieceElems = std::size_t{1} << 16;
// What this peer keeps in flight: a piece travels 2(N-1) hops before it is done here, and every
// hop's link must stay busy, so (2N-2) x 1.5 x the next link's bandwidth-delay product, between
// 512 KiB and 16 MiB; 4 MiB while the link is unknown (the first operation: loopback and LANs
// settle at the floor, and a large first window only raises the peak memory, measured 580 MiB at
// 256 MiB, N = 4 with 16 MiB, over the 2x + 64 MiB bound). On loopback or a LAN that is the floor:
// more only spreads the pieces over more memory than the caches hold (measured on this 2-core
// machine, 64 MiB, N = 2: 512 KiB in flight took about half the CPU time of 16 MiB). On a WAN a
// window too small for the link shows a lower rate, and the next operation's window follows the
// product it measures.
constexpr std::size_t kMinWindowBytes = 512u << 10;
constexpr std::size_t kMaxWindowBytes = 16u << 20;
constexpr std::size_t kUnknownLinkWindowBytes = 4u << 20;
constexpr std::size_t kMaxPiecesInFlight = 256;
}  // namespace

std::pair<std::size_t, std::size_t> RingAllReduce::segment(std::size_t n, std::size_t world,
                                                           std::size_t s) {
  const std::size_t begin = n * s / world, end = n * (s + 1) / world;
  return {begin, end - begin};
}

std::size_t RingAllReduce::piecesPerSegment(std::size_t n, std::size_t world) {
  const std::size_t seg = n / world;
  return std::max(std::clamp<std::size_t>(seg / kMinPieceElems, 1, 16),
                  std::min((seg + kMaxPieceElems - 1) / kMaxPieceElems, kMaxPiecesPerStep));
}

std::size_t RingAllReduce::sendSegment(std::size_t world, std::size_t rank, std::size_t step) {
  const std::size_t N = world, r = rank, s = step;
  return s < N ? (r + N - (s - 1)) % N : (r + 1 + N - (s - N)) % N;
}

std::size_t RingAllReduce::recvSegment(std::size_t world, std::size_t rank, std::size_t step) {
  const std::size_t N = world, r = rank, s = step;
  return s < N ? (r + 2 * N - s) % N : (r + N - (s - N)) % N;
}

std::pair<std::size_t, std::size_t> RingAllReduce::piece(std::size_t seg, std::size_t p) const {
  auto [sb, sl] = segment(n_, world_, seg);
  const std::size_t b = sl * p / pieces_, e = sl * (p + 1) / pieces_;
  return {sb + b, e - b};
}

void RingAllReduce::start() {
  world_ = group.world();
  rank_ = group.rank;
  checkDescriptors(descriptor(), {group.next()}, {group.prev()});
  if (world_ == 1) {  // alone: the input is the result
    complete_ = true;
    return dataComplete();
  }
  pieces_ = piecesPerSegment(n_, world_);
  piece_state_.resize(pieces_);
  // The window: pieces in flight (each peer chooses its own; the pieces are the same for all).
  const LinkStats link = transport().linkStats(group.next());
  compress_ = compressOn(args_.compress, wire_, link);
  std::size_t window = kUnknownLinkWindowBytes;
  if (link.rtt_s > 0 && link.rate_Bps > 0) {
    const double bdp = link.rtt_s * link.rate_Bps;
    window = std::clamp(static_cast<std::size_t>(1.5 * static_cast<double>(2 * world_ - 2) * bdp),
                        kMinWindowBytes, kMaxWindowBytes);
  }
  // In bytes on the wire: an int4 piece is an eighth of its fp32 size, so it takes eight times
  // as many pieces to fill the same link (counting fp32 bytes kept int4 rings at an eighth of the
  // window on a WAN: lab, 100 Mbit/s, 25 ms, 64 MiB, N = 4, int4 took 7.6 s for 12 MiB a link).
  const std::size_t piece_bytes =
      std::max<std::size_t>(1, encoded(std::max<std::size_t>(1, n_ / world_ / pieces_)));
  in_flight_ = std::clamp<std::size_t>(window / piece_bytes, 2, kMaxPiecesInFlight);
  startPieces();
}

// Every peer starts pieces in the same order, a new one each time one finishes here.
void RingAllReduce::startPieces() {
  while (started_ < pieces_ && started_ - finished_ < in_flight_ && !ended) {
    const std::size_t p = started_++;
    postRecv(p, 1);
    if (wire_ == Wire::kRaw) {
      for (std::size_t s = world_; s <= 2 * world_ - 2 && !ended; ++s) postRecv(p, s);
    }
    if (!ended) sendPiece(p, 1, Buffer());
  }
}

void RingAllReduce::postRecv(std::size_t p, std::size_t step) {
  auto [b, len] = piece(recvSegment(world_, rank_, step), p);
  MutableByteSpan dst;
  if (wire_ == Wire::kRaw && step >= world_) {
    protect(b, len);  // the kernel writes these bytes straight into the buffer
    dst = MutableByteSpan(reinterpret_cast<std::uint8_t*>(work_ + b), len * sizeof(float));
  } else {
    Buffer& buf = piece_state_[p].in[step & 1];
    const std::size_t need = encoded(len);
    if (buf.capacity() < need) {
      pool().give(std::move(buf));
      buf = pool().take(need);
    }
    buf.resize(need);
    dst = buf.span();
  }
  auto self = std::static_pointer_cast<RingAllReduce>(shared_from_this());
  afterDescriptor(group.prev(), [self, p, step, dst] {
    auto done = [self, p, step](const Status& st, std::size_t length) {
      if (self->ended) return;
      if (!st.isOk()) return self->fail(st);
      // (Raw all-gather receives, all posted at once, land in the buffer and keep no length.)
      if (self->wire_ != Wire::kRaw) self->piece_state_[p].len[step & 1] = length;
      self->onReceived(p, step);
    };
    // Encoded pieces may come compressed (shorter): the sender decides, per link. (Empty pieces,
    // of buffers shorter than the world, are empty on the wire too.)
    if (self->wire_ != Wire::kRaw && !dst.empty()) {
      return self->transport().recvUpTo(self->group.prev(), self->tag(step, p), dst,
                                        std::move(done));
    }
    self->transport().recv(self->group.prev(), self->tag(step, p), dst,
                           [done](const Status& st) { done(st, 0); });
  });
}

void RingAllReduce::onReceived(std::size_t p, std::size_t step) {
  Piece& piece_state = piece_state_[p];
  if (piece_state.busy) {
    // Posting the next receive below can complete it at once (its bytes were staged), inside
    // this call: handle it after this step is through with its buffer.
    auto self = std::static_pointer_cast<RingAllReduce>(shared_from_this());
    return transport().post([self, p, step] {
      if (!self->ended) self->onReceived(p, step);
    });
  }
  piece_state.busy = true;
  receiveStep(p, step);
  piece_state.busy = false;
}

void RingAllReduce::receiveStep(std::size_t p, std::size_t step) {
  const std::size_t N = world_;
  auto [b, len] = piece(recvSegment(N, rank_, step), p);
  std::span<float> dst(work_ + b, len);
  Piece& ps = piece_state_[p];
  if (step < N || wire_ != Wire::kRaw) protect(b, len);
  if (step < N) {  // reduce-scatter
    // The next receive first, so its bytes can land in its buffer rather than be staged.
    if (step + 1 < N || wire_ != Wire::kRaw) postRecv(p, step + 1);
    if (ended) return;
    Buffer plain;
    ByteSpan in = ps.in[step & 1].span();
    if (wire_ != Wire::kRaw && ps.len[step & 1] < in.size()) {
      plain = pool().take(in.size());
      Status st = decompressPiece(in.first(ps.len[step & 1]), plain.span());
      if (!st.isOk()) return fail(st);
      in = plain.span();
    }
    if (step < N - 1) {
      accumulate(dst, in);
      pool().give(std::move(plain));
      return sendPiece(p, step + 1, Buffer());
    }
    accumulateFinal(dst, in, N);
    pool().give(std::move(plain));
    sendPiece(p, N, seal(dst));
    ps.owned = true;
    return maybeFinishPiece(p);
  }
  // All-gather: raw bytes are in place already; quantized ones are decoded and forwarded as
  // they came.
  if (wire_ != Wire::kRaw) {
    if (step < 2 * N - 2) postRecv(p, step + 1);
    if (ended) return;
    Buffer& in = ps.in[step & 1];
    const std::size_t got = ps.len[step & 1];
    if (got < in.size()) {
      Buffer plain = pool().take(in.size());
      Status st = decompressPiece(in.span().first(got), plain.span());
      if (!st.isOk()) return fail(st);
      decode(wire_, plain.span(), dst, quant_block_);
      pool().give(std::move(plain));
    } else {
      decode(wire_, in.span(), dst, quant_block_);
    }
    // Forwarded as they came: the owner compressed them once, everyone decodes the same bytes.
    in.resize(got);
    if (step < 2 * N - 2) sendPiece(p, step + 1, std::move(in));
  } else if (step < 2 * N - 2) {
    sendPiece(p, step + 1, Buffer());
  }
  if (ended) return;
  ++ps.gathered;
  maybeFinishPiece(p);
}

// A piece is through when this peer has finished its own segment's share of it and received
// every other segment's: raw all-gather bytes may arrive before this peer's reduce-scatter of
// the same piece is done (they come from other streams).
void RingAllReduce::maybeFinishPiece(std::size_t p) {
  Piece& ps = piece_state_[p];
  if (ended || !ps.owned || ps.gathered < world_ - 1) return;
  pool().give(std::move(ps.in[0]));
  pool().give(std::move(ps.in[1]));
  ++finished_;
  startPieces();
  maybeComplete();
}

void RingAllReduce::sendPiece(std::size_t p, std::size_t step, Buffer owned) {
  auto [b, len] = piece(sendSegment(world_, rank_, step), p);
  if (wire_ != Wire::kRaw && step < world_) {
    owned = pool().take(encoded(len));
    encode(wire_, std::span<const float>(work_ + b, len), owned.span(), quant_block_);
  }
  if (compress_ && step <= world_) owned = compressed(std::move(owned));
  // Raw pieces go straight from the buffer: nothing writes that range while it is sent.
  auto bytes = std::make_shared<Buffer>(std::move(owned));
  ByteSpan span = wire_ == Wire::kRaw
                      ? ByteSpan(reinterpret_cast<const std::uint8_t*>(work_ + b), len * 4)
                      : ByteSpan(bytes->span());
  ++sends_in_flight_;
  countSent(span.size());
  auto self = std::static_pointer_cast<RingAllReduce>(shared_from_this());
  // Pieces further along go first: they are what the peers downstream wait for, while new
  // pieces only need the link's spare time.
  const int priority = static_cast<int>(step);
  transport().send(
      group.next(), tag(step, p), span,
      [self, bytes](const Status& st) {
        self->pool().give(std::move(*bytes));
        if (self->ended) return;
        --self->sends_in_flight_;
        if (!st.isOk()) return self->fail(st);
        self->maybeComplete();
      },
      priority);
}

Buffer RingAllReduce::compressed(Buffer bytes) {
  Buffer z = pool().take(bytes.size());
  const std::size_t n = compressPiece(bytes.span(), z.span());
  if (n == 0) {
    pool().give(std::move(z));
    return bytes;
  }
  z.resize(n);
  pool().give(std::move(bytes));
  return z;
}

void RingAllReduce::maybeComplete() {
  if (complete_ || finished_ < pieces_ || sends_in_flight_ != 0) return;
  complete_ = true;
  dataComplete();
}

void RingAllReduce::release() {
  for (Piece& ps : piece_state_) {
    pool().give(std::move(ps.in[0]));
    pool().give(std::move(ps.in[1]));
  }
  AllReduce::release();
}

}  // namespace loco::collectives
