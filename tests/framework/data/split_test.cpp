// Time-ordered train/valid/test splits and the synthetic corpus.
#include <algorithm>
#include <numeric>
#include <set>

#include "framework/data/retrieval_data.h"
#include "support.h"

using namespace recsys::data;
using V = std::vector<int64_t>;

namespace {

RetrievalData corpus(std::vector<V> sequences, int64_t n_items) {
  RetrievalData d;
  d.users = FeatureTable(static_cast<int64_t>(sequences.size()));
  d.items = FeatureTable(n_items);
  d.sequences = std::move(sequences);
  return d;
}

}  // namespace

TEST_CASE("split_by_time leave_last keeps order and counts training clicks", "[data]") {
  auto d = corpus({{5, 1, 3, 0, 2}, {4, 1}, {2, 0, 4}, {}}, 6);
  SplitOptions o;
  o.protocol = "leave_last";
  o.min_positives = 3;
  split_by_time(d, o);
  CHECK(d.train[0] == V{5, 1, 3});
  CHECK(d.valid[0] == V{0});
  CHECK(d.test[0] == V{2});
  // Below min_positives: everything in train.
  CHECK(d.train[1] == V{4, 1});
  CHECK(d.valid[1].empty());
  CHECK(d.test[1].empty());
  CHECK(d.train[2] == V{2});
  CHECK(d.valid[2] == V{0});
  CHECK(d.test[2] == V{4});
  CHECK(d.train[3].empty());
  CHECK(d.test[3].empty());
  // Clicks from train only: items 5,1,3 | 4,1 | 2.
  CHECK(d.item_clicks == V{0, 2, 1, 1, 1, 1});
}

TEST_CASE("split_by_time leave_last with a single positive gives it to test", "[data]") {
  // min_positives 1 lets a one-positive user through: it has no positive for validation (the
  // training part used to get length -1).
  auto d = corpus({{3}, {1, 2}, {}}, 4);
  SplitOptions o;
  o.protocol = "leave_last";
  o.min_positives = 1;
  split_by_time(d, o);
  CHECK(d.train[0].empty());
  CHECK(d.valid[0].empty());
  CHECK(d.test[0] == V{3});
  CHECK(d.train[1].empty());
  CHECK(d.valid[1] == V{1});
  CHECK(d.test[1] == V{2});
  CHECK(d.test[2].empty());
  CHECK(d.item_clicks == V{0, 0, 0, 0});
  // min_positives 0 (only reachable from code) leaves an empty sequence alone.
  o.min_positives = 0;
  o.protocol = "fraction";
  split_by_time(d, o);
  CHECK(d.train[2].empty());
  CHECK(d.test[2].empty());
}

TEST_CASE("split_by_time fraction sizes", "[data]") {
  std::vector<int64_t> ten(10);
  std::iota(ten.begin(), ten.end(), 0);
  auto d = corpus({ten, {0, 1, 2}, {7, 8}, {9}, {3, 4, 5, 6, 7}}, 10);
  SplitOptions o;
  o.protocol = "fraction";
  o.valid_fraction = 0.2;
  o.test_fraction = 0.3;
  o.min_positives = 2;
  split_by_time(d, o);
  // n = 10: test round(3) = 3, valid round(2) = 2, train 5, in time order.
  CHECK(d.train[0] == V{0, 1, 2, 3, 4});
  CHECK(d.valid[0] == V{5, 6});
  CHECK(d.test[0] == V{7, 8, 9});
  // n = 3: test max(1, round(0.9)) = 1, valid max(1, round(0.6)) = 1, train 1.
  CHECK(d.train[1] == V{0});
  CHECK(d.valid[1] == V{1});
  CHECK(d.test[1] == V{2});
  // n = 2: one training positive is kept, so validation gives way.
  CHECK(d.train[2] == V{7});
  CHECK(d.valid[2].empty());
  CHECK(d.test[2] == V{8});
  // n = 1 < min_positives.
  CHECK(d.train[3] == V{9});
  CHECK(d.test[3].empty());
  // n = 5: test round(1.5) = 2, valid max(1, round(1.0)) = 1, train 2.
  CHECK(d.train[4] == V{3, 4});
  CHECK(d.valid[4] == V{5});
  CHECK(d.test[4] == V{6, 7});
  // Every user's split concatenates back to the sequence.
  for (size_t u = 0; u < d.sequences.size(); ++u) {
    V all = d.train[u];
    all.insert(all.end(), d.valid[u].begin(), d.valid[u].end());
    all.insert(all.end(), d.test[u].begin(), d.test[u].end());
    CHECK(all == d.sequences[u]);
  }
  // Train clicks: 0..4 | 0 | 7 | 9 | 3,4.
  CHECK(d.item_clicks == V{2, 1, 1, 2, 2, 0, 0, 1, 0, 1});

  o.valid_fraction = 0.0;
  split_by_time(d, o);
  CHECK(d.valid[0].empty());
  CHECK(d.test[0] == V{7, 8, 9});
  CHECK(d.train[0].size() == 7);

  o.protocol = "random";
  CHECK_THROWS_AS(split_by_time(d, o), std::invalid_argument);
}

TEST_CASE("make_synthetic is deterministic by seed and respects its vocabularies", "[data]") {
  SyntheticOptions o;
  o.num_users = 200;
  o.num_items = 300;
  o.seed = 11;
  auto a = make_synthetic(o);
  auto b = make_synthetic(o);
  o.seed = 12;
  auto c = make_synthetic(o);
  REQUIRE(a.num_users() == 200);
  REQUIRE(a.num_items() == 300);
  CHECK(a.sequences == b.sequences);
  CHECK(a.sequences != c.sequences);
  std::vector<int64_t> item_rows(300), user_rows(200);
  std::iota(item_rows.begin(), item_rows.end(), 0);
  std::iota(user_rows.begin(), user_rows.end(), 0);
  auto ia = a.items.gather(item_rows.data(), 300), ib = b.items.gather(item_rows.data(), 300),
       ic = c.items.gather(item_rows.data(), 300);
  auto ua = a.users.gather(user_rows.data(), 200), ub = b.users.gather(user_rows.data(), 200);
  bool items_differ = false;
  for (size_t f = 0; f < ia.size(); ++f) {
    CHECK(torch::equal(ia[f], ib[f]));
    items_differ = items_differ || !torch::equal(ia[f], ic[f]);
  }
  CHECK(items_differ);
  for (size_t f = 0; f < ua.size(); ++f) CHECK(torch::equal(ua[f], ub[f]));

  CHECK(a.items.spec(0).name == "item_id");
  CHECK(a.users.spec(0).name == "user_id");
  // Row r has id r + kFirstIndex.
  CHECK(torch::equal(ia[0].squeeze(1), torch::arange(kFirstIndex, 300 + kFirstIndex)));
  CHECK(torch::equal(ua[0].squeeze(1), torch::arange(kFirstIndex, 200 + kFirstIndex)));
  for (auto* table : {&a.items, &a.users}) {
    auto rows = table == &a.items ? item_rows : user_rows;
    auto cols = table->gather(rows.data(), static_cast<int64_t>(rows.size()));
    for (int64_t f = 0; f < table->num_features(); ++f) {
      INFO("feature " << table->spec(f).name);
      auto t = cols[static_cast<size_t>(f)];
      CHECK(t.max().item<int64_t>() < table->spec(f).vocab_size);
      // Column 0 always holds a real value (>= kFirstIndex); the rest are values or padding.
      CHECK(t.select(1, 0).min().item<int64_t>() >= kFirstIndex);
      CHECK(t.min().item<int64_t>() >= 0);
    }
  }
  for (auto& seq : a.sequences) {
    CHECK(static_cast<int64_t>(seq.size()) >= 1);
    CHECK(static_cast<int64_t>(seq.size()) <= o.max_interactions);
    std::set<int64_t> distinct(seq.begin(), seq.end());
    CHECK(distinct.size() == seq.size());
    for (auto i : seq) {
      CHECK(i >= 0);
      CHECK(i < 300);
    }
  }
}

TEST_CASE("make_synthetic popularity follows a power law", "[data]") {
  SyntheticOptions o;
  o.num_users = 1000;
  o.num_items = 1000;
  auto d = make_synthetic(o);
  std::vector<int64_t> clicks(1000, 0);
  int64_t total = 0;
  for (auto& seq : d.sequences)
    for (auto i : seq) ++clicks[static_cast<size_t>(i)], ++total;
  std::sort(clicks.begin(), clicks.end(), std::greater<>());
  int64_t top = std::accumulate(clicks.begin(), clicks.begin() + 200, int64_t{0});
  double share = static_cast<double>(top) / static_cast<double>(total);
  INFO("top 20% share " << share);
  CHECK(share > 0.45);  // uniform popularity would give about 0.2
  CHECK(clicks.back() < clicks.front() / 10);
}
