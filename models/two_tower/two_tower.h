#pragma once
#include <torch/torch.h>

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
  /// Algebraic rewrite of the first layer for small vocabularies: the first layer is linear in
  /// the concatenation, so feature f contributes pool(E_f[ids]) W_f^T = pool((E_f W_f^T)[ids]).
  /// When a table's rows times its width are cheaper than the batch's rows times the width,
  /// the rows the batch uses are projected once and the projections pooled, instead of
  /// multiplying every example's embedding (age, gender, city, category bags). Same function,
  /// same sparse gradients; plain path = false (its test oracle).
  TORCH_ARG(bool, project_small_vocabularies) = true;
};

/// Embeddings -> concatenation -> MLP -> (L2 normalisation).
class TowerImpl : public torch::nn::Module {
 public:
  explicit TowerImpl(TowerOptions options);
  torch::Tensor forward(const std::vector<torch::Tensor>& inputs);
  int64_t out_dim() const { return options_.hidden().back(); }
  /// Features whose first-layer product forward() computes through projected table rows for a
  /// batch of `rows` examples (the ids tensors' widths give the bag sizes).
  std::vector<bool> projected_features(const std::vector<torch::Tensor>& inputs) const;

 private:
  torch::Tensor first_layer_factored(const std::vector<torch::Tensor>& inputs,
                                     const std::vector<bool>& projected);
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
