#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

// The rest of a ReLU (or sigmoid) MLP after its first layer's product, with an optional L2
// normalisation of the output (the towers of the two-tower model; DIN's attention scorer), as
// one CPU kernel that works a block of rows
// at a time: every layer's activations of a block stay in the core's L2 cache between the
// products, and the ReLUs, bias additions, normalisation and their derivatives run on them there
// instead of as separate passes over [N, width] tensors. The composed path (MlpImpl::forward_from
// + torch::nn::functional::normalize) is its test oracle.
namespace recsys::models {

/// Why mlp_tail_fused cannot take these operands ("" when it can): a BLAS in the process; h
/// [N, d0] (N >= 1) and weights[k] [d_{k+1}, d_k] with biases[k] [d_{k+1}], all CPU tensors of
/// one dtype, float32 or float64; at least one weight.
std::string mlp_tail_unsupported(const torch::Tensor& h, const std::vector<torch::Tensor>& weights,
                                 const std::vector<torch::Tensor>& biases);

/// The activations the kernel applies between layers.
enum class TailActivation { kRelu, kSigmoid };

/// y = [normalise] (L_K o act o ... o L_1 o act)(h), L_k(x) = x W_k^T + b_k, act = ReLU or
/// sigmoid, with normalise(p) = p / max(||p||, eps) per row. h is the first layer's output
/// before its activation. Differentiable in h, the weights and the biases (double backward is
/// not supported).
torch::Tensor mlp_tail_fused(const torch::Tensor& h, const std::vector<torch::Tensor>& weights,
                             const std::vector<torch::Tensor>& biases, bool normalize,
                             double eps = 1e-8,
                             TailActivation activation = TailActivation::kRelu);

}  // namespace recsys::models
