// Unit tests for the base layer: byte codecs (p2p/base/bytes.h) and Status/Result
// (p2p/base/status.h).

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "p2p/base/bytes.h"
#include "p2p/base/status.h"

namespace loco {
namespace {

using Bytes = std::vector<std::uint8_t>;

// ---- ByteWriter / ByteReader
// ---------------------------------------------------------------------

TEST(Bytes, WriterIsLittleEndian) {
  Bytes out;
  ByteWriter w(out);
  w.u8(0xAB);
  w.u16(0x0102);
  w.u32(0x03040506u);
  w.u64(0x0708090A0B0C0D0Eull);
  w.i64(-2);
  Bytes want = {0xAB, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A,
                0x09, 0x08, 0x07, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
  EXPECT_EQ(out, want);
}

TEST(Bytes, StringsAreU32LengthPrefixed) {
  Bytes out;
  ByteWriter w(out);
  w.str("hi");
  w.str("");
  Bytes raw = {9, 8};
  w.bytes(raw);
  Bytes want = {2, 0, 0, 0, 'h', 'i', 0, 0, 0, 0, 9, 8};
  EXPECT_EQ(out, want);
}

TEST(Bytes, EveryTypeRoundTrips) {
  Bytes out;
  ByteWriter w(out);
  w.u8(0xFF);
  w.u16(0xFFFE);
  w.u32(0xDEADBEEFu);
  w.u64(std::numeric_limits<std::uint64_t>::max());
  w.i64(std::numeric_limits<std::int64_t>::min());
  w.i64(-1);
  w.str(std::string("a\0b", 3));

  ByteReader r(out);
  std::uint8_t a = 0;
  std::uint16_t b = 0;
  std::uint32_t c = 0;
  std::uint64_t d = 0;
  std::int64_t e = 0, f = 0;
  std::string s;
  ASSERT_TRUE(r.u8(a) && r.u16(b) && r.u32(c) && r.u64(d) && r.i64(e) && r.i64(f) && r.str(s, 16));
  EXPECT_EQ(a, 0xFF);
  EXPECT_EQ(b, 0xFFFE);
  EXPECT_EQ(c, 0xDEADBEEFu);
  EXPECT_EQ(d, std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(e, std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(f, -1);
  EXPECT_EQ(s, std::string("a\0b", 3));
  EXPECT_TRUE(r.ok());
  EXPECT_TRUE(r.done());
  EXPECT_EQ(r.remaining(), 0u);
}

TEST(Bytes, ReaderRefusesToReadPastTheEnd) {
  Bytes in = {1, 2, 3};
  ByteReader r(in);
  std::uint32_t v = 0;
  EXPECT_FALSE(r.u32(v));
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(r.done());
  EXPECT_EQ(r.remaining(), 0u);
}

TEST(Bytes, ReaderStaysFailedEvenWhenLaterReadsWouldFit) {
  Bytes in = {1, 2, 3, 4, 5};
  ByteReader r(in);
  std::uint64_t big = 0;
  EXPECT_FALSE(r.u64(big));  // 8 > 5
  std::uint8_t small = 0;
  EXPECT_FALSE(r.u8(small));  // would fit, but the reader has failed
  std::uint16_t s16 = 0;
  EXPECT_FALSE(r.u16(s16));
  std::string s;
  EXPECT_FALSE(r.str(s, 100));
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(r.done());
  EXPECT_EQ(r.remaining(), 0u);
}

TEST(Bytes, ReaderOnEmptyInputFailsEveryGetterButIsDone) {
  ByteReader r{ByteSpan()};
  EXPECT_TRUE(r.done());  // nothing to read, nothing left over
  std::uint8_t v = 0;
  EXPECT_FALSE(r.u8(v));
  EXPECT_FALSE(r.done());
}

TEST(Bytes, ReaderTracksRemainingAndDone) {
  Bytes in = {1, 0, 2, 0, 0, 0};
  ByteReader r(in);
  EXPECT_EQ(r.remaining(), 6u);
  EXPECT_FALSE(r.done());
  std::uint16_t a = 0;
  ASSERT_TRUE(r.u16(a));
  EXPECT_EQ(a, 1);
  EXPECT_EQ(r.remaining(), 4u);
  EXPECT_FALSE(r.done());  // bytes left over
  std::uint32_t b = 0;
  ASSERT_TRUE(r.u32(b));
  EXPECT_EQ(b, 2u);
  EXPECT_TRUE(r.done());
}

TEST(Bytes, StringLongerThanMaxLenFailsTheReader) {
  Bytes out;
  ByteWriter w(out);
  w.str("hello");
  {
    ByteReader r(out);
    std::string s;
    EXPECT_TRUE(r.str(s, 5));  // exactly the limit is fine
    EXPECT_EQ(s, "hello");
    EXPECT_TRUE(r.done());
  }
  {
    ByteReader r(out);
    std::string s;
    EXPECT_FALSE(r.str(s, 4));
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.remaining(), 0u);
  }
}

TEST(Bytes, StringLongerThanTheInputFailsTheReader) {
  // Claims 10 bytes, has 3; and claims 4 GiB.
  for (Bytes in : {Bytes{10, 0, 0, 0, 'a', 'b', 'c'}, Bytes{0xFF, 0xFF, 0xFF, 0xFF, 'a'}}) {
    ByteReader r(in);
    std::string s;
    EXPECT_FALSE(r.str(s, std::numeric_limits<std::size_t>::max()));
    EXPECT_FALSE(r.ok());
    std::uint8_t v = 0;
    EXPECT_FALSE(r.u8(v));
  }
}

TEST(Bytes, TruncatedStringLengthPrefixFails) {
  Bytes in = {5, 0};
  ByteReader r(in);
  std::string s;
  EXPECT_FALSE(r.str(s, 100));
  EXPECT_FALSE(r.ok());
}

TEST(Bytes, ReaderNeverReadsPastTheEndOfASubspan) {
  // The reader is given only the first 4 bytes of a larger buffer: the bytes beyond must not leak.
  Bytes buf = {1, 2, 3, 4, 5, 6, 7, 8};
  ByteReader r(ByteSpan(buf.data(), 4));
  std::uint64_t v = 0;
  EXPECT_FALSE(r.u64(v));
  ByteReader r2(ByteSpan(buf.data(), 4));
  std::uint32_t w = 0;
  EXPECT_TRUE(r2.u32(w));
  EXPECT_EQ(w, 0x04030201u);
  std::uint8_t x = 0;
  EXPECT_FALSE(r2.u8(x));
}

// ---- Status / Result
// -----------------------------------------------------------------------------

TEST(Status, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.isOk());
  EXPECT_TRUE(static_cast<bool>(s));
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_TRUE(Status::ok().isOk());
  EXPECT_EQ(Status::ok().toString(), "ok");
}

TEST(Status, ToStringIsCodeNameColonMessage) {
  Status s(StatusCode::kTimeout, "connect to 10.0.0.1:7000 timed out after 5000 ms");
  EXPECT_FALSE(s.isOk());
  EXPECT_FALSE(static_cast<bool>(s));
  EXPECT_EQ(s.toString(), "kTimeout: connect to 10.0.0.1:7000 timed out after 5000 ms");
  EXPECT_EQ(Status(StatusCode::kProtocolError, "bad frame").toString(),
            "kProtocolError: bad frame");
}

TEST(Status, WithContextPrefixesTheMessageAndKeepsTheCode) {
  Status s = Status(StatusCode::kTimeout, "x").withContext("join");
  EXPECT_EQ(s.code(), StatusCode::kTimeout);
  EXPECT_EQ(s.message(), "join: x");
  EXPECT_EQ(s.toString(), "kTimeout: join: x");
  Status twice = s.withContext("peer 3f2a");
  EXPECT_EQ(twice.message(), "peer 3f2a: join: x");
}

TEST(Status, WithContextOnOkStaysOk) {
  Status s = Status::ok().withContext("join");
  EXPECT_TRUE(s.isOk());
  EXPECT_EQ(s.toString(), "ok");
}

TEST(Status, EveryCodeHasADistinctName) {
  std::vector<std::string> names;
  for (int c = 0; c <= static_cast<int>(kLastStatusCode); ++c) {
    std::string n(statusCodeName(static_cast<StatusCode>(c)));
    EXPECT_EQ(n.rfind("k", 0), 0u) << n;
    EXPECT_NE(n, "kUnknown") << c;
    for (const auto& prev : names) EXPECT_NE(prev, n);
    names.push_back(n);
  }
  EXPECT_EQ(statusCodeName(StatusCode::kAlreadyExists), "kAlreadyExists");
}

TEST(Result, HoldsAValueOrAStatus) {
  Result<int> ok = 42;
  ASSERT_TRUE(ok.isOk());
  EXPECT_TRUE(static_cast<bool>(ok));
  EXPECT_EQ(*ok, 42);
  EXPECT_EQ(ok.value(), 42);
  EXPECT_TRUE(ok.status().isOk());

  Result<std::string> bad = Status(StatusCode::kNotFound, "no such peer");
  EXPECT_FALSE(bad.isOk());
  EXPECT_EQ(bad.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(bad.status().message(), "no such peer");

  Result<std::string> s = std::string("abc");
  EXPECT_EQ(s->size(), 3u);
  std::string moved = std::move(s).value();
  EXPECT_EQ(moved, "abc");
}

Status failsWith(StatusCode code) {
  return code == StatusCode::kOk ? Status::ok() : Status(code, "inner");
}

Status chain(StatusCode code, bool* reached_end) {
  LOCO_RETURN_IF_ERROR(failsWith(code));
  *reached_end = true;
  return Status::ok();
}

TEST(Status, ReturnIfErrorReturnsEarlyOnlyOnError) {
  bool reached = false;
  Status s = chain(StatusCode::kAborted, &reached);
  EXPECT_FALSE(reached);
  EXPECT_EQ(s.code(), StatusCode::kAborted);
  EXPECT_EQ(s.message(), "inner");
  reached = false;
  EXPECT_TRUE(chain(StatusCode::kOk, &reached).isOk());
  EXPECT_TRUE(reached);
}

}  // namespace
}  // namespace loco
