#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

// CTR data for DIN/DIEN-style models: behaviour logs, their loaders, and the (history, target)
// samples built from them. Malformed input throws recsys::DataError (file:line).
namespace recsys::data {

/// Index 0 of every vocabulary is padding, index 1 unknown/OOV; real ids start at kFirstId.
constexpr int64_t kPaddingId = 0;
constexpr int64_t kUnknownId = 1;
constexpr int64_t kFirstId = 2;

/// Time-ordered behaviours per user, every id mapped to a dense index (0 padding, 1 unknown).
/// Users share the convention: user indices start at 2, and user_items[0], user_items[1] are empty,
/// so a user index is directly usable as an embedding row.
struct InteractionLog {
  /// Vocabulary sizes, including indices 0 and 1.
  int64_t num_items = kFirstId, num_categories = kFirstId, num_users = kFirstId;
  /// [num_items] category index of each item (0 for padding, 1 when unknown).
  std::vector<int64_t> item_category;
  /// [num_users] per user, item indices in time order (stable by timestamp).
  std::vector<std::vector<int64_t>> user_items;
  /// Same shape as user_items: timestamps (or file order when the source has none).
  std::vector<std::vector<int64_t>> user_times;
  /// Raw ids by index ("<pad>", "<unk>" at 0 and 1), for exports.
  std::vector<std::string> item_names, user_names, category_names;

  /// Total number of behaviours over all users.
  int64_t num_interactions() const;
};

/// Taobao UserBehavior CSV (`user,item,category,behavior,timestamp`, no header). Keeps the rows
/// whose behavior is in `behaviors`. An item keeps the category of its first row.
InteractionLog load_taobao(const std::string& path, const std::vector<std::string>& behaviors = {
                                                        "pv", "buy", "cart", "fav"});

/// Amazon 5-core reviews (one JSON object per line: reviewerID, asin, unixReviewTime) with their
/// meta file (one object per line: asin, categories). An item's category is the LAST entry of the
/// FIRST category list, as in the DIN/DIEN preprocessing scripts. Meta lines may be JSON or the
/// python dict literals of the older dumps (single-quoted strings, True/False/None).
/// Items without meta (or without categories) get category 1 (unknown).
InteractionLog load_amazon(const std::string& reviews_path, const std::string& meta_path);

struct CsvOptions {
  /// File to read.
  std::string path;
  /// Field separator. Fields may be double-quoted ("a,b", with "" for a quote inside).
  char delimiter = ',';
  /// Whether the first line names the columns.
  bool header = true;
  /// Columns: a name when `header`, else a 0-based index written in decimal ("0", "3").
  /// `category` and `timestamp` may be empty = absent: without a timestamp the file order is the
  /// time order; without a category every item gets category index 2 ("none").
  std::string user, item, category, timestamp;
};

/// A delimited file with one behaviour per line. Quoted fields may not span lines.
InteractionLog load_interactions_csv(const CsvOptions& options);

/// Drops the users with fewer than `min_user_len` behaviours and renumbers the remaining users
/// (order kept). Item and category indices do not change.
void filter_min_count(InteractionLog& log, int64_t min_user_len);

struct CtrSampleOptions {
  /// At most this many previous behaviours form a sample's history (the most recent ones).
  int64_t max_history = 50;
  /// Negative samples (label 0) per positive, sharing its history.
  int64_t negatives = 1;
  /// "uniform" over item indices >= 2, or "popularity" (frequency among the behaviours that come
  /// before each user's first validation/test target).
  std::string negative_sampling = "uniform";
  /// "last": per user the last target is test, the one before validation, the rest training.
  /// "fraction": the last round(test_fraction * n) targets of each user are test and the
  /// round(valid_fraction * n) before them validation.
  std::string split = "last";
  double test_fraction = 0.2, valid_fraction = 0.1;
  /// A behaviour at position t is a target when t >= min_history.
  int64_t min_history = 1;
  /// Seed of the std::mt19937_64 that draws the negatives.
  uint64_t seed = 0;
};

/// Flat, columnar samples; one row per (target, label). A row's history is
/// user_items[user][history_offset, history_offset + history_length).
struct CtrSamples {
  std::vector<int64_t> user, item, category, label, history_offset, history_length;
  /// Reserved for DIEN's auxiliary loss; left empty for now.
  std::vector<int64_t> neg_history_item;

  int64_t size() const { return static_cast<int64_t>(item.size()); }
};

struct CtrSplits {
  CtrSamples train, valid, test;
  /// Occurrences of each item / category among the TRAINING samples' targets and histories
  /// ([num_items], [num_categories]); the n_j of mini-batch aware regularisation.
  std::vector<int64_t> item_count, category_count;
};

/// DIN/DIEN protocol: every target position t >= min_history of every user gives one positive
/// (item[t], label 1) and `negatives` negatives (a sampled item != item[t], label 0), all with the
/// history of positions [max(0, t - max_history), t). Deterministic given options.seed.
/// Bad options throw recsys::ConfigError.
CtrSplits build_ctr_samples(const InteractionLog& log, const CtrSampleOptions& options);

/// One mini-batch of CPU int64 tensors (label float32).
struct CtrBatch {
  torch::Tensor user, item, category, label;
  /// [B, T] with T = the longest history in the batch (at most max_history, at least 1),
  /// padded with 0 at the END (right padding).
  torch::Tensor hist_item, hist_category;
  /// [B, T] bool, true on the valid steps.
  torch::Tensor hist_mask;
  /// [B] number of valid steps.
  torch::Tensor hist_length;

  int64_t size() const { return user.defined() ? user.size(0) : 0; }
};

/// Gathers `rows` of `samples` into a batch. Histories longer than max_history keep their most
/// recent max_history behaviours.
CtrBatch make_ctr_batch(const InteractionLog& log, const CtrSamples& samples,
                        const std::vector<int64_t>& rows, int64_t max_history);

}  // namespace recsys::data
