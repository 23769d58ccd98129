#include "framework/data/retrieval_data.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>

namespace recsys::data {

void split_by_time(RetrievalData& data, const SplitOptions& options) {
  const int64_t n_users = data.num_users();
  if (static_cast<int64_t>(data.sequences.size()) != n_users)
    throw std::invalid_argument("split_by_time: sequences and user table disagree");
  data.train.assign(n_users, {});
  data.valid.assign(n_users, {});
  data.test.assign(n_users, {});
  data.item_clicks.assign(data.num_items(), 0);
  for (int64_t u = 0; u < n_users; ++u) {
    const auto& seq = data.sequences[u];
    const int64_t n = static_cast<int64_t>(seq.size());
    int64_t n_test = 0, n_valid = 0;
    // At least one positive to split (min_positives >= 1 in configs, but a caller may pass 0).
    if (n >= std::max<int64_t>(1, options.min_positives)) {
      if (options.protocol == "leave_last") {
        // A single positive is the test target and leaves none for validation (taking one would
        // give a training part of length -1).
        n_test = 1;
        n_valid = std::min<int64_t>(1, n - n_test);
      } else if (options.protocol == "fraction") {
        n_test = std::max<int64_t>(1, static_cast<int64_t>(std::round(n * options.test_fraction)));
        n_valid = options.valid_fraction > 0
                      ? std::max<int64_t>(1, static_cast<int64_t>(std::round(n * options.valid_fraction)))
                      : 0;
        while (n - n_test - n_valid < 1) {  // keep at least one training positive
          if (n_valid > 0) --n_valid; else --n_test;
        }
      } else {
        throw std::invalid_argument("unknown split protocol '" + options.protocol + "'");
      }
    }
    const int64_t n_train = n - n_test - n_valid;
    data.train[u].assign(seq.begin(), seq.begin() + n_train);
    data.valid[u].assign(seq.begin() + n_train, seq.begin() + n_train + n_valid);
    data.test[u].assign(seq.begin() + n_train + n_valid, seq.end());
    for (int64_t i : data.train[u]) data.item_clicks[i]++;
  }
}

namespace {

// Samples an index from a cumulative distribution.
int64_t sample_cdf(const std::vector<double>& cdf, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, cdf.back());
  auto it = std::upper_bound(cdf.begin(), cdf.end(), u(rng));
  return std::min<int64_t>(static_cast<int64_t>(it - cdf.begin()), static_cast<int64_t>(cdf.size()) - 1);
}

// Draws `k` distinct values, each from the topic's pool with probability `focus`, else anywhere.
std::vector<int64_t> draw_bag(int64_t k, int64_t pool_size, int64_t topic, int64_t num_topics,
                              double focus, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  const int64_t per_topic = std::max<int64_t>(1, pool_size / num_topics);
  std::set<int64_t> bag;
  int guard = 0;
  while (static_cast<int64_t>(bag.size()) < k && guard++ < 100) {
    int64_t v;
    if (coin(rng) < focus) {
      v = (topic * per_topic + static_cast<int64_t>(rng() % per_topic)) % pool_size;
    } else {
      v = static_cast<int64_t>(rng() % pool_size);
    }
    bag.insert(v + kFirstIndex);
  }
  return {bag.begin(), bag.end()};
}

}  // namespace

RetrievalData make_synthetic(const SyntheticOptions& o) {
  if (o.num_users < 1 || o.num_items < 2 || o.num_topics < 1 || o.min_interactions < 1 ||
      o.max_interactions < o.min_interactions)
    throw std::invalid_argument("make_synthetic: invalid sizes");
  std::mt19937_64 rng(o.seed);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  RetrievalData data;
  data.source = "synthetic";
  const int64_t n_items = o.num_items, n_users = o.num_users, K = o.num_topics;

  // Items: topic, popularity rank (a random permutation so ids carry no popularity), features.
  std::vector<int64_t> topic(n_items), rank(n_items);
  std::iota(rank.begin(), rank.end(), 0);
  std::shuffle(rank.begin(), rank.end(), rng);
  std::vector<std::vector<int64_t>> ids(n_items), cats(n_items), kws(n_items), city(n_items),
      brand(n_items);
  const int64_t n_brands = std::max<int64_t>(K * 4, 8);
  for (int64_t i = 0; i < n_items; ++i) {
    topic[i] = static_cast<int64_t>(rng() % K);
    ids[i] = {i + kFirstIndex};
    cats[i] = draw_bag(1 + static_cast<int64_t>(rng() % 3), o.num_categories, topic[i], K, o.topic_focus, rng);
    kws[i] = draw_bag(2 + static_cast<int64_t>(rng() % 4), o.num_keywords, topic[i], K, o.topic_focus, rng);
    city[i] = draw_bag(1, o.num_cities, topic[i], K, 0.6, rng);
    // The brand follows the first category (a correlated pair for correlated masking to find).
    brand[i] = {kFirstIndex + ((cats[i][0] - kFirstIndex) * 7 + static_cast<int64_t>(rng() % 2)) % n_brands};
  }
  data.items = FeatureTable(n_items);
  data.items.add_categorical({"item_id", FeatureKind::kSingle, n_items + kFirstIndex, 1}, ids);
  data.items.add_categorical({"categories", FeatureKind::kMulti, o.num_categories + kFirstIndex, 3}, cats);
  data.items.add_categorical({"keywords", FeatureKind::kMulti, o.num_keywords + kFirstIndex, 5}, kws);
  data.items.add_categorical({"city", FeatureKind::kSingle, o.num_cities + kFirstIndex, 1}, city);
  data.items.add_categorical({"brand", FeatureKind::kSingle, n_brands + kFirstIndex, 1}, brand);
  data.item_names.resize(n_items);
  for (int64_t i = 0; i < n_items; ++i) data.item_names[i] = "item" + std::to_string(i);

  // Per-topic popularity distributions over the topic's items.
  std::vector<std::vector<int64_t>> topic_items(K);
  std::vector<std::vector<double>> topic_cdf(K);
  for (int64_t i = 0; i < n_items; ++i) topic_items[topic[i]].push_back(i);
  for (int64_t k = 0; k < K; ++k) {
    double acc = 0;
    for (int64_t i : topic_items[k]) {
      acc += std::pow(static_cast<double>(rank[i] + 1), -o.zipf_exponent);
      topic_cdf[k].push_back(acc);
    }
  }
  // Topic weights follow the popularity mass so that head topics stay head.
  std::vector<double> topic_mass(K);
  for (int64_t k = 0; k < K; ++k) topic_mass[k] = topic_cdf[k].empty() ? 0 : topic_cdf[k].back();

  // Users: 1-3 interests, an age group and gender loosely tied to the first interest.
  std::vector<std::vector<int64_t>> uid(n_users), age(n_users), gender(n_users);
  data.sequences.assign(n_users, {});
  for (int64_t u = 0; u < n_users; ++u) {
    uid[u] = {u + kFirstIndex};
    std::vector<double> cdf;
    double acc = 0;
    for (int64_t k = 0; k < K; ++k) cdf.push_back(acc += topic_mass[k]);
    int64_t n_interest = 1 + static_cast<int64_t>(rng() % 3);
    std::vector<int64_t> interests;
    for (int64_t j = 0; j < n_interest; ++j) interests.push_back(sample_cdf(cdf, rng));
    age[u] = {kFirstIndex + (coin(rng) < 0.7 ? interests[0] % 7 : static_cast<int64_t>(rng() % 7))};
    gender[u] = {kFirstIndex + (coin(rng) < 0.7 ? interests[0] % 2 : static_cast<int64_t>(rng() % 2))};
    int64_t n = o.min_interactions +
                static_cast<int64_t>(rng() % (o.max_interactions - o.min_interactions + 1));
    std::set<int64_t> seen;
    for (int64_t t = 0, guard = 0; t < n && guard < n * 20; ++guard) {
      int64_t k = interests[rng() % interests.size()];
      if (topic_items[k].empty()) continue;
      int64_t item = topic_items[k][sample_cdf(topic_cdf[k], rng)];
      if (!seen.insert(item).second) continue;
      data.sequences[u].push_back(item);
      ++t;
    }
  }
  data.users = FeatureTable(n_users);
  data.users.add_categorical({"user_id", FeatureKind::kSingle, n_users + kFirstIndex, 1}, uid);
  data.users.add_categorical({"age", FeatureKind::kSingle, 7 + kFirstIndex, 1}, age);
  data.users.add_categorical({"gender", FeatureKind::kSingle, 2 + kFirstIndex, 1}, gender);
  return data;
}

}  // namespace recsys::data
