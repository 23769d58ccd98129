#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "framework/config/config.h"
#include "framework/data/retrieval_data.h"
#include "framework/registry/registry.h"

namespace recsys::augment {

/// Item features of a batch: one [M, L] int64 tensor per feature (0 = padding,
/// data::kDefaultIndex = the feature's default value), in the order of `AugmentContext::specs`.
/// Numeric features ([M, 1] float) pass through augmentations untouched.
using FeatureBatch = std::vector<torch::Tensor>;

/// What an augmentation may consult when it is built.
struct AugmentContext {
  std::vector<data::FeatureSpec> specs;       ///< the item tower's input features
  std::vector<int64_t> table_columns;         ///< column of each spec in `data->items`
  const data::RetrievalData* data = nullptr;  ///< training data (for mutual information)
};

/// An item-feature augmentation. Augmentations are values: all randomness comes from the
/// generator passed in, never from global state.
class Augmentation {
 public:
  virtual ~Augmentation() = default;
  virtual std::string name() const = 0;
  /// One augmented copy (used for single-view transforms such as feature dropout in the main task).
  virtual FeatureBatch transform(const FeatureBatch& batch, torch::Generator& gen) const = 0;
  /// Two views for the SSL loss. Independent augmentations transform twice; paired ones
  /// (complementary, correlated masking) return complementary views.
  virtual std::pair<FeatureBatch, FeatureBatch> views(const FeatureBatch& batch, torch::Generator& gen) const {
    return {transform(batch, gen), transform(batch, gen)};
  }
  /// True for augmentations whose two views are defined jointly.
  virtual bool paired() const { return false; }
};

/// Composes augmentations: the first produces the two views, each later one transforms both
/// views independently (so "correlated_mask then dropout" masks complementary feature groups,
/// then drops values inside the surviving multi-valued features).
class Chain {
 public:
  Chain() = default;
  explicit Chain(std::vector<std::shared_ptr<Augmentation>> steps);
  bool empty() const { return steps_.empty(); }
  std::pair<FeatureBatch, FeatureBatch> views(const FeatureBatch& batch, torch::Generator& gen) const;
  FeatureBatch transform(const FeatureBatch& batch, torch::Generator& gen) const;
  std::string describe() const;

 private:
  std::vector<std::shared_ptr<Augmentation>> steps_;
};

using AugmentBuilder = std::function<std::shared_ptr<Augmentation>(const AugmentContext&)>;
/// Parses (and validates) one augmentation's config; the builder runs later, with the data.
using AugmentFactory = std::function<AugmentBuilder(const config::Reader&)>;

Registry<AugmentFactory>& augmentations();
void register_builtin_augmentations();

/// Parses a chain from an array of {"type": NAME, ...} objects at `key` of `r`.
std::function<Chain(const AugmentContext&)> parse_chain(const config::Reader& r, const std::string& key);

}  // namespace recsys::augment
