// Corpus loading, the byte tokenizer and batch sampling (training/text_data.h).

#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "temp_dir.h"
#include "training/text_data.h"

namespace loco::training {
namespace {

using testing::sampleText;
using testing::TempDir;

constexpr std::uint32_t kContext = 16;

CorpusOptions at(const std::string& path) {
  CorpusOptions o;
  o.path = path;
  return o;
}

TEST(Tokenizer, BytesAreTokensBothWays) {
  const std::string text = std::string("h\xc3\xa9llo\n\x01\xff", 9);
  auto tokens = encodeText(text);
  ASSERT_EQ(tokens.size(), 9u);
  EXPECT_EQ(tokens[1], 0xc3);
  EXPECT_EQ(tokens[8], 0xff);
  EXPECT_EQ(decodeTokens(tokens), text);
}

TEST(Corpus, MissingPathIsNotFoundAndNamesThePath) {
  TempDir dir;
  auto r = TextCorpus::load(at(dir.file("nope")), kContext);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(dir.file("nope")), std::string::npos)
      << r.status().toString();
}

TEST(Corpus, EmptyDirectoryHasNoText) {
  TempDir dir;
  auto r = TextCorpus::load(at(dir.path().string()), kContext);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("no text files"), std::string::npos) << r.status().toString();
}

TEST(Corpus, BinaryOnlyDirectorySaysWhatWasSkipped) {
  TempDir dir;
  dir.write("a.bin", std::string("abc\0def", 7) + sampleText(500));
  dir.write("cookie.dat", sampleText(500));  // text, but a .dat index by name: skipped
  auto r = TextCorpus::load(at(dir.path().string()), kContext);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("1 binary"), std::string::npos) << r.status().toString();
  EXPECT_NE(r.status().message().find("1 .dat"), std::string::npos) << r.status().toString();
}

TEST(Corpus, TooFewBytesForTheContext) {
  TempDir dir;
  const std::string file = dir.write("tiny.txt", "0123456789abcdef");  // 16 bytes < 2·(16+1)
  auto r = TextCorpus::load(at(file), kContext);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("16 bytes"), std::string::npos) << r.status().toString();
  EXPECT_NE(r.status().message().find("context 16"), std::string::npos) << r.status().toString();
}

TEST(Corpus, WalksRecursivelyInSortedOrderSkippingBinariesDatAndLinks) {
  TempDir dir;
  const std::string b = dir.write("b.txt", std::string(100, 'b'));
  dir.write("sub/deeper/a.txt", std::string(100, 'a'));
  dir.write("c.txt.dat", std::string(100, 'x'));
  dir.write("d.bin", std::string("\0\0\0\0", 4));
  std::filesystem::create_symlink(b, dir.file("z.u8"));  // fortune's .u8 links duplicate text
  auto r = TextCorpus::load(at(dir.path().string()), kContext);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  const TextCorpus& c = **r;
  ASSERT_EQ(c.files().size(), 2u);
  EXPECT_EQ(c.files()[0], b);  // "b.txt" < "sub/..."
  EXPECT_EQ(c.totalBytes(), 200u);
  // The validation split is the end of the concatenation: max(5%, one window) = 17 bytes of 'a'.
  EXPECT_EQ(c.validation().size(), kContext + 1);
  EXPECT_EQ(c.train().size(), 200u - (kContext + 1));
  EXPECT_EQ(c.train()[0], 'b');
  EXPECT_EQ(c.validation()[0], 'a');
}

TEST(Corpus, ValidationIsTheLastFivePercent) {
  auto r = TextCorpus::fromBytes(encodeText(sampleText(10000)), 0.05, kContext);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ((*r)->validation().size(), 500u);
  EXPECT_EQ((*r)->train().size(), 9500u);
  auto bad = TextCorpus::fromBytes(encodeText(sampleText(10000)), 0.7, kContext);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(Corpus, DefaultFortunesCorpusLoadsWhenInstalled) {
  if (!std::filesystem::exists(std::string(kDefaultCorpusPath)))
    GTEST_SKIP() << "fortunes not installed";
  auto r = TextCorpus::load(CorpusOptions{}, 64);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_GT((*r)->totalBytes(), 1'000'000u);
  for (const auto& f : (*r)->files()) {
    EXPECT_FALSE(f.ends_with(".dat")) << f;
    EXPECT_FALSE(f.ends_with(".u8")) << f;
  }
}

TEST(Sampling, PureFunctionOfSeedRankStep) {
  ShardSpec a{.seed = 7, .rank = 0, .world = 4, .sharding = Sharding::kIid};
  std::vector<std::size_t> x(16), y(16), z(16), w(32);
  sampleWindows(a, 100000, kContext, 5, x);
  sampleWindows(a, 100000, kContext, 5, y);
  EXPECT_EQ(x, y);
  sampleWindows(a, 100000, kContext, 6, z);
  EXPECT_NE(x, z);
  // Growing the batch keeps the rows already drawn (adaptive batch, micro-batches).
  sampleWindows(a, 100000, kContext, 5, w);
  EXPECT_TRUE(std::equal(x.begin(), x.end(), w.begin()));
  ShardSpec b = a;
  b.rank = 1;
  sampleWindows(b, 100000, kContext, 5, y);
  EXPECT_NE(x, y) << "peers must draw from different random streams";
  for (std::size_t o : w) EXPECT_LE(o + kContext + 1, 100000u);
}

TEST(Sampling, ContiguousShardsStayInTheirSlice) {
  const std::size_t size = 4000;
  for (std::uint32_t rank = 0; rank < 4; ++rank) {
    ShardSpec s{.seed = 1, .rank = rank, .world = 4, .sharding = Sharding::kContiguous};
    ASSERT_TRUE(checkShard(s, size, kContext).isOk());
    std::vector<std::size_t> out(256);
    for (std::uint64_t step = 0; step < 8; ++step) {
      sampleWindows(s, size, kContext, step, out);
      for (std::size_t o : out) {
        EXPECT_GE(o, rank * 1000u);
        EXPECT_LE(o + kContext + 1, (rank + 1) * 1000u);
      }
    }
  }
  ShardSpec tooMany{.seed = 1, .rank = 0, .world = 300, .sharding = Sharding::kContiguous};
  EXPECT_EQ(checkShard(tooMany, size, kContext).code(), StatusCode::kInvalidArgument);
  ShardSpec badRank{.seed = 1, .rank = 4, .world = 4, .sharding = Sharding::kIid};
  EXPECT_EQ(checkShard(badRank, size, kContext).code(), StatusCode::kInvalidArgument);
}

TEST(Sampling, IidCoversTheWholeSplit) {
  ShardSpec s{.seed = 3, .rank = 2, .world = 4, .sharding = Sharding::kIid};
  std::vector<std::size_t> out(16384);
  sampleWindows(s, 1000, kContext, 0, out);
  std::set<std::size_t> seen(out.begin(), out.end());
  EXPECT_EQ(seen.size(), 1000u - kContext);  // every start 0..983 drawn at least once
}

TEST(Sampling, EvenWindowsAreFixedAndInRange) {
  auto w = evenWindows(500, kContext, 8);
  ASSERT_EQ(w.size(), 8u);
  EXPECT_EQ(w.front(), 0u);
  EXPECT_EQ(w.back(), 500u - kContext - 1);
  EXPECT_EQ(w, evenWindows(500, kContext, 8));
  EXPECT_EQ(evenWindows(kContext + 1, kContext, 3), (std::vector<std::size_t>{0, 0, 0}));
}

TEST(Sampling, ParseSharding) {
  EXPECT_EQ(*parseSharding("iid"), Sharding::kIid);
  EXPECT_EQ(*parseSharding("contiguous"), Sharding::kContiguous);
  EXPECT_FALSE(parseSharding("random").isOk());
}

}  // namespace
}  // namespace loco::training
