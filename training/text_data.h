#pragma once
// Byte-level tokenizer, text corpus and batch sampling (ARCHITECTURE.md §6). No LibTorch: a batch
// is a list of window offsets into the corpus, turned into tensors by the trainer.
//
// Corpus: a file, or a directory walked recursively. Files are read in sorted path order (so the
// corpus is the same bytes on every machine whatever the directory order) and concatenated.
// Skipped: binary files (any NUL byte), `.dat` files (fortune's strfile indexes) and, inside a
// directory, symbolic links (fortune's `*.u8` links would duplicate their targets, and links are
// how directory walks loop). The last `val_fraction` of the concatenation is the validation split.
//
// Sampling is a pure function of (seed, rank, step, row): nothing about it needs saving in a
// checkpoint, and a resumed run draws exactly the batches the uninterrupted run would have.
//
// Thread rules: a loaded TextCorpus is immutable and may be shared by any number of threads (the
// trainers of several in-process peers share one). Loading blocks on file I/O.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "p2p/base/status.h"

namespace loco::training {

// Debian's `fortunes` package (installed by .ci/install-deps).
inline constexpr std::string_view kDefaultCorpusPath = "/usr/share/games/fortunes";

// The tokenizer: token = byte value.
std::vector<std::uint8_t> encodeText(std::string_view text);
std::string decodeTokens(std::span<const std::uint8_t> tokens);

// How peers split the training data.
//   kIid         every peer draws random windows from the whole train split, each from its own
//                random stream (the default; what DiLoCo's i.i.d. results assume)
//   kContiguous  peer r of N draws only from the r-th contiguous 1/N slice of the train split
//                (non-i.i.d.: the fortunes files differ by topic, so slices do too)
enum class Sharding : std::uint8_t { kIid, kContiguous };
std::string_view shardingName(Sharding s);
// "iid" or "contiguous"; kInvalidArgument otherwise.
Result<Sharding> parseSharding(std::string_view name);

struct CorpusOptions {
  std::string path{kDefaultCorpusPath};
  double val_fraction = 0.05;            // (0, 0.5]
  std::uint64_t max_bytes = 1ull << 32;  // refuse bigger corpora rather than exhaust memory
  std::uint32_t max_files = 1u << 20;    // bound on the directory walk
};

class TextCorpus {
 public:
  // Reads the corpus. `context` is the model's context: both splits must hold at least
  // context + 1 bytes (one window of inputs plus its shifted targets).
  // Errors: kNotFound (path missing), kInvalidArgument (no text files there, too few bytes,
  // bad val_fraction), kResourceExhausted (beyond max_bytes / max_files), kIoError (read failed).
  // Every message names the path.
  static Result<std::shared_ptr<const TextCorpus>> load(const CorpusOptions& options,
                                                        std::uint32_t context);
  // An in-memory corpus (tests, benchmarks); same split and size checks as load().
  static Result<std::shared_ptr<const TextCorpus>> fromBytes(std::vector<std::uint8_t> bytes,
                                                             double val_fraction,
                                                             std::uint32_t context,
                                                             std::string origin = "memory");

  std::span<const std::uint8_t> train() const { return {bytes_.data(), train_size_}; }
  std::span<const std::uint8_t> validation() const {
    return {bytes_.data() + train_size_, bytes_.size() - train_size_};
  }
  std::size_t totalBytes() const { return bytes_.size(); }
  // Files that contributed, in corpus order (empty for fromBytes).
  const std::vector<std::string>& files() const { return files_; }
  const std::string& origin() const { return origin_; }

  TextCorpus(std::vector<std::uint8_t> bytes, std::size_t train_size,
             std::vector<std::string> files, std::string origin)
      : bytes_(std::move(bytes)),
        train_size_(train_size),
        files_(std::move(files)),
        origin_(std::move(origin)) {}

 private:
  std::vector<std::uint8_t> bytes_;
  std::size_t train_size_;
  std::vector<std::string> files_;
  std::string origin_;
};

// Who draws a batch. `world` and `rank` matter for kContiguous (which slice) and for kIid (which
// random stream); `seed` is the run's seed.
struct ShardSpec {
  std::uint64_t seed = 0;
  std::uint32_t rank = 0;
  std::uint32_t world = 1;
  Sharding sharding = Sharding::kIid;
  // The i.i.d. random stream; unset: the rank. Set when the stream is derived from the peer's
  // identity (data_assignment.h) rather than from a --rank.
  std::optional<std::uint64_t> stream;
};

// kInvalidArgument when rank >= world, world == 0, or this peer's slice of `train_size` bytes is
// shorter than one window (context + 1).
Status checkShard(const ShardSpec& spec, std::size_t train_size, std::uint32_t context);

// Start offsets (into the train split) of the `out.size()` windows of `step`'s batch; each
// window covers context + 1 bytes. Pure and deterministic; row i does not depend on out.size(),
// so growing the batch keeps the rows already drawn. Call checkShard first.
void sampleWindows(const ShardSpec& spec, std::size_t train_size, std::uint32_t context,
                   std::uint64_t step, std::span<std::size_t> out);

// `count` fixed window offsets spread evenly over a split of `size` bytes (the same on every
// peer and every run, so validation losses are comparable). Windows overlap when the split is
// short. Requires size >= context + 1.
std::vector<std::size_t> evenWindows(std::size_t size, std::uint32_t context, std::size_t count);

}  // namespace loco::training
