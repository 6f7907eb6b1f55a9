#pragma once
// A temporary directory removed with everything in it when the test ends.

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace loco::training::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "loco_training_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

  // Writes `content` to `name` (creating parent directories) and returns its path.
  std::string write(const std::string& name, const std::string& content) const {
    const auto p = path_ / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }

 private:
  std::filesystem::path path_;
};

// Deterministic English-like text with a lot of structure, so a tiny model learns fast.
inline std::string sampleText(std::size_t bytes) {
  static const char* kWords[] = {"the",  "quick", "brown", "fox",  "jumps", "over",
                                 "lazy", "dog",   "and",   "a",    "cat",   "sat",
                                 "on",   "mat",   "while", "bird", "sings"};
  std::string out;
  std::uint64_t x = 12345;
  while (out.size() < bytes) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    out += kWords[(x >> 33) % (sizeof(kWords) / sizeof(kWords[0]))];
    out += ((x >> 20) % 9 == 0) ? ".\n" : " ";
  }
  out.resize(bytes);
  return out;
}

}  // namespace loco::training::testing
