#include "models/layers/mlp.h"

#include <stdexcept>

#include "models/layers/dice.h"
#include "models/layers/linear.h"

namespace recsys::models {

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "sigmoid") return Activation::kSigmoid;
  if (name == "prelu") return Activation::kPrelu;
  if (name == "dice") return Activation::kDice;
  if (name == "tanh") return Activation::kTanh;
  if (name == "none") return Activation::kNone;
  throw std::invalid_argument("unknown activation '" + name +
                              "' (known: relu, sigmoid, prelu, dice, tanh, none)");
}

namespace {
torch::nn::AnyModule make_activation(Activation a, int64_t dim, bool fused_dice) {
  switch (a) {
    case Activation::kRelu: return torch::nn::AnyModule(torch::nn::ReLU());
    case Activation::kSigmoid: return torch::nn::AnyModule(torch::nn::Sigmoid());
    case Activation::kTanh: return torch::nn::AnyModule(torch::nn::Tanh());
    case Activation::kPrelu:
      return torch::nn::AnyModule(torch::nn::PReLU(torch::nn::PReLUOptions().num_parameters(dim)));
    case Activation::kDice: return torch::nn::AnyModule(Dice(DiceOptions(dim).fused(fused_dice)));
    case Activation::kNone: return torch::nn::AnyModule(torch::nn::Identity());
  }
  return torch::nn::AnyModule(torch::nn::Identity());
}
}  // namespace

MlpImpl::MlpImpl(MlpOptions options) : options_(std::move(options)) {
  TORCH_CHECK(options_.in_dim() > 0, "Mlp: in_dim must be positive");
  TORCH_CHECK(!options_.hidden().empty(), "Mlp: give at least one layer width in 'hidden'");
  int64_t in = options_.in_dim();
  const auto& hidden = options_.hidden();
  for (size_t i = 0; i < hidden.size(); ++i) {
    TORCH_CHECK(hidden[i] > 0, "Mlp: layer widths must be positive");
    linears_.push_back(register_module("linear" + std::to_string(i), torch::nn::Linear(in, hidden[i])));
    bool last = i + 1 == hidden.size();
    if (!last || options_.activate_last()) {
      auto act = make_activation(options_.activation(), hidden[i], options_.fused_dice());
      if (options_.activation() != Activation::kNone)
        register_module("act" + std::to_string(i), act.ptr());
      activations_.push_back(std::move(act));
    }
    in = hidden[i];
  }
}

torch::Tensor MlpImpl::forward(torch::Tensor x) {
  TORCH_CHECK(!linears_.empty(), "Mlp: no layers");
  return forward_from(models::linear(x, linears_[0]->weight, linears_[0]->bias), 0);
}

torch::Tensor MlpImpl::forward_from(torch::Tensor x, size_t layer) {
  TORCH_CHECK(layer < linears_.size(), "Mlp::forward_from: layer ", layer, " of ",
              linears_.size());
  for (size_t i = layer; i < linears_.size(); ++i) {
    if (i > layer) x = models::linear(x, linears_[i]->weight, linears_[i]->bias);
    if (i < activations_.size()) {
      x = activations_[i].forward(x);
      if (options_.dropout() > 0) x = torch::dropout(x, options_.dropout(), is_training());
    }
  }
  return x;
}

}  // namespace recsys::models
