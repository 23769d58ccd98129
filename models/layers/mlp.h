#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace recsys::models {

enum class Activation { kNone, kRelu, kSigmoid, kPrelu, kDice, kTanh };

/// Parses "relu", "sigmoid", "prelu", "dice", "tanh", "none"; throws std::invalid_argument.
Activation parse_activation(const std::string& name);

struct MlpOptions {
  MlpOptions(int64_t in_dim, std::vector<int64_t> hidden) : in_dim_(in_dim), hidden_(std::move(hidden)) {}
  /// Input width.
  TORCH_ARG(int64_t, in_dim);
  /// Output width of each layer; the last one is the MLP's output.
  TORCH_ARG(std::vector<int64_t>, hidden);
  /// Activation after every hidden layer.
  TORCH_ARG(Activation, activation) = Activation::kRelu;
  /// Whether the last layer is also followed by the activation.
  TORCH_ARG(bool, activate_last) = false;
  /// Dropout probability after each activation (0 disables).
  TORCH_ARG(double, dropout) = 0.0;
  /// Dice layers take their fused CPU kernel (DiceOptions::fused); false = composed operations.
  TORCH_ARG(bool, fused_dice) = true;
};

/// Linear layers with activations in between. Dice and PReLU hold their own parameters per layer.
class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(MlpOptions options);
  torch::Tensor forward(torch::Tensor x);
  /// The rest of forward given the output of linear layer `layer` (before its activation): for
  /// callers that compute a layer's product in an algebraically cheaper way.
  torch::Tensor forward_from(torch::Tensor linear_out, size_t layer);
  int64_t out_dim() const { return options_.hidden().back(); }
  const MlpOptions& options() const { return options_; }
  std::vector<torch::nn::Linear>& linears() { return linears_; }

 private:
  MlpOptions options_;
  std::vector<torch::nn::Linear> linears_;
  std::vector<torch::nn::AnyModule> activations_;
};
TORCH_MODULE(Mlp);

}  // namespace recsys::models
