#pragma once
#include <torch/torch.h>

#include <vector>

#include "models/layers/mlp.h"

namespace recsys::models {

/// Softmax of `scores` [..., T] over the positions where `mask` (bool, same shape) is true.
/// Masked positions get exactly 0, and a row without any valid position gives all zeros (not NaN),
/// with zero gradient.
torch::Tensor masked_softmax(const torch::Tensor& scores, const torch::Tensor& mask);

/// What an attention-pooling layer returns.
struct AttentionOutput {
  /// [B, T] attention weights, exactly 0 at padded positions.
  torch::Tensor weights;
  /// [B, D] = sum_t weights[b, t] * keys[b, t].
  torch::Tensor pooled;
};

struct ActivationUnitOptions {
  explicit ActivationUnitOptions(int64_t dim) : dim_(dim) {}
  /// Width D of the query and of each key.
  TORCH_ARG(int64_t, dim);
  /// Hidden widths of the unit's MLP; a final linear layer to 1 output is appended.
  TORCH_ARG(std::vector<int64_t>, hidden) = std::vector<int64_t>{80, 40};
  /// Activation after every hidden layer (the paper uses Dice or PReLU, its reference code sigmoid).
  TORCH_ARG(Activation, activation) = Activation::kSigmoid;
  /// Normalise the scores with a softmax over the valid steps. DIN itself keeps the raw scores.
  TORCH_ARG(bool, softmax) = false;
  /// Compute the first layer as q (Wq + Wd) + k (Wk - Wd) + (q * k) Wp instead of concatenating
  /// [q, k, q - k, q * k]: same parameters and same function, without the [B, T, 4D] tensor.
  TORCH_ARG(bool, fused_first_layer) = true;
  /// On the CPU, with the fused first layer and an elementwise activation (not Dice, whose batch
  /// statistics would change), score only the valid steps: the steps are gathered into one
  /// [N, D] matrix (N = number of valid steps) and the pooled sum is an index_add. Same function
  /// and gradients as scoring every padded step and masking.
  TORCH_ARG(bool, pack_valid) = true;
  /// With a sigmoid or ReLU activation on the CPU: the scorer after its first layer (activation,
  /// the hidden layers, the score) as one blockwise kernel (models/layers/mlp_fused.h); false
  /// composes the layers (its oracle).
  TORCH_ARG(bool, fused_tail) = true;
};

/// DIN's local activation unit (Zhou et al., KDD 2018, fig. 2): scores each behaviour key against
/// the candidate query with an MLP over [q, k, q - k, q * k] and pools the keys with those scores.
///
/// With Dice in training mode the batch statistics include padded positions (as in the reference
/// implementation); their outputs are masked afterwards, but they still shift the statistics.
class ActivationUnitImpl : public torch::nn::Module {
 public:
  explicit ActivationUnitImpl(ActivationUnitOptions options);

  /// query [B, D], keys [B, T, D], mask [B, T] bool (true = valid step).
  AttentionOutput forward(const torch::Tensor& query, const torch::Tensor& keys,
                          const torch::Tensor& mask);

  /// Unnormalised scores [B, T] (no masking applied).
  torch::Tensor scores(const torch::Tensor& query, const torch::Tensor& keys);

  /// Whether forward takes the packed path for tensors on `device`.
  bool packs(const torch::Device& device) const;

  /// The packed path on keys that are already packed: keys [N, D] are the valid steps, step k
  /// being position index[k] = row[k] * T + t of the [B, T] history (index ascending). Returns
  /// the [B, T] weights (0 at padding) and the [B, D] pooled keys, as forward would.
  AttentionOutput forward_packed(const torch::Tensor& query, const torch::Tensor& keys,
                                 const torch::Tensor& row, const torch::Tensor& index, int64_t T);

  const ActivationUnitOptions& options() const { return options_; }
  /// The first layer: in 4D (blocks q, k, q - k, q * k), out hidden[0].
  torch::nn::Linear& first_layer() { return first_; }
  /// The activation after the first layer.
  torch::nn::AnyModule& first_activation() { return first_activation_; }
  /// The remaining layers: hidden[1..] and the final width-1 linear layer.
  Mlp& tail() { return tail_; }
  /// The scores of first-layer outputs pre [N, H1] (before the activation): [N].
  torch::Tensor score_rows(const torch::Tensor& pre);

 private:
  ActivationUnitOptions options_;
  torch::nn::Linear first_{nullptr};
  torch::nn::AnyModule first_activation_;
  Mlp tail_{nullptr};

  /// The fused first layer's weights: W_q + W_d for the per-example part, and [W_k - W_d, W_p]
  /// stacked along the input for [k, q * k].
  std::pair<torch::Tensor, torch::Tensor> fused_weights();
  AttentionOutput forward_masked_packed(const torch::Tensor& query, const torch::Tensor& keys,
                                        const torch::Tensor& mask);
};
TORCH_MODULE(ActivationUnit);

struct BilinearAttentionOptions {
  BilinearAttentionOptions(int64_t dim_h, int64_t dim_q) : dim_h_(dim_h), dim_q_(dim_q) {}
  /// Width of each state h_t.
  TORCH_ARG(int64_t, dim_h);
  /// Width of the query q.
  TORCH_ARG(int64_t, dim_q);
};

/// DIEN's attention (Zhou et al., AAAI 2019, eq. 5): score_t = h_t . (W q), W [dim_h x dim_q],
/// normalised by a softmax over the valid steps (padding gets exactly 0).
class BilinearAttentionImpl : public torch::nn::Module {
 public:
  explicit BilinearAttentionImpl(BilinearAttentionOptions options);
  BilinearAttentionImpl(int64_t dim_h, int64_t dim_q)
      : BilinearAttentionImpl(BilinearAttentionOptions(dim_h, dim_q)) {}

  /// query [B, Dq], states [B, T, Dh], mask [B, T] bool -> weights [B, T].
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& states,
                        const torch::Tensor& mask);

  const BilinearAttentionOptions& options() const { return options_; }
  /// W, [dim_h, dim_q].
  torch::Tensor weight;

 private:
  BilinearAttentionOptions options_;
};
TORCH_MODULE(BilinearAttention);

}  // namespace recsys::models
