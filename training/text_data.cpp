#include "training/text_data.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>

namespace loco::training {
namespace {

namespace fs = std::filesystem;
__extension__ using U128 = unsigned __int128;  // GCC/Clang builtin; -Wpedantic wants it marked

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [0, range) without a division; the bias is below 2^-40 for any corpus we can hold.
std::uint64_t below(std::uint64_t random, std::uint64_t range) {
  return static_cast<std::uint64_t>((static_cast<U128>(random) * range) >> 64);
}

struct WalkStats {
  std::size_t binary = 0;
  std::size_t dat = 0;
  std::size_t links = 0;
  std::size_t other = 0;  // sockets, fifos, devices
};

// Reads a whole regular file. Sets *is_binary instead of failing when it holds a NUL byte.
Status readFile(const std::string& path, std::uint64_t budget, std::vector<std::uint8_t>& out,
                bool* is_binary) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status(StatusCode::kIoError,
                  fmt::format("corpus: cannot open {}: {}", path, std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return Status(StatusCode::kIoError,
                  fmt::format("corpus: cannot stat {}: {}", path, std::strerror(e)));
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > budget) {
    ::close(fd);
    return Status(
        StatusCode::kResourceExhausted,
        fmt::format(
            "corpus: {} would take the corpus beyond its limit of {} bytes; point the data path "
            "at fewer files",
            path, budget));
  }
  const std::size_t start = out.size();
  out.resize(start + size);
  std::size_t done = 0;
  // Bounded: every pass either reads bytes or ends the loop; a file that grows while we read it
  // is cut at the size fstat reported.
  while (done < size) {
    ssize_t n = ::read(fd, out.data() + start + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      out.resize(start);
      return Status(StatusCode::kIoError,
                    fmt::format("corpus: reading {} failed: {}", path, std::strerror(e)));
    }
    if (n == 0) break;  // shrank meanwhile
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  out.resize(start + done);
  *is_binary = std::memchr(out.data() + start, 0, done) != nullptr;
  if (*is_binary) out.resize(start);
  return Status::ok();
}

Result<std::shared_ptr<const TextCorpus>> split(std::vector<std::uint8_t> bytes,
                                                double val_fraction, std::uint32_t context,
                                                std::vector<std::string> files,
                                                std::string origin) {
  if (!(val_fraction > 0.0 && val_fraction <= 0.5)) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("corpus: validation fraction {} is out of range (0, 0.5]", val_fraction));
  }
  const std::size_t window = std::size_t{context} + 1;
  const std::size_t total = bytes.size();
  std::size_t val = static_cast<std::size_t>(std::ceil(static_cast<double>(total) * val_fraction));
  val = std::max(val, window);
  if (total < 2 * window || total - val < window) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format(
            "corpus: {} holds {} bytes of text; context {} needs at least {} ({} for training "
            "and {} for validation); add text or lower the context",
            origin, total, context, 2 * window, window, window));
  }
  const std::size_t train = total - val;
  return std::shared_ptr<const TextCorpus>(
      std::make_shared<TextCorpus>(std::move(bytes), train, std::move(files), std::move(origin)));
}

}  // namespace

std::vector<std::uint8_t> encodeText(std::string_view text) {
  return std::vector<std::uint8_t>(text.begin(), text.end());
}

std::string decodeTokens(std::span<const std::uint8_t> tokens) {
  return std::string(tokens.begin(), tokens.end());
}

std::string_view shardingName(Sharding s) {
  return s == Sharding::kIid ? "iid" : "contiguous";
}

Result<Sharding> parseSharding(std::string_view name) {
  if (name == "iid") return Sharding::kIid;
  if (name == "contiguous") return Sharding::kContiguous;
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown sharding '{}': expected iid or contiguous", name));
}

Result<std::shared_ptr<const TextCorpus>> TextCorpus::load(const CorpusOptions& options,
                                                           std::uint32_t context) {
  const std::string& root = options.path;
  if (root.empty()) return Status(StatusCode::kInvalidArgument, "corpus: the data path is empty");
  std::error_code ec;
  const fs::file_status root_status =
      fs::status(root, ec);  // follows a link given as the path itself
  if (ec || !fs::exists(root_status)) {
    return Status(
        StatusCode::kNotFound,
        fmt::format("corpus: {} does not exist; pass a text file or a directory of text files (the "
                    "default {} comes with Debian's fortunes package: bash .ci/install-deps)",
                    root, kDefaultCorpusPath));
  }

  std::vector<std::string> candidates;
  WalkStats stats;
  if (fs::is_regular_file(root_status)) {
    candidates.push_back(root);
  } else if (fs::is_directory(root_status)) {
    fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
    if (ec) {
      return Status(StatusCode::kIoError,
                    fmt::format("corpus: cannot list {}: {}", root, ec.message()));
    }
    std::uint64_t visited = 0;
    for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) {
        return Status(StatusCode::kIoError,
                      fmt::format("corpus: walking {} failed: {}", root, ec.message()));
      }
      if (++visited > options.max_files) {
        return Status(
            StatusCode::kResourceExhausted,
            fmt::format(
                "corpus: {} holds more than {} entries; point the data path at a smaller tree",
                root, options.max_files));
      }
      const fs::directory_entry& entry = *it;
      if (entry.is_symlink(ec)) {
        ++stats.links;
        continue;
      }
      if (entry.is_directory(ec)) continue;
      if (!entry.is_regular_file(ec)) {
        ++stats.other;
        continue;
      }
      if (entry.path().extension() == ".dat") {
        ++stats.dat;
        continue;
      }
      candidates.push_back(entry.path().string());
    }
    std::sort(candidates.begin(), candidates.end());
  } else {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("corpus: {} is neither a regular file nor a directory", root));
  }

  std::vector<std::uint8_t> bytes;
  std::vector<std::string> files;
  for (const std::string& path : candidates) {
    bool binary = false;
    LOCO_RETURN_IF_ERROR(readFile(path, options.max_bytes - bytes.size(), bytes, &binary));
    if (binary) {
      ++stats.binary;
      continue;
    }
    files.push_back(path);
  }
  if (files.empty()) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("corpus: no text files at {} (skipped {} binary files with NUL bytes, {} .dat "
                    "files, {} symbolic links); pass a file or directory of plain text",
                    root, stats.binary, stats.dat, stats.links));
  }
  return split(std::move(bytes), options.val_fraction, context, std::move(files), root);
}

Result<std::shared_ptr<const TextCorpus>> TextCorpus::fromBytes(std::vector<std::uint8_t> bytes,
                                                                double val_fraction,
                                                                std::uint32_t context,
                                                                std::string origin) {
  return split(std::move(bytes), val_fraction, context, {}, std::move(origin));
}

Status checkShard(const ShardSpec& spec, std::size_t train_size, std::uint32_t context) {
  if (spec.world == 0 || spec.rank >= spec.world) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("data shard: rank {} is not below world {}", spec.rank, spec.world));
  }
  const std::size_t window = std::size_t{context} + 1;
  if (spec.sharding == Sharding::kContiguous && train_size / spec.world < window) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format(
            "data shard: a contiguous 1/{} slice of the {}-byte train split is shorter than one "
            "window of {} bytes; use iid sharding, fewer peers or more text",
            spec.world, train_size, window));
  }
  if (train_size < window) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("data shard: the train split has {} bytes, fewer than one window of {}",
                    train_size, window));
  }
  return Status::ok();
}

void sampleWindows(const ShardSpec& spec, std::size_t train_size, std::uint32_t context,
                   std::uint64_t step, std::span<std::size_t> out) {
  const std::size_t window = std::size_t{context} + 1;
  std::size_t begin = 0;
  std::size_t end = train_size;
  if (spec.sharding == Sharding::kContiguous) {
    const std::size_t slice = train_size / spec.world;
    begin = slice * spec.rank;
    end = spec.rank + 1 == spec.world ? train_size : begin + slice;
  }
  const std::uint64_t starts = end - begin - window + 1;  // checkShard: end - begin >= window
  // Keys chained through splitmix64 so (seed, rank, step) tuples never collide by arithmetic
  // coincidence (seed 1 rank 2 vs seed 2 rank 1).
  const std::uint64_t key =
      splitmix64(splitmix64(splitmix64(spec.seed) ^ spec.stream.value_or(spec.rank)) ^ step);
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = begin + below(splitmix64(key ^ splitmix64(i)), starts);
  }
}

std::vector<std::size_t> evenWindows(std::size_t size, std::uint32_t context, std::size_t count) {
  std::vector<std::size_t> out(count);
  const std::size_t last = size - (std::size_t{context} + 1);  // size >= context + 1
  for (std::size_t i = 0; i < count; ++i) {
    out[i] = count == 1 ? 0 : static_cast<std::size_t>((static_cast<U128>(last) * i) / (count - 1));
  }
  return out;
}

}  // namespace loco::training
