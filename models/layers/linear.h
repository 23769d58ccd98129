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

}  // namespace recsys::models
