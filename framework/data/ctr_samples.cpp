// (history, target) samples and mini-batches for DIN/DIEN.
#include <algorithm>
#include <cmath>
#include <random>

#include "framework/data/ctr_data.h"
#include "framework/util/errors.h"

namespace recsys::data {

void filter_min_count(InteractionLog& log, int64_t min_user_len) {
  TORCH_CHECK(static_cast<int64_t>(log.user_items.size()) == log.num_users,
              "filter_min_count: user_items has ", log.user_items.size(),
              " entries but num_users is ", log.num_users);
  int64_t kept = kFirstId;
  for (int64_t u = kFirstId; u < log.num_users; ++u) {
    if (static_cast<int64_t>(log.user_items[u].size()) < min_user_len) continue;
    if (kept != u) {
      log.user_items[kept] = std::move(log.user_items[u]);
      log.user_times[kept] = std::move(log.user_times[u]);
      if (static_cast<int64_t>(log.user_names.size()) > u)
        log.user_names[kept] = std::move(log.user_names[u]);
    }
    ++kept;
  }
  log.num_users = kept;
  log.user_items.resize(kept);
  log.user_times.resize(kept);
  if (static_cast<int64_t>(log.user_names.size()) > kept) log.user_names.resize(kept);
}

namespace {

enum class Split { kTrain, kValid, kTest };

void validate(const InteractionLog& log, const CtrSampleOptions& o) {
  if (o.max_history < 1)
    throw ConfigError("max_history", "must be >= 1, got " + std::to_string(o.max_history));
  if (o.negatives < 0)
    throw ConfigError("negatives", "must be >= 0, got " + std::to_string(o.negatives));
  if (o.min_history < 0)
    throw ConfigError("min_history", "must be >= 0, got " + std::to_string(o.min_history));
  if (o.negative_sampling != "uniform" && o.negative_sampling != "popularity")
    throw ConfigError("negative_sampling",
                      "unknown value '" + o.negative_sampling + "' (known: uniform, popularity)");
  if (o.split != "last" && o.split != "fraction")
    throw ConfigError("split", "unknown value '" + o.split + "' (known: last, fraction)");
  if (o.split == "fraction") {
    if (o.test_fraction < 0 || o.valid_fraction < 0 || o.test_fraction + o.valid_fraction > 1)
      throw ConfigError("test_fraction",
                        "test_fraction and valid_fraction must be >= 0 with a sum <= 1");
  }
  if (o.negatives > 0 && log.num_items < kFirstId + 2)
    throw ConfigError(
        "negatives",
        "negative sampling needs at least 2 items in the catalogue; set negatives to 0");
  TORCH_CHECK(static_cast<int64_t>(log.user_items.size()) == log.num_users &&
                  log.user_times.size() == log.user_items.size(),
              "build_ctr_samples: user_items/user_times must have num_users = ", log.num_users,
              " entries");
  TORCH_CHECK(static_cast<int64_t>(log.item_category.size()) == log.num_items,
              "build_ctr_samples: item_category must have num_items = ", log.num_items, " entries");
}

/// Number of (valid, test) targets of a user with n targets.
std::pair<int64_t, int64_t> split_sizes(int64_t n, const CtrSampleOptions& o) {
  int64_t n_test, n_valid;
  if (o.split == "last") {
    n_test = std::min<int64_t>(1, n);
    n_valid = std::min<int64_t>(1, n - n_test);
  } else {
    n_test = std::min<int64_t>(n, std::llround(o.test_fraction * static_cast<double>(n)));
    n_valid =
        std::min<int64_t>(n - n_test, std::llround(o.valid_fraction * static_cast<double>(n)));
  }
  return {n_valid, n_test};
}

}  // namespace

CtrSplits build_ctr_samples(const InteractionLog& log, const CtrSampleOptions& o) {
  validate(log, o);
  const int64_t first_target = std::max<int64_t>(o.min_history, 0);

  // Popularity counts only the behaviours before each user's first validation/test target, so the
  // sampler never sees the future.
  std::discrete_distribution<int64_t> popularity;
  if (o.negatives > 0 && o.negative_sampling == "popularity") {
    std::vector<double> weight(log.num_items, 0.0);
    for (int64_t u = 0; u < log.num_users; ++u) {
      const auto& items = log.user_items[u];
      int64_t len = static_cast<int64_t>(items.size());
      int64_t n = std::max<int64_t>(0, len - first_target);
      auto [n_valid, n_test] = split_sizes(n, o);
      for (int64_t t = 0; t < len - n_valid - n_test; ++t) weight[items[t]] += 1.0;
    }
    weight[kPaddingId] = weight[kUnknownId] = 0.0;
    int64_t support = std::count_if(weight.begin(), weight.end(), [](double w) { return w > 0; });
    if (support < 2)
      throw ConfigError(
          "negative_sampling",
          "popularity sampling needs at least 2 items seen in training; use 'uniform'");
    popularity = std::discrete_distribution<int64_t>(weight.begin(), weight.end());
  }
  std::uniform_int_distribution<int64_t> uniform(kFirstId,
                                                 std::max<int64_t>(kFirstId, log.num_items - 1));
  std::mt19937_64 rng(o.seed);
  const bool by_popularity = o.negative_sampling == "popularity";

  CtrSplits out;
  auto append = [&](CtrSamples& s, int64_t user, int64_t item, int64_t label, int64_t offset,
                    int64_t length) {
    s.user.push_back(user);
    s.item.push_back(item);
    s.category.push_back(log.item_category[item]);
    s.label.push_back(label);
    s.history_offset.push_back(offset);
    s.history_length.push_back(length);
  };

  for (int64_t u = 0; u < log.num_users; ++u) {
    const auto& items = log.user_items[u];
    const int64_t len = static_cast<int64_t>(items.size());
    const int64_t n = std::max<int64_t>(0, len - first_target);
    auto [n_valid, n_test] = split_sizes(n, o);
    const int64_t first_valid = len - n_valid - n_test, first_test = len - n_test;
    for (int64_t t = first_target; t < len; ++t) {
      CtrSamples& s = t >= first_test ? out.test : (t >= first_valid ? out.valid : out.train);
      const int64_t offset = std::max<int64_t>(0, t - o.max_history);
      const int64_t length = t - offset;
      const int64_t positive = items[t];
      append(s, u, positive, 1, offset, length);
      for (int64_t k = 0; k < o.negatives; ++k) {
        int64_t neg;
        do {
          neg = by_popularity ? popularity(rng) : uniform(rng);
        } while (neg == positive);
        append(s, u, neg, 0, offset, length);
      }
    }
  }

  out.item_count.assign(log.num_items, 0);
  out.category_count.assign(log.num_categories, 0);
  const auto& tr = out.train;
  for (int64_t r = 0; r < tr.size(); ++r) {
    ++out.item_count[tr.item[r]];
    ++out.category_count[tr.category[r]];
    const auto& items = log.user_items[tr.user[r]];
    for (int64_t p = tr.history_offset[r], e = p + tr.history_length[r]; p < e; ++p) {
      ++out.item_count[items[p]];
      ++out.category_count[log.item_category[items[p]]];
    }
  }
  return out;
}

CtrBatch make_ctr_batch(const InteractionLog& log, const CtrSamples& samples,
                        const std::vector<int64_t>& rows, int64_t max_history) {
  TORCH_CHECK(max_history >= 1, "make_ctr_batch: max_history must be >= 1, got ", max_history);
  const int64_t b = static_cast<int64_t>(rows.size());
  int64_t t_max = 1;
  for (auto r : rows) {
    TORCH_CHECK(r >= 0 && r < samples.size(), "make_ctr_batch: row ", r, " is out of range [0, ",
                samples.size(), ")");
    t_max = std::max(t_max, std::min(samples.history_length[r], max_history));
  }
  auto i64 = torch::TensorOptions().dtype(torch::kLong);
  CtrBatch batch;
  batch.user = torch::empty({b}, i64);
  batch.item = torch::empty({b}, i64);
  batch.category = torch::empty({b}, i64);
  batch.label = torch::empty({b}, torch::TensorOptions().dtype(torch::kFloat32));
  batch.hist_length = torch::empty({b}, i64);
  batch.hist_item = torch::zeros({b, t_max}, i64);
  batch.hist_category = torch::zeros({b, t_max}, i64);
  batch.hist_mask = torch::zeros({b, t_max}, torch::TensorOptions().dtype(torch::kBool));

  auto* user = batch.user.data_ptr<int64_t>();
  auto* item = batch.item.data_ptr<int64_t>();
  auto* category = batch.category.data_ptr<int64_t>();
  auto* label = batch.label.data_ptr<float>();
  auto* length = batch.hist_length.data_ptr<int64_t>();
  auto* hist_item = batch.hist_item.data_ptr<int64_t>();
  auto* hist_category = batch.hist_category.data_ptr<int64_t>();
  auto* hist_mask = batch.hist_mask.data_ptr<bool>();
  for (int64_t i = 0; i < b; ++i) {
    const int64_t r = rows[i];
    user[i] = samples.user[r];
    item[i] = samples.item[r];
    category[i] = samples.category[r];
    label[i] = static_cast<float>(samples.label[r]);
    const auto& seq = log.user_items[samples.user[r]];
    const int64_t n = std::min(samples.history_length[r], max_history);
    const int64_t start =
        samples.history_offset[r] + samples.history_length[r] - n;  // most recent n
    length[i] = n;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t it = seq[start + k];
      hist_item[i * t_max + k] = it;
      hist_category[i * t_max + k] = log.item_category[it];
      hist_mask[i * t_max + k] = true;
    }
  }
  return batch;
}

}  // namespace recsys::data
