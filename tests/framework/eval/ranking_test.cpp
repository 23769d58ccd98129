// Recall@K / NDCG@K accumulation and head/tail slicing, on hand-computed cases.
#include "framework/eval/ranking.h"

#include <cmath>

#include "support.h"

using recsys::eval::head_tail_slices;
using recsys::eval::RankingAccumulator;
using recsys::testing::require_close;

TEST_CASE("RankingAccumulator: Recall and NDCG overall and per slice", "[eval]") {
  // Items 0, 1 are head; 2..5 tail.
  RankingAccumulator acc({3, 2}, {0, 0, 1, 1, 1, 1}, {"head", "tail"});
  CHECK(acc.max_k() == 3);
  const int64_t a[] = {0, 3, 1, 5}, b[] = {4, 2, 0, 1}, c[] = {2, 0, 4, 3}, d[] = {0, 1, 2, 3};
  acc.add(a, 4, {1, 3});  // two targets: 3 at rank 1, 1 at rank 2
  acc.add(b, 4, {5});     // its target is outside the top K
  acc.add(c, 4, {2});     // hit at rank 0
  acc.add(d, 4, {});      // no test items: ignored
  auto m = acc.result();

  const double l3 = 1.0 / std::log2(3.0);  // discount at rank 1; rank 2 has 1/log2(4) = 0.5
  const double ndcg_a2 = l3 / (1 + l3), ndcg_a3 = (l3 + 0.5) / (1 + l3);
  require_close(m.at("recall@2"), 2.0 / 4.0);
  require_close(m.at("recall@3"), 3.0 / 4.0);
  require_close(m.at("ndcg@2"), (ndcg_a2 + 0 + 1) / 3.0);
  require_close(m.at("ndcg@3"), (ndcg_a3 + 0 + 1) / 3.0);
  require_close(m.at("test_points"), 4);
  require_close(m.at("users"), 3);

  // Head: only user a's item 1 (rank 2).
  require_close(m.at("test_points/head"), 1);
  require_close(m.at("recall@2/head"), 0.0);
  require_close(m.at("recall@3/head"), 1.0);
  require_close(m.at("ndcg@2/head"), 0.0);
  require_close(m.at("ndcg@3/head"), 0.5);
  // Tail: a's 3 (rank 1), b's 5 (missed), c's 2 (rank 0); each user's IDCG is 1.
  require_close(m.at("test_points/tail"), 3);
  require_close(m.at("recall@2/tail"), 2.0 / 3.0);
  require_close(m.at("recall@3/tail"), 2.0 / 3.0);
  require_close(m.at("ndcg@2/tail"), (l3 + 0 + 1) / 3.0);
  require_close(m.at("ndcg@3/tail"), (l3 + 0 + 1) / 3.0);
  CHECK(m.size() == 3 * 5 + 1);  // (recall, ndcg) x 2 + test_points, per slice and overall; users
}

TEST_CASE("RankingAccumulator: more targets than K and short rankings", "[eval]") {
  RankingAccumulator acc({2}, {0, 0, 0, 0, 0}, {"all"});
  const int64_t r[] = {4, 1, 3, 0};
  acc.add(r, 4, {1, 4, 2});  // both top-2 items are targets: NDCG 1, recall 2/3
  auto m = acc.result();
  require_close(m.at("recall@2"), 2.0 / 3.0);
  require_close(m.at("ndcg@2"), 1.0);

  RankingAccumulator shortk({5}, {1, 1, 1}, {"head", "tail"});
  const int64_t s[] = {2, 0};
  shortk.add(s, 2, {0});  // rank 1 of a ranking shorter than K
  auto ms = shortk.result();
  require_close(ms.at("recall@5"), 1.0);
  require_close(ms.at("ndcg@5"), 1.0 / std::log2(3.0));
  require_close(ms.at("test_points/head"), 0);
  CHECK(ms.count("recall@5/head") == 0);  // an empty slice reports no recall, only 0 points
  CHECK(ms.count("ndcg@5/head") == 0);
  require_close(ms.at("recall@5/tail"), 1.0);

  RankingAccumulator empty({10}, {}, {});
  require_close(empty.result().at("recall@10"), 0.0);
  CHECK_THROWS(RankingAccumulator({}, {}, {}));
}

TEST_CASE("head_tail_slices: top fraction by clicks, ties by row", "[eval]") {
  CHECK(head_tail_slices({5, 1, 5, 0, 3}, 0.4) == std::vector<uint8_t>{0, 1, 0, 1, 1});
  CHECK(head_tail_slices({5, 1, 5, 0, 3}, 0.6) == std::vector<uint8_t>{0, 1, 0, 1, 0});
  CHECK(head_tail_slices({2, 2, 2, 2}, 0.5) == std::vector<uint8_t>{0, 0, 1, 1});
  CHECK(head_tail_slices({1, 2, 2, 3}, 0.5) == std::vector<uint8_t>{1, 0, 1, 0});
  CHECK(head_tail_slices({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 0.2) ==
        std::vector<uint8_t>{1, 1, 1, 1, 1, 1, 1, 1, 0, 0});
  CHECK(head_tail_slices({3, 1}, 0.01) == std::vector<uint8_t>{1, 1});
}
