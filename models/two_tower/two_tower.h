#pragma once
#include <torch/torch.h>

#include <optional>
#include <vector>

#include "models/layers/embedding.h"
#include "models/layers/mlp.h"

namespace recsys::models {

struct TowerOptions {
  TowerOptions(std::vector<EmbeddingFeature> features, std::vector<int64_t> hidden)
      : features_(std::move(features)), hidden_(std::move(hidden)) {}
  /// Input features of the tower, in the order of the input tensors.
  TORCH_ARG(std::vector<EmbeddingFeature>, features);
  /// MLP widths after the concatenated embeddings; the last is the output dimension.
  TORCH_ARG(std::vector<int64_t>, hidden);
  TORCH_ARG(Activation, activation) = Activation::kRelu;
  TORCH_ARG(double, dropout) = 0.0;
  /// L2-normalise the output (cosine scores).
  TORCH_ARG(bool, normalize) = true;
  TORCH_ARG(bool, sparse) = true;
  /// Sparse embedding lookups through one fused op each (FeatureEncoderOptions::fused_lookup).
  TORCH_ARG(bool, fused_lookup) = true;
  /// The layers after the first and the normalisation as one blockwise kernel
  /// (models/layers/mlp_fused.h) where it applies: with the first layer's factored paths
  /// (project_small_vocabularies, a batch where some feature is not direct), ReLU, no dropout,
  /// CPU float32 / float64.
  TORCH_ARG(bool, fused_mlp) = true;
  /// Algebraic rewrites of the first layer: it is linear in the concatenation, so feature f
  /// contributes pool(E_f[ids]) W_f^T = pool((E_f W_f^T)[ids]), and rows holding the same bag
  /// get the same contribution. Per feature and batch, by counted multiply-adds: the rows of a
  /// small table the batch uses are projected once and the projections pooled (age, gender,
  /// city, category bags), or each distinct bag is embedded and projected once and shared by
  /// the rows holding it (repeated popular items; SSL views, where a masked feature is the same
  /// default in half the rows and each item's own value appears in one view only), instead of
  /// multiplying every example's embedding. Same function, same sparse gradients; plain path =
  /// false (its test oracle).
  TORCH_ARG(bool, project_small_vocabularies) = true;
  /// With project_small_vocabularies: also consider each distinct bag projected once
  /// (FirstLayerPath::kUniqueBags); false = used rows or direct only.
  TORCH_ARG(bool, distinct_bags) = true;
};

/// How the first layer computes one feature's contribution (TowerOptions::project_small_vocabularies).
enum class FirstLayerPath {
  kDirect,      ///< the feature's pooled embedding of every row, in the product
  kUsedRows,    ///< the table rows the batch uses, projected, then pooled per bag
  kUniqueBags,  ///< each distinct bag pooled and projected once, then given to its rows
};

/// The distinct rows (bags) of a CPU int64 [B] or [B, L] id tensor: `first` [U] the row where
/// each first appears (in order of appearance), `inverse` [B] the bag of each row.
struct UniqueBags {
  torch::Tensor first, inverse;
};
UniqueBags unique_bags(const torch::Tensor& ids);
/// The distinct rows of several CPU int64 tensors of B rows each ([B] or [B, L_k]) taken
/// together: two rows are equal when they are equal in every tensor (an item's features, its
/// id, the bit pattern of its log q). Same result layout as unique_bags.
UniqueBags unique_rows(const std::vector<torch::Tensor>& columns);
/// The distinct positives of a batch of B rows: rows equal in every item feature (CPU, int64 or
/// floating point, compared by bit pattern), in the item id ([B] int64) and in the bit pattern
/// of log q ([B] float) are one item. std::nullopt where a feature has another type.
std::optional<UniqueBags> distinct_positives(const std::vector<torch::Tensor>& features,
                                             const torch::Tensor& item_ids, const torch::Tensor& log_q);

/// Embeddings -> concatenation -> MLP -> (L2 normalisation).
class TowerImpl : public torch::nn::Module {
 public:
  explicit TowerImpl(TowerOptions options);
  torch::Tensor forward(const std::vector<torch::Tensor>& inputs);
  int64_t out_dim() const { return options_.hidden().back(); }
  /// The path forward() takes for each feature's first-layer contribution on these inputs.
  std::vector<FirstLayerPath> first_layer_paths(const std::vector<torch::Tensor>& inputs);

 private:
  struct FeaturePlan {
    FirstLayerPath path = FirstLayerPath::kDirect;
    UniqueBags bags;  // kUniqueBags only
  };
  std::vector<FeaturePlan> plan(const std::vector<torch::Tensor>& inputs) const;
  torch::Tensor first_layer_factored(const std::vector<torch::Tensor>& inputs,
                                     const std::vector<FeaturePlan>& plan);
  TowerOptions options_;
  FeatureEncoder encoder_{nullptr};
  Mlp mlp_{nullptr};
};
TORCH_MODULE(Tower);

struct TwoTowerOptions {
  TwoTowerOptions(TowerOptions user, TowerOptions item) : user_(std::move(user)), item_(std::move(item)) {}
  TORCH_ARG(TowerOptions, user);
  TORCH_ARG(TowerOptions, item);
};

/// The retrieval model: it returns user and item representations; losses live in the task.
class TwoTowerImpl : public torch::nn::Module {
 public:
  explicit TwoTowerImpl(TwoTowerOptions options);
  torch::Tensor user(const std::vector<torch::Tensor>& inputs) { return user_->forward(inputs); }
  torch::Tensor item(const std::vector<torch::Tensor>& inputs) { return item_->forward(inputs); }

 private:
  Tower user_{nullptr}, item_{nullptr};
};
TORCH_MODULE(TwoTower);

}  // namespace recsys::models
