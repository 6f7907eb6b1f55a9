// Unit tests for HOST:PORT parsing (p2p/address.h).

#include "p2p/address.h"

#include <gtest/gtest.h>

#include <string>

namespace loco::p2p {
namespace {

TEST(Address, ParsesIpv4HostAndPort) {
  auto r = parseHostPort("127.0.0.1:7000");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->host, "127.0.0.1");
  EXPECT_EQ(r->port, 7000);
  EXPECT_EQ(r->toString(), "127.0.0.1:7000");
}

TEST(Address, ParsesHostNameWithDashAndPortOne) {
  auto r = parseHostPort("host-name:1");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->host, "host-name");
  EXPECT_EQ(r->port, 1);
}

TEST(Address, ParsesHighestPort) {
  auto r = parseHostPort("node.example.org:65535");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->host, "node.example.org");
  EXPECT_EQ(r->port, 65535);
}

TEST(Address, ParsesBracketedIpv6AndStripsBrackets) {
  auto r = parseHostPort("[::1]:80");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->host, "::1");
  EXPECT_EQ(r->port, 80);
  // toString brackets IPv6 literals again, so it round trips.
  EXPECT_EQ(r->toString(), "[::1]:80");
  auto again = parseHostPort(r->toString());
  ASSERT_TRUE(again.isOk());
  EXPECT_EQ(again->host, "::1");
  EXPECT_EQ(again->port, 80);
}

TEST(Address, ParsesFullIpv6Literal) {
  auto r = parseHostPort("[2001:db8::a:1]:7000");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->host, "2001:db8::a:1");
  EXPECT_EQ(r->port, 7000);
}

TEST(Address, PortZeroOnlyWithAllowPortZero) {
  auto refused = parseHostPort("0.0.0.0:0");
  ASSERT_FALSE(refused.isOk());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("0.0.0.0:0"), std::string::npos)
      << refused.status().message();

  auto allowed = parseHostPort("0.0.0.0:0", /*allow_port_zero=*/true);
  ASSERT_TRUE(allowed.isOk()) << allowed.status().toString();
  EXPECT_EQ(allowed->host, "0.0.0.0");
  EXPECT_EQ(allowed->port, 0);

  auto v6 = parseHostPort("[::]:0", /*allow_port_zero=*/true);
  ASSERT_TRUE(v6.isOk()) << v6.status().toString();
  EXPECT_EQ(v6->host, "::");
  EXPECT_EQ(v6->port, 0);
}

TEST(Address, AllowPortZeroStillAcceptsOrdinaryPorts) {
  auto r = parseHostPort("127.0.0.1:7000", true);
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(r->port, 7000);
}

class AddressInvalid : public ::testing::TestWithParam<const char*> {};

TEST_P(AddressInvalid, IsRejectedWithAMessageNamingTheInput) {
  std::string text = GetParam();
  for (bool allow_zero : {false, true}) {
    auto r = parseHostPort(text, allow_zero);
    ASSERT_FALSE(r.isOk()) << "'" << text << "' was accepted as " << r->toString();
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    // The message quotes the bad input so the user sees what was wrong.
    EXPECT_NE(r.status().message().find("'" + text + "'"), std::string::npos)
        << r.status().message();
  }
}

INSTANTIATE_TEST_SUITE_P(Address, AddressInvalid,
                         ::testing::Values("", "host", ":80", "host:", "host:65536", "host:-1",
                                           "host:80x", "::1:80", "[::1]80", "bad host:80",
                                           "host:99999999999999999999", "host: 80", "host:+80",
                                           "[::1", "[]:80", "[::1]:", "host:0x50", "ho/st:80"),
                         [](const ::testing::TestParamInfo<const char*>& param) {
                           return "Case" + std::to_string(param.index);
                         });

}  // namespace
}  // namespace loco::p2p
