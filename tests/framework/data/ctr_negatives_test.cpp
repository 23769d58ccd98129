#include "framework/data/ctr_negatives.h"

#include <random>
#include <vector>

#include "framework/data/ctr_data.h"
#include "support.h"

using namespace recsys::data;

namespace {

/// Users with the given history lengths over a catalogue of `num_real_items` items (ids drawn
/// with a fixed generator, so repeated items occur), categories i % 3.
InteractionLog random_log(const std::vector<int64_t>& lengths, int64_t num_real_items) {
  InteractionLog log;
  log.num_users = kFirstId + static_cast<int64_t>(lengths.size());
  log.user_items.resize(log.num_users);
  log.user_times.resize(log.num_users);
  log.num_items = kFirstId + num_real_items;
  log.num_categories = kFirstId + 3;
  log.item_category.resize(log.num_items);
  for (int64_t i = 0; i < log.num_items; ++i)
    log.item_category[i] = i < kFirstId ? i : kFirstId + i % 3;
  std::mt19937_64 gen(7);
  std::uniform_int_distribution<int64_t> item(kFirstId, log.num_items - 1);
  for (size_t u = 0; u < lengths.size(); ++u)
    for (int64_t t = 0; t < lengths[u]; ++t) {
      log.user_items[kFirstId + u].push_back(item(gen));
      log.user_times[kFirstId + u].push_back(t);
    }
  return log;
}

std::vector<int64_t> all_rows(const CtrSamples& s) {
  std::vector<int64_t> rows(s.size());
  for (int64_t i = 0; i < s.size(); ++i) rows[i] = i;
  return rows;
}

}  // namespace

TEST_CASE("negative histories align with make_ctr_batch and never hit the positive",
          "[dien][ctr_negatives]") {
  // Lengths above and below max_history, so some histories are truncated to the most recent ones.
  for (int64_t catalogue : {2, 3, 50}) {
    auto log = random_log({3, 9, 14, 6}, catalogue);
    CtrSampleOptions o;
    o.max_history = 5;
    auto splits = build_ctr_samples(log, o);
    const auto& s = splits.train;
    auto rows = all_rows(s);
    auto batch = make_ctr_batch(log, s, rows, o.max_history);
    const int64_t T = batch.hist_item.size(1);
    std::mt19937_64 rng(3);
    torch::Tensor neg_item, neg_category;
    fill_negative_history(log, s, rows, T, neg_item, neg_category, rng);

    REQUIRE(neg_item.sizes() == batch.hist_item.sizes());
    REQUIRE(neg_category.sizes() == batch.hist_item.sizes());
    REQUIRE(neg_item.scalar_type() == torch::kLong);
    // Valid exactly where the positive history is valid (right padding with 0).
    REQUIRE(torch::equal(neg_item.ne(0), batch.hist_mask));
    REQUIRE(torch::equal(neg_category.ne(0), batch.hist_mask));
    auto pos = batch.hist_item.accessor<int64_t, 2>();
    auto neg = neg_item.accessor<int64_t, 2>();
    auto cat = neg_category.accessor<int64_t, 2>();
    for (int64_t b = 0; b < neg_item.size(0); ++b)
      for (int64_t t = 0; t < T; ++t) {
        if (pos[b][t] == 0) continue;
        REQUIRE(neg[b][t] != pos[b][t]);
        REQUIRE(neg[b][t] >= kFirstId);
        REQUIRE(neg[b][t] < log.num_items);
        REQUIRE(cat[b][t] == log.item_category[neg[b][t]]);
      }
  }
}

TEST_CASE("negative histories are deterministic by seed", "[dien][ctr_negatives]") {
  auto log = random_log({8, 12, 20}, 40);
  CtrSampleOptions o;
  o.max_history = 6;
  auto s = build_ctr_samples(log, o).train;
  auto rows = all_rows(s);
  const int64_t T = make_ctr_batch(log, s, rows, o.max_history).hist_item.size(1);
  auto draw = [&](uint64_t seed) {
    std::mt19937_64 rng(seed);
    torch::Tensor item, category;
    fill_negative_history(log, s, rows, T, item, category, rng);
    return item;
  };
  REQUIRE(torch::equal(draw(11), draw(11)));
  REQUIRE_FALSE(torch::equal(draw(11), draw(12)));
}

TEST_CASE("negative histories need two items in the catalogue", "[dien][ctr_negatives]") {
  auto log = random_log({4}, 1);
  // build_ctr_samples itself refuses a one-item catalogue, so the row is written by hand.
  CtrSamples one;
  one.user = {kFirstId};
  one.item = {kFirstId};
  one.category = {log.item_category[kFirstId]};
  one.label = {1};
  one.history_offset = {0};
  one.history_length = {3};
  std::mt19937_64 rng(0);
  torch::Tensor item, category;
  REQUIRE_THROWS_WITH(fill_negative_history(log, one, {0}, 3, item, category, rng),
                      Catch::Contains("at least 2"));
}
