#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "framework/data/schema.h"

namespace recsys::data {

/// A retrieval corpus: user and item feature tables plus each user's time-ordered positives.
/// Item row r (0-based) has item_id index r + kFirstIndex; likewise for users. The first feature
/// of `users` is "user_id" and of `items` is "item_id".
struct RetrievalData {
  std::string source;  ///< "synthetic", "movielens:ml-100k", ...
  FeatureTable users;
  FeatureTable items;
  std::vector<std::string> item_names;                 ///< titles (or generated names), for exports
  /// The source's raw ids by row, for exports (empty: the row number stands for the id).
  std::vector<std::string> item_keys, user_keys;
  std::vector<std::vector<int64_t>> sequences;         ///< per user row: positive item rows by time

  // Filled by split_by_time():
  std::vector<std::vector<int64_t>> train, valid, test;  ///< per user row
  std::vector<int64_t> item_clicks;                      ///< training positives per item row

  int64_t num_users() const { return users.num_rows(); }
  int64_t num_items() const { return items.num_rows(); }
};

struct SplitOptions {
  /// "leave_last": last positive test, second-to-last validation; "fraction": the last
  /// test_fraction of each user's positives test, the valid_fraction before them validation.
  std::string protocol = "leave_last";
  double valid_fraction = 0.2;
  double test_fraction = 0.2;
  /// Users with fewer positives than this keep them all in training.
  int64_t min_positives = 3;
};

/// Splits every user's sequence by time (no shuffling) and counts training clicks per item.
void split_by_time(RetrievalData& data, const SplitOptions& options);

struct SyntheticOptions {
  int64_t num_users = 2000;
  int64_t num_items = 3000;
  int64_t num_topics = 20;
  int64_t num_categories = 60;
  int64_t num_keywords = 400;
  int64_t num_cities = 30;
  int64_t min_interactions = 8;
  int64_t max_interactions = 30;
  double zipf_exponent = 1.1;   ///< item popularity ~ rank^-exponent
  double topic_focus = 0.85;    ///< chance an item's category / keyword comes from its topic
  uint64_t seed = 7;
};

/// Deterministic synthetic corpus. Items have a latent topic, power-law popularity, a bag of
/// 1-3 categories and 2-5 keywords drawn mostly from their topic's pools, and a city and a
/// "brand" correlated with the topic; users have 1-3 topic interests and click items of those
/// topics in proportion to popularity. Because features reveal the topic, what is learnt on
/// head items transfers to tail items through shared feature embeddings.
RetrievalData make_synthetic(const SyntheticOptions& options);

struct MovieLensOptions {
  std::string path;             ///< directory holding one of the official layouts
  double min_rating = 4.0;      ///< ratings >= this count as positives
  int64_t year_bucket = 5;      ///< release years bucketed by this many years
};

/// Reads ml-100k (u.data, u.item latin-1, u.user), ml-1m (ratings.dat, movies.dat, users.dat,
/// "::"-separated) or ml-latest / ml-latest-small / ml-20m / ml-25m (ratings.csv, movies.csv).
/// Item features: item_id, genres (multi), year (single, bucketed); user features: user_id plus
/// age, gender, occupation where the format has them. Positives are ratings >= min_rating,
/// ordered by timestamp (ties by file order). Throws DataError(file, line) on malformed rows.
RetrievalData load_movielens(const MovieLensOptions& options);

}  // namespace recsys::data
