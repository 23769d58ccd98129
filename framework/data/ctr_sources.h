#pragma once
#include <cstdint>
#include <functional>

#include "framework/config/config.h"
#include "framework/data/ctr_data.h"
#include "framework/registry/registry.h"

namespace recsys::data {

/// Loads or generates the behaviour log (called after the whole config validated).
using CtrSource = std::function<InteractionLog()>;
/// Parses the source-specific keys of the `data` section (the common keys are read by
/// parse_ctr_sample_options; `type` by the task).
using CtrSourceFactory = std::function<CtrSource(const config::Reader&)>;

/// taobao, amazon, interactions_csv, synthetic (after register_builtin_ctr_sources()).
Registry<CtrSourceFactory>& ctr_sources();
void register_builtin_ctr_sources();

/// The sample-building keys shared by every CTR source, read from the `data` section.
struct CtrDataOptions {
  CtrSampleOptions samples;
  /// Users with fewer behaviours are dropped before the samples are built (1 keeps everyone).
  int64_t min_user_length = 1;
};

/// Reads data.{max_history, negatives, negative_sampling, split, test_fraction, valid_fraction,
/// min_history, min_user_length, seed}; bad values throw ConfigError with their JSON path.
CtrDataOptions parse_ctr_data_options(const config::Reader& data);

/// A seeded generator of behaviour logs with learnable sequential structure.
struct SyntheticCtrOptions {
  int64_t num_users = 2000;
  int64_t num_items = 3000;
  int64_t num_categories = 60;
  /// Categories a user is interested in at any time.
  int64_t interests = 3;
  /// Behaviours per user, uniform in [min_length, max_length].
  int64_t min_length = 15, max_length = 40;
  /// Per behaviour, the probability that one interest is replaced by a random category.
  double drift = 0.08;
  /// Probability that a behaviour comes from the current interests (else a random category).
  double focus = 0.9;
  /// Probability that an interest-driven behaviour repeats the category of the previous one.
  double repeat = 0.4;
  /// Zipf exponent of item popularity inside a category.
  double zipf = 1.0;
  uint64_t seed = 0;
};

/// Users hold a few category interests that drift over time; each behaviour's category is drawn
/// from the current interests (often repeating the previous one), its item Zipf-distributed
/// inside the category. The next item's category therefore depends on the RECENT history more
/// than on the whole of it, which is what attention over the history can exploit.
/// Item i has category kFirstId + (i - kFirstId) % num_categories; timestamps are positions.
InteractionLog make_synthetic_ctr(const SyntheticCtrOptions& options);

}  // namespace recsys::data
