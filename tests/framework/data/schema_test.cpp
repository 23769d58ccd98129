// Vocabularies and feature tables: reserved indices, padding, truncation, bounds.
#include "framework/data/schema.h"

#include "support.h"

using namespace recsys::data;

TEST_CASE("Vocabulary reserves padding and default indices", "[data]") {
  Vocabulary v;
  CHECK(v.size() == 2);
  CHECK(v.add("red") == 2);
  CHECK(v.add("green") == 3);
  CHECK(v.add("red") == 2);  // idempotent
  CHECK(v.size() == 4);
  CHECK(v.lookup("green") == 3);
  CHECK(v.lookup("blue") == kDefaultIndex);  // OOV
  CHECK(kDefaultIndex == 1);
  CHECK(kPadIndex == 0);
  CHECK(v.contains("red"));
  CHECK_FALSE(v.contains("blue"));
  CHECK(v.key(0) == "<pad>");
  CHECK(v.key(1) == "<default>");
  CHECK(v.key(3) == "green");
  CHECK_THROWS(v.key(4));
}

TEST_CASE("FeatureTable::gather pads, truncates and defaults empty bags", "[data]") {
  FeatureTable t(3);
  t.add_categorical({"id", FeatureKind::kSingle, 5, 1}, {{2}, {3}, {4}});
  t.add_categorical({"tags", FeatureKind::kMulti, 10, 3}, {{2, 3}, {4, 5, 6, 7, 8}, {}});
  t.add_numeric("price", {1.5f, -2.0f, 0.25f});
  CHECK(t.num_rows() == 3);
  CHECK(t.num_features() == 3);
  CHECK(t.index_of("tags") == 1);
  CHECK(t.index_of("nope") == -1);
  CHECK(t.spec(2).kind == FeatureKind::kNumeric);

  std::vector<int64_t> rows{2, 0, 1, 0};
  auto out = t.gather(rows.data(), 4);
  REQUIRE(out.size() == 3);
  CHECK(out[0].dtype() == torch::kInt64);
  CHECK(torch::equal(out[0], torch::tensor({4, 2, 3, 2}, torch::kInt64).reshape({4, 1})));
  auto expected_tags = torch::tensor({kDefaultIndex, 0L, 0L,   // empty bag -> default, padded
                                      2L, 3L, 0L,              // padded with 0
                                      4L, 5L, 6L,              // truncated to max_len 3
                                      2L, 3L, 0L},
                                     torch::kInt64)
                           .reshape({4, 3});
  CHECK(torch::equal(out[1], expected_tags));
  CHECK(out[2].dtype() == torch::kFloat32);
  CHECK(torch::equal(out[2], torch::tensor({0.25f, 1.5f, -2.0f, 1.5f}).reshape({4, 1})));

  auto bag = t.bag(1, 1);
  CHECK(bag.second == 5);  // storage keeps the whole bag
  CHECK(bag.first[4] == 8);
  auto empty = t.bag(1, 2);
  REQUIRE(empty.second == 1);
  CHECK(empty.first[0] == kDefaultIndex);
}

TEST_CASE("FeatureTable: max_len 0 means the longest bag", "[data]") {
  FeatureTable t(2);
  t.add_categorical({"tags", FeatureKind::kMulti, 10, 0}, {{2}, {3, 4, 5, 6}});
  CHECK(t.spec(0).max_len == 4);
  std::vector<int64_t> rows{0, 1};
  auto out = t.gather(rows.data(), 2);
  CHECK(torch::equal(out[0], torch::tensor({2L, 0L, 0L, 0L, 3L, 4L, 5L, 6L}).reshape({2, 4})));
}

TEST_CASE("FeatureTable rejects out-of-range indices and wrong row counts", "[data]") {
  FeatureTable t(2);
  CHECK_THROWS_AS(t.add_categorical({"x", FeatureKind::kSingle, 4, 1}, {{2}, {4}}), std::out_of_range);
  CHECK_THROWS_AS(t.add_categorical({"x", FeatureKind::kSingle, 4, 1}, {{2}, {-1}}), std::out_of_range);
  CHECK_THROWS_AS(t.add_categorical({"x", FeatureKind::kSingle, 4, 1}, {{2}}), std::invalid_argument);
  CHECK_THROWS_AS(t.add_numeric("n", {1.0f}), std::invalid_argument);
  CHECK(t.num_features() == 0);
  t.add_categorical({"x", FeatureKind::kSingle, 4, 1}, {{3}, {2}});
  CHECK(t.num_features() == 1);
}
