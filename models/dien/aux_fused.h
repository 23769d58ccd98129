#pragma once
#include <torch/torch.h>

#include <vector>

#include "models/layers/mlp.h"

// DIEN's auxiliary loss through its scorer MLP as one CPU kernel (models/dien AuxiliaryNet, loss
// of losses/dien_aux.h). The loss is a scalar, so its gradients with respect to every input and
// parameter are computed in the same pass as its value, block of pairs by block of pairs with the
// block's activations kept in cache; the backward only scales them by the incoming gradient. The
// composed path (AuxiliaryNet::forward_pairs + losses::auxiliary_loss) is its test oracle.
namespace recsys::models {

/// Whether auxiliary_loss_fused handles this case: CPU float32 / float64 tensors, an MLP whose
/// hidden activation is sigmoid, tanh, relu or none, whose last layer has one output, with no
/// dropout and no activation after the last layer, and whose first layer takes H + E inputs.
bool auxiliary_loss_fusable(const torch::Tensor& h, const torch::Tensor& positive,
                            const torch::Tensor& negative, const MlpOptions& mlp,
                            const std::vector<torch::Tensor>& weights);

/// The auxiliary loss of P pairs:
///   loss = sum_p [softplus(-f(h_p, positive_p)) + softplus(f(h_p, negative_p))] / P
/// with f(h, e) = the MLP of `weights` / `biases` (Linear layers, `activation` between them) on
/// [h, e]. h [P, H], positive and negative [P, E], P >= 1; weights[l] [d_{l+1}, d_l] with d_0 =
/// H + E and a last width of 1. Differentiable in h, positive, negative, weights and biases.
torch::Tensor auxiliary_loss_fused(const torch::Tensor& h, const torch::Tensor& positive,
                                   const torch::Tensor& negative,
                                   const std::vector<torch::Tensor>& weights,
                                   const std::vector<torch::Tensor>& biases, Activation activation);

}  // namespace recsys::models
