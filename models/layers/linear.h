#pragma once
#include <torch/torch.h>

// A fully connected layer whose products (forward, and both products of its backward) run
// through util::mm / util::addmm: on the CPU one BLAS call per thread (framework/util/matmul.h).
namespace recsys::models {

/// x [..., in] W^T + b, W [out, in], b [out], or undefined, or for a 2-D x [N, in] an addend
/// [N, out] per row. Same function and gradients as torch::linear / torch::addmm (its oracle);
/// elsewhere than on the CPU in float32 / float64 it is computed by them.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias);

/// The pointwise activations linear_act folds into the layer.
enum class LinearActivation { kNone, kRelu, kSigmoid, kTanh };

/// act(x W^T + b) for x [N, in], W [out, in], b [out] or undefined. On the CPU in float32 /
/// float64 the activation runs in place on the product's output, and the backward multiplies by
/// its derivative (from the saved output) in the same pass over the rows that sums the bias
/// gradient: no separate activation tensor, no separate derivative and bias-sum passes. Same
/// function and gradients as linear followed by torch::relu / sigmoid / tanh (its oracle, and
/// the path for other devices, dtypes and shapes, and with the switch below off).
torch::Tensor linear_act(const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& bias, LinearActivation act);

/// Process-wide switch (default on): off makes linear_act compose linear and the activation.
/// For A/B measurements (`recsys bench --disable linear_act`) and tests.
void set_fused_linear_activation(bool on);
bool fused_linear_activation_enabled();

}  // namespace recsys::models
