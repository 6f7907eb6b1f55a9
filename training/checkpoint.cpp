#include "training/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace loco::training {
namespace {

static_assert(std::endian::native == std::endian::little,
              "checkpoints are written in host order = little-endian");

constexpr std::array<char, 8> kMagic = {'L', 'O', 'C', 'O', 'C', 'K', 'P', 'T'};
constexpr std::uint32_t kVersion = 3;
constexpr std::uint32_t kOldestVersion = 1;     // no batch fields
constexpr std::size_t kBatchBytes = 2 * 8;      // version 2's batch and schedule_samples
constexpr std::size_t kStreamingBytes = 4 * 8;  // version 3's local_step and pending steps
constexpr std::size_t kSections = 5;
constexpr std::size_t kHeaderBytes = 8 + 4 + 4 + 5 * 4 + 4 * 8;
constexpr std::size_t kChecksumBytes = 8;

template <typename T>
void put(std::vector<std::uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

void putFloats(std::vector<std::uint8_t>& out, const std::vector<float>& v) {
  put<std::uint64_t>(out, v.size());
  const auto* p = reinterpret_cast<const std::uint8_t*>(v.data());
  out.insert(out.end(), p, p + v.size() * sizeof(float));
}

class Reader {
 public:
  Reader(const std::vector<std::uint8_t>& bytes, std::size_t end) : bytes_(bytes), end_(end) {}
  template <typename T>
  bool get(T& v) {
    if (end_ - pos_ < sizeof(T)) return false;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool getFloats(std::vector<float>& v, std::uint64_t count) {
    if ((end_ - pos_) / sizeof(float) < count) return false;
    v.resize(count);
    if (count > 0)
      std::memcpy(v.data(), bytes_.data() + pos_, count * sizeof(float));  // data() may be null
    pos_ += count * sizeof(float);
    return true;
  }
  void skip(std::size_t n) { pos_ += std::min(n, end_ - pos_); }
  std::size_t pos() const { return pos_; }

 private:
  const std::vector<std::uint8_t>& bytes_;
  std::size_t end_;
  std::size_t pos_ = 0;
};

Status ioError(std::string_view what, const std::string& path, int err) {
  return Status(StatusCode::kIoError,
                fmt::format("checkpoint: {} {}: {}", what, path, std::strerror(err)));
}

Status writeAll(int fd, const std::uint8_t* data, std::size_t size, const std::string& path) {
  std::size_t done = 0;
  while (done < size) {  // bounded: each pass writes bytes or returns
    ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ioError("writing", path, errno);
    if (n == 0)
      return Status(StatusCode::kIoError,
                    fmt::format("checkpoint: writing {} made no progress", path));
    done += static_cast<std::size_t>(n);
  }
  return Status::ok();
}

Status fsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ioError("opening directory", dir, errno);
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0) return ioError("syncing directory", dir, e);
  return Status::ok();
}

Status dataLoss(const std::string& path, std::string why) {
  return Status(
      StatusCode::kDataLoss,
      fmt::format("checkpoint {} is unusable: {}; restore it from a copy or start without it", path,
                  why));
}

}  // namespace

Status saveCheckpoint(const std::string& path, const TrainingState& s) {
  LOCO_RETURN_IF_ERROR(validateModelConfig(s.model).withContext("checkpoint " + path));
  const std::uint64_t n = paramCount(s.model);
  const std::array<std::pair<const char*, const std::vector<float>*>, kSections> sections = {{
      {"params", &s.params},
      {"outer_params", &s.outer_params},
      {"outer_momentum", &s.outer_momentum},
      {"adam_m", &s.adam_m},
      {"adam_v", &s.adam_v},
  }};
  for (const auto& [name, v] : sections) {
    if (!v->empty() && v->size() != n) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("checkpoint {}: {} holds {} values, the model has {} parameters",
                                path, name, v->size(), n));
    }
  }

  std::vector<std::uint8_t> out;
  out.reserve(kHeaderBytes + kSections * 8 + 5 * n * sizeof(float) + kBatchBytes + kStreamingBytes +
              kChecksumBytes);
  out.insert(out.end(), kMagic.begin(), kMagic.end());
  put<std::uint32_t>(out, kVersion);
  put<std::uint32_t>(out, 0);
  for (std::uint32_t f :
       {s.model.width, s.model.layers, s.model.heads, s.model.context, s.model.vocab}) {
    put<std::uint32_t>(out, f);
  }
  for (std::uint64_t f : {s.seed, s.step, s.outer_step, s.adam_steps}) put<std::uint64_t>(out, f);
  for (const auto& [name, v] : sections) putFloats(out, *v);
  put<std::uint64_t>(out, s.batch);
  put<std::uint64_t>(out, s.schedule_samples);
  for (std::uint64_t f : {s.local_step, s.pending_steps, s.pending_losses})
    put<std::uint64_t>(out, f);
  put<double>(out, s.pending_loss_sum);
  put<std::uint64_t>(out, XXH3_64bits(out.data(), out.size()));

  const std::filesystem::path target(path);
  const std::string dir =
      target.has_parent_path() ? target.parent_path().string() : std::string(".");
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ioError("creating", tmp, errno);
  Status st = writeAll(fd, out.data(), out.size(), tmp);
  if (st.isOk() && ::fsync(fd) != 0) st = ioError("syncing", tmp, errno);
  if (::close(fd) != 0 && st.isOk()) st = ioError("closing", tmp, errno);
  if (st.isOk() && ::rename(tmp.c_str(), path.c_str()) != 0)
    st = ioError("renaming over", path, errno);
  if (!st.isOk()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return fsyncDir(dir);
}

Result<TrainingState> loadCheckpoint(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      return Status(StatusCode::kNotFound, fmt::format("checkpoint {} does not exist", path));
    }
    return ioError("opening", path, errno);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return ioError("reading the size of", path, e);
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < kHeaderBytes + kChecksumBytes) {
    ::close(fd);
    return dataLoss(path,
                    fmt::format("{} bytes is shorter than any checkpoint (truncated?)", size));
  }
  // Read the header first: it bounds the size a genuine file can have before we allocate for it.
  std::vector<std::uint8_t> bytes(kHeaderBytes);
  std::size_t done = 0;
  auto readUpTo = [&](std::size_t want) -> Status {
    while (done < want) {  // bounded: each pass reads bytes or returns
      ssize_t r = ::read(fd, bytes.data() + done, want - done);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return ioError("reading", path, errno);
      if (r == 0) return dataLoss(path, "the file ended early (truncated)");
      done += static_cast<std::size_t>(r);
    }
    return Status::ok();
  };
  Status rs = readUpTo(kHeaderBytes);
  if (!rs.isOk()) {
    ::close(fd);
    return rs;
  }
  if (std::memcmp(bytes.data(), kMagic.data(), kMagic.size()) != 0) {
    ::close(fd);
    return dataLoss(path, "it does not start with LOCOCKPT (not a loco checkpoint)");
  }
  TrainingState s;
  std::uint32_t version = 0;
  std::uint32_t reserved = 0;
  {
    Reader hr(bytes, kHeaderBytes);
    std::array<char, 8> magic{};
    (void)hr.get(magic);
    (void)hr.get(version);
    (void)hr.get(reserved);
    (void)hr.get(s.model.width);
    (void)hr.get(s.model.layers);
    (void)hr.get(s.model.heads);
    (void)hr.get(s.model.context);
    (void)hr.get(s.model.vocab);
    (void)hr.get(s.seed);
    (void)hr.get(s.step);
    (void)hr.get(s.outer_step);
    (void)hr.get(s.adam_steps);
  }
  if (version < kOldestVersion || version > kVersion) {
    ::close(fd);
    return dataLoss(path, fmt::format("format version {} is not one of the supported {}..{}",
                                      version, kOldestVersion, kVersion));
  }
  if (Status v = validateModelConfig(s.model); !v.isOk()) {
    ::close(fd);
    return dataLoss(path, "its header holds an invalid model (" + v.message() + ")");
  }
  const std::uint64_t n = paramCount(s.model);
  const std::uint64_t max_size = kHeaderBytes + kSections * (8 + n * sizeof(float)) + kBatchBytes +
                                 kStreamingBytes + kChecksumBytes;
  if (size > max_size) {
    ::close(fd);
    return dataLoss(
        path, fmt::format("{} bytes is more than a checkpoint of this model can hold ({})", size,
                          max_size));
  }
  bytes.resize(size);
  rs = readUpTo(size);
  ::close(fd);
  if (!rs.isOk()) return rs;

  const std::size_t body = size - kChecksumBytes;
  std::uint64_t stored = 0;
  std::memcpy(&stored, bytes.data() + body, sizeof(stored));
  if (XXH3_64bits(bytes.data(), body) != stored) {
    return dataLoss(path, "its checksum does not match its contents (corrupted or truncated)");
  }
  Reader r(bytes, body);
  r.skip(kHeaderBytes);  // parsed above
  std::vector<float>* sections[kSections] = {&s.params, &s.outer_params, &s.outer_momentum,
                                             &s.adam_m, &s.adam_v};
  const char* names[kSections] = {"params", "outer_params", "outer_momentum", "adam_m", "adam_v"};
  for (std::size_t i = 0; i < kSections; ++i) {
    std::uint64_t count = 0;
    if (!r.get(count) || (count != 0 && count != n) || !r.getFloats(*sections[i], count)) {
      return dataLoss(path, fmt::format("section {} is malformed", names[i]));
    }
  }
  if (version >= 2 && (!r.get(s.batch) || !r.get(s.schedule_samples))) {
    return dataLoss(path, "the batch fields are missing (truncated?)");
  }
  if (version >= 3 && (!r.get(s.local_step) || !r.get(s.pending_steps) ||
                       !r.get(s.pending_losses) || !r.get(s.pending_loss_sum))) {
    return dataLoss(path, "the streaming fields are missing (truncated?)");
  }
  if (r.pos() != body)
    return dataLoss(path,
                    fmt::format("{} unexpected bytes after the last section", body - r.pos()));
  return s;
}

Result<TrainingState> loadCheckpoint(const std::string& path, const ModelConfig& expected) {
  Result<TrainingState> s = loadCheckpoint(path);
  if (!s.isOk()) return s;
  LOCO_RETURN_IF_ERROR(checkSameShape(expected, s->model, "checkpoint " + path));
  return s;
}

}  // namespace loco::training
