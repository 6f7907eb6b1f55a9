// JSON as loco writes it (p2p/base/json.h) and the peer's per-round line (cli/ops/run_jsonl.h):
// the line keeps its documented field order and precision, and what chaos::parseRoundLine and
// `loco local` read back is what was written.
#include <gtest/gtest.h>

#include <cmath>

#include "cli/chaos/invariants.h"
#include "cli/ops/run_jsonl.h"
#include "p2p/base/json.h"

namespace loco {
namespace {

TEST(Json, FixedKeepsThePrecisionAndNullsWhatJsonCannotHold) {
  EXPECT_EQ(jsonDump(jsonFixed(0.17384612345, 6)), "0.173846");
  EXPECT_EQ(jsonDump(jsonFixed(9601.849, 1)), "9601.8");
  EXPECT_EQ(jsonDump(jsonFixed(1796063434.26912, 3)), "1796063434.269");
  EXPECT_EQ(jsonDump(jsonFixed(50996767.6, 0)), "50996768");  // an integer, not 50996768.0
  EXPECT_EQ(jsonDump(jsonFixed(NAN, 6)), "null");
  EXPECT_EQ(jsonDump(jsonFixed(-INFINITY, 3)), "null");
  EXPECT_EQ(jsonDump(jsonSignificant(1.23456e-5, 4)), "1.235e-05");
  EXPECT_EQ(jsonDump(jsonSignificant(NAN, 4)), "null");
}

TEST(Json, DumpEscapesAndReplacesBytesThatAreNotUtf8) {
  const std::string text = jsonDump(Json{{"msg", std::string("a\"b\\c\n\x01\xff")}});
  EXPECT_EQ(text, "{\"msg\":\"a\\\"b\\\\c\\n\\u0001\xef\xbf\xbd\"}");
  auto back = parseJsonObject(text);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ((*back)["msg"], "a\"b\\c\n\x01\xef\xbf\xbd");
  EXPECT_FALSE(parseJsonObject("[1,2]").has_value());
  EXPECT_FALSE(parseJsonObject("{\"a\":").has_value());
  EXPECT_FALSE(parseJsonObject("").has_value());
}

TEST(RunJsonl, ThePeerLineHasTheDocumentedFieldsInOrder) {
  training::RoundRecord r;
  r.outer_step = 298;
  r.inner_step = 2980;
  r.epoch = 5;
  r.world = 3;
  r.contributors = 3;
  r.train_loss = 0.1738461;
  r.bytes_sent = 50996768;
  r.retries = 2;
  r.tokens_per_s = 9601.84;
  r.state_digest = 0xc545a6331357eee8ULL;
  r.wall_s = 7.7691;
  r.checkpoint_failures = 1;
  const std::string line =
      ops::peerRoundLine(r, 1, "b1720014ffffffffffffffffffffffff", 17544, 1796063434.2691);
  EXPECT_EQ(line,
            R"({"rank":1,"peer":"b1720014","step":298,"inner_step":2980,"epoch":5,"world":3,)"
            R"("contributors":3,"loss":0.173846,"val_loss":null,"bytes_sent":50996768,)"
            R"("retries":2,"tokens_per_s":9601.8,"digest":"c545a6331357eee8","wall_s":7.769,)"
            R"("pid":17544,"unix_s":1796063434.269,"finite":true,"checkpoint_failures":1,)"
            R"("local_loss":0.0,"batch":0,"micro_batches":1,"batch_wanted":0.0,"tokens":0,)"
            R"("share":0,"b_max":0,"b_mem":0,"compute_s":0.0,"blocked_s":0.0,"utilization":0.0,)"
            R"("round_bytes":0,)"
            R"("peak_round_bytes":0,"sync_points":0,"e2e_tokens_per_s":0.0,"instances":1})");

  auto back = chaos::parseRoundLine(line, "peer-2");
  ASSERT_TRUE(back.isOk());
  EXPECT_EQ(back->step, 298u);
  EXPECT_EQ(back->inner_step, 2980u);
  EXPECT_EQ(back->epoch, 5u);
  EXPECT_EQ(back->world, 3);
  EXPECT_DOUBLE_EQ(back->loss, 0.173846);
  EXPECT_FALSE(back->val_loss.has_value());
  EXPECT_DOUBLE_EQ(back->bytes_sent, 50996768);
  EXPECT_DOUBLE_EQ(back->tokens_per_s, 9601.8);
  EXPECT_DOUBLE_EQ(back->wall_s, 7.769);
  EXPECT_EQ(back->digest, "c545a6331357eee8");
  EXPECT_EQ(back->pid, 17544);
  EXPECT_TRUE(back->finite);
  EXPECT_EQ(back->instances, 1u);
}

TEST(RunJsonl, SeveralInstancesAddTheirLossesAndBatches) {
  training::RoundRecord r;
  r.outer_step = 3;
  r.instances = 2;
  r.val_loss = 2.25;
  r.instance_val_losses = {2.5, 2.25};
  r.instance_batches = {8, 12};
  const std::string line = ops::peerRoundLine(r, 0, "abc", 1, 0);
  EXPECT_NE(
      line.find(R"("instances":2,"instance_val_losses":[2.5,2.25],"instance_batches":[8,12]})"),
      std::string::npos)
      << line;
  auto back = chaos::parseRoundLine(line, "peer-1");
  ASSERT_TRUE(back.isOk());
  EXPECT_EQ(back->instances, 2u);
}

TEST(RunJsonl, ANonFiniteLossIsNullAndMarkedNotFinite) {
  training::RoundRecord r;
  r.outer_step = 4;
  r.contributors = 2;
  r.train_loss = NAN;
  r.val_loss = 2.5;
  const std::string line = ops::peerRoundLine(r, 0, "abc", 1, 0);
  EXPECT_NE(line.find(R"("loss":null,"val_loss":2.5,)"), std::string::npos) << line;
  EXPECT_NE(line.find(R"("finite":false)"), std::string::npos) << line;
  auto back = chaos::parseRoundLine(line, "peer-1");
  ASSERT_TRUE(back.isOk());
  EXPECT_TRUE(std::isnan(back->loss));
  EXPECT_FALSE(back->finite);
  ASSERT_TRUE(back->val_loss.has_value());
  EXPECT_DOUBLE_EQ(*back->val_loss, 2.5);
}

}  // namespace
}  // namespace loco
