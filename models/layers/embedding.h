#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace recsys::models {

enum class Pooling { kMean, kSum };
Pooling parse_pooling(const std::string& name);

struct EmbeddingFeature {
  std::string name;
  int64_t vocab_size = 0;  ///< 0 for a numeric feature
  int64_t dim = 32;
  Pooling pooling = Pooling::kMean;
  bool numeric = false;
};

struct FeatureEncoderOptions {
  explicit FeatureEncoderOptions(std::vector<EmbeddingFeature> features) : features_(std::move(features)) {}
  /// One entry per input tensor, in order.
  TORCH_ARG(std::vector<EmbeddingFeature>, features);
  /// Sparse gradients for the tables, so the optimizer updates only the rows a batch touched.
  TORCH_ARG(bool, sparse) = true;
  /// Sparse lookups through the fused pooled_rows_sparse op (models/layers/rows.h; false:
  /// torch::embedding + pooling, its oracle).
  TORCH_ARG(bool, fused_lookup) = true;
  /// Standard deviation of the normal initialisation of embedding rows.
  TORCH_ARG(double, init_std) = 0.05;
};

/// Embeds a list of features and concatenates them: categorical inputs are [B, L] index tensors
/// (0 = padding, pooled over the non-padding entries by mean or sum; a single-valued feature is
/// L = 1), numeric inputs are [B, 1] floats scaled by a learnt vector.
class FeatureEncoderImpl : public torch::nn::Module {
 public:
  explicit FeatureEncoderImpl(FeatureEncoderOptions options);
  torch::Tensor forward(const std::vector<torch::Tensor>& inputs);
  /// Feature i's part of the concatenation ([B, dim]).
  torch::Tensor encode(size_t i, const torch::Tensor& input);
  int64_t out_dim() const { return out_dim_; }
  const FeatureEncoderOptions& options() const { return options_; }
  /// The table of feature i (undefined for numeric features).
  const torch::Tensor& table(size_t i) const { return tables_.at(i); }

 private:
  FeatureEncoderOptions options_;
  std::vector<torch::Tensor> tables_;
  int64_t out_dim_ = 0;
};
TORCH_MODULE(FeatureEncoder);

/// Pools one bag: masked mean or sum of table rows; padding rows of `ids` (0) contribute nothing.
/// With sparse gradients on the CPU, `fused` takes models::pooled_rows_sparse (one op; a sparse
/// gradient with one entry per distinct id); else torch::embedding + sum (+ divide), its oracle.
torch::Tensor pooled_lookup(const torch::Tensor& table, const torch::Tensor& ids, Pooling pooling, bool sparse,
                            bool fused = true);

}  // namespace recsys::models
