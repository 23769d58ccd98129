#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "framework/data/ctr_data.h"
#include "framework/util/errors.h"
#include "support.h"

using namespace recsys::data;

namespace {

/// A log whose users have the given sequence lengths. Every behaviour has a distinct item (so a
/// history containing its target would be visible) and strictly increasing times.
InteractionLog make_log(const std::vector<int64_t>& lengths, int64_t extra_items = 5) {
  InteractionLog log;
  log.num_users = kFirstId + static_cast<int64_t>(lengths.size());
  log.user_items.resize(log.num_users);
  log.user_times.resize(log.num_users);
  log.user_names = {"<pad>", "<unk>"};
  int64_t next_item = kFirstId;
  for (size_t u = 0; u < lengths.size(); ++u) {
    log.user_names.push_back("u" + std::to_string(u));
    for (int64_t t = 0; t < lengths[u]; ++t) {
      log.user_items[kFirstId + u].push_back(next_item++);
      log.user_times[kFirstId + u].push_back(100 * t);
    }
  }
  log.num_items = next_item + extra_items;
  log.num_categories = kFirstId + 3;
  log.item_category.resize(log.num_items);
  log.item_names.resize(log.num_items);
  for (int64_t i = 0; i < log.num_items; ++i) {
    log.item_category[i] = i < kFirstId ? i : kFirstId + i % 3;
    log.item_names[i] = "i" + std::to_string(i);
  }
  log.category_names = {"<pad>", "<unk>", "c0", "c1", "c2"};
  return log;
}

int64_t positives(const CtrSamples& s) { return std::count(s.label.begin(), s.label.end(), 1); }

/// Every row: history strictly before the target, target at offset + length, negatives share it.
/// `synthetic`: the log comes from make_log (distinct items, strictly increasing times).
void check_no_leakage(const InteractionLog& log, const CtrSamples& s, int64_t max_history,
                      bool synthetic = true) {
  int64_t target_pos = -1;
  for (int64_t r = 0; r < s.size(); ++r) {
    const auto& items = log.user_items[s.user[r]];
    const auto& times = log.user_times[s.user[r]];
    REQUIRE(s.history_length[r] <= max_history);
    REQUIRE(s.history_offset[r] >= 0);
    REQUIRE(s.category[r] == log.item_category[s.item[r]]);
    if (s.label[r] == 1) {
      target_pos = s.history_offset[r] + s.history_length[r];
      REQUIRE(target_pos < static_cast<int64_t>(items.size()));
      REQUIRE(items[target_pos] == s.item[r]);
      // The most recent behaviours, up to max_history of them.
      REQUIRE(s.history_length[r] == std::min(target_pos, max_history));
    } else {
      REQUIRE(r > 0);
      REQUIRE(s.item[r] != items[target_pos]);
      REQUIRE(s.history_offset[r] == s.history_offset[r - 1]);
      REQUIRE(s.history_length[r] == s.history_length[r - 1]);
    }
    for (int64_t p = s.history_offset[r]; p < s.history_offset[r] + s.history_length[r]; ++p) {
      REQUIRE(p < target_pos);
      REQUIRE(times[p] <= times[target_pos]);
      if (synthetic) {
        REQUIRE(times[p] < times[target_pos]);
        REQUIRE(items[p] != items[target_pos]);
      }
    }
  }
}

}  // namespace

TEST_CASE("build_ctr_samples: histories hold only the past, left-truncated", "[ctr]") {
  auto log = make_log({6, 3, 1, 9});
  CtrSampleOptions o;
  o.max_history = 2;
  o.negatives = 3;
  auto splits = build_ctr_samples(log, o);
  for (const auto* s : {&splits.train, &splits.valid, &splits.test}) check_no_leakage(log, *s, 2);
  // User 0 (length 6): its test target is position 5 with history positions 3 and 4.
  const auto& test = splits.test;
  REQUIRE(test.user[0] == kFirstId);
  REQUIRE(test.history_offset[0] == 3);
  REQUIRE(test.history_length[0] == 2);
  // The first training target of user 0 is position 1 with history position 0 (min_history = 1).
  REQUIRE(splits.train.history_offset[0] == 0);
  REQUIRE(splits.train.history_length[0] == 1);
}

TEST_CASE("build_ctr_samples: negatives per positive, label 0, never the positive", "[ctr]") {
  auto log = make_log({6, 3, 9}, /*extra_items=*/0);
  CtrSampleOptions o;
  o.negatives = 3;
  for (std::string sampling : {"uniform", "popularity"}) {
    o.negative_sampling = sampling;
    auto splits = build_ctr_samples(log, o);
    for (const auto* s : {&splits.train, &splits.valid, &splits.test}) {
      REQUIRE(s->size() == 4 * positives(*s));
      for (int64_t r = 0; r < s->size(); ++r) {
        if (r % 4 == 0) {
          REQUIRE(s->label[r] == 1);
        } else {
          REQUIRE(s->label[r] == 0);
          REQUIRE(s->item[r] != s->item[r - r % 4]);
          REQUIRE((s->item[r] >= kFirstId && s->item[r] < log.num_items));
        }
      }
      check_no_leakage(log, *s, o.max_history);
    }
  }
}

TEST_CASE("build_ctr_samples: popularity negatives come from the training behaviours", "[ctr]") {
  auto log = make_log({6, 3, 9}, /*extra_items=*/20);  // 20 items nobody used
  CtrSampleOptions o;
  o.negatives = 2;
  o.negative_sampling = "popularity";
  auto splits = build_ctr_samples(log, o);
  std::set<int64_t> seen_in_training;
  for (int64_t u = kFirstId; u < log.num_users; ++u) {
    const auto& items = log.user_items[u];
    // "last" split: the last two behaviours are validation and test targets.
    for (size_t t = 0; t + 2 < items.size(); ++t) seen_in_training.insert(items[t]);
  }
  for (const auto* s : {&splits.train, &splits.valid, &splits.test})
    for (int64_t r = 0; r < s->size(); ++r)
      if (s->label[r] == 0) REQUIRE(seen_in_training.count(s->item[r]) == 1);
}

TEST_CASE("build_ctr_samples: split sizes for 'last' and 'fraction'", "[ctr]") {
  CtrSampleOptions o;
  o.negatives = 1;
  {
    auto log = make_log({6, 3, 2, 1});  // targets per user (min_history 1): 5, 2, 1, 0
    auto s = build_ctr_samples(log, o);
    REQUIRE(positives(s.test) == 3);   // users 0, 1, 2
    REQUIRE(positives(s.valid) == 2);  // users 0, 1
    REQUIRE(positives(s.train) == 3);  // user 0
    REQUIRE(s.train.size() == 6);
    REQUIRE(s.test.size() == 6);
  }
  {
    auto log = make_log({11, 21});  // 10 and 20 targets
    o.split = "fraction";
    o.test_fraction = 0.2;
    o.valid_fraction = 0.1;
    auto s = build_ctr_samples(log, o);
    REQUIRE(positives(s.test) == 2 + 4);
    REQUIRE(positives(s.valid) == 1 + 2);
    REQUIRE(positives(s.train) == 7 + 14);
    // Each user's test targets are its last ones: for user 0 positions 9 and 10.
    REQUIRE(s.test.history_length[0] + s.test.history_offset[0] == 9);
    check_no_leakage(log, s.test, o.max_history);
  }
  {
    auto log = make_log({6});
    o.split = "last";
    o.min_history = 3;  // targets: positions 3, 4, 5
    auto s = build_ctr_samples(log, o);
    REQUIRE(positives(s.train) == 1);
    REQUIRE(s.train.history_length[0] == 3);
  }
}

TEST_CASE("build_ctr_samples: deterministic by seed, counts from training samples", "[ctr]") {
  auto log = make_log({30, 25, 40}, 50);
  CtrSampleOptions o;
  o.negatives = 2;
  auto a = build_ctr_samples(log, o);
  auto b = build_ctr_samples(log, o);
  REQUIRE(a.train.item == b.train.item);
  REQUIRE(a.test.item == b.test.item);
  o.seed = 7;
  auto c = build_ctr_samples(log, o);
  REQUIRE(a.train.item != c.train.item);
  REQUIRE(a.train.user == c.train.user);

  int64_t expected = a.train.size();
  for (auto len : a.train.history_length) expected += len;
  int64_t total = 0, total_cat = 0;
  for (auto n : a.item_count) total += n;
  for (auto n : a.category_count) total_cat += n;
  REQUIRE(static_cast<int64_t>(a.item_count.size()) == log.num_items);
  REQUIRE(static_cast<int64_t>(a.category_count.size()) == log.num_categories);
  REQUIRE(total == expected);
  REQUIRE(total_cat == expected);
  REQUIRE(a.item_count[0] == 0);
  // Without negatives, user 0's first item is in the history of each of its 27 training targets
  // (max_history 50 >= length) and is never a target.
  o.negatives = 0;
  auto d = build_ctr_samples(log, o);
  REQUIRE(d.item_count[log.user_items[kFirstId][0]] == 27);
  REQUIRE(d.item_count[log.user_items[kFirstId][27]] == 1);  // the last training target only
}

TEST_CASE("build_ctr_samples rejects bad options with the key to fix", "[ctr]") {
  auto log = make_log({5});
  CtrSampleOptions o;
  o.negative_sampling = "hard";
  REQUIRE_THROWS_AS(build_ctr_samples(log, o), recsys::ConfigError);
  o.negative_sampling = "uniform";
  o.split = "random";
  try {
    build_ctr_samples(log, o);
    FAIL("expected ConfigError");
  } catch (const recsys::ConfigError& e) {
    REQUIRE(e.path() == "split");
    REQUIRE(std::string(e.what()).find("known: last, fraction") != std::string::npos);
  }
}

TEST_CASE("make_ctr_batch pads on the right and masks", "[ctr]") {
  auto log = make_log({6, 3, 9});
  CtrSampleOptions o;
  o.negatives = 1;
  auto s = build_ctr_samples(log, o).train;
  // Pick rows with history lengths 1 (user 0), 4 and 6 (user 2).
  std::vector<int64_t> rows;
  for (int64_t want : {1, 4, 6})
    for (int64_t r = 0; r < s.size(); ++r)
      if (s.history_length[r] == want && s.label[r] == 1) {
        rows.push_back(r);
        break;
      }
  REQUIRE(rows.size() == 3);
  rows.push_back(rows[0] + 1);  // a negative row
  auto batch = make_ctr_batch(log, s, rows, 50);
  REQUIRE(batch.size() == 4);
  REQUIRE(batch.hist_item.sizes() == std::vector<int64_t>{4, 6});
  REQUIRE(batch.hist_mask.scalar_type() == torch::kBool);
  REQUIRE(batch.label.scalar_type() == torch::kFloat32);
  REQUIRE(batch.item.scalar_type() == torch::kLong);
  REQUIRE(torch::equal(batch.hist_length, torch::tensor({1, 4, 6, 1}, torch::kLong)));
  REQUIRE(torch::equal(batch.hist_mask.sum(1), batch.hist_length));
  REQUIRE(torch::equal(batch.label, torch::tensor({1.f, 1.f, 1.f, 0.f})));
  auto hist = batch.hist_item.accessor<int64_t, 2>();
  auto cat = batch.hist_category.accessor<int64_t, 2>();
  auto mask = batch.hist_mask.accessor<bool, 2>();
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t r = rows[i];
    const auto& seq = log.user_items[s.user[r]];
    REQUIRE(batch.item[i].item<int64_t>() == s.item[r]);
    REQUIRE(batch.user[i].item<int64_t>() == s.user[r]);
    for (int64_t k = 0; k < 6; ++k) {
      if (k < s.history_length[r]) {
        REQUIRE(mask[i][k]);
        REQUIRE(hist[i][k] == seq[s.history_offset[r] + k]);
        REQUIRE(cat[i][k] == log.item_category[hist[i][k]]);
      } else {
        REQUIRE(!mask[i][k]);
        REQUIRE(hist[i][k] == 0);
        REQUIRE(cat[i][k] == 0);
      }
    }
  }
  // A smaller max_history keeps the most recent behaviours.
  auto short_batch = make_ctr_batch(log, s, {rows[2]}, 2);
  REQUIRE(short_batch.hist_item.sizes() == std::vector<int64_t>{1, 2});
  const auto& seq = log.user_items[s.user[rows[2]]];
  REQUIRE(short_batch.hist_item[0][0].item<int64_t>() == seq[4]);
  REQUIRE(short_batch.hist_item[0][1].item<int64_t>() == seq[5]);
}

TEST_CASE("build_ctr_samples on the shared Taobao sample", "[ctr]") {
  auto path = recsys::testing::shared_data("taobao-userbehavior-sample/UserBehavior_head.csv");
  if (!std::filesystem::exists(path)) {
    WARN("skipped: " << path << " absent");
    return;
  }
  auto log = load_taobao(path);
  CtrSampleOptions o;
  auto s = build_ctr_samples(log, o);
  // Every user has >= 4 behaviours: one test and one validation target each.
  REQUIRE(positives(s.test) == 490);
  REQUIRE(positives(s.valid) == 490);
  REQUIRE(positives(s.train) + positives(s.valid) + positives(s.test) == 52322 - 490);
  check_no_leakage(log, s.test, o.max_history, /*synthetic=*/false);
}
