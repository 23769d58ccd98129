#pragma once
#include <torch/torch.h>

#include "framework/dist/dist.h"

namespace recsys::models {

struct DiceOptions {
  explicit DiceOptions(int64_t dim) : dim_(dim) {}
  /// Number of channels (last dimension of the input).
  TORCH_ARG(int64_t, dim);
  /// Added to the variance before the square root.
  TORCH_ARG(double, eps) = 1e-8;
  /// Weight of the new batch statistics in the running averages used in eval mode.
  TORCH_ARG(double, momentum) = 0.01;
  /// On the CPU in float32 / float64: one autograd node with hand-written statistics,
  /// activation and backward passes (about 14 forward and 20 backward tensor operations
  /// otherwise); false = the composed tensor operations, its test oracle.
  TORCH_ARG(bool, fused) = true;
};

/// Dice (DIN, eq. 9): f(s) = p(s) s + (1 - p(s)) alpha s with
/// p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps)). E and Var are the mini-batch statistics
/// per channel while training (over every leading dimension) and running averages in eval mode.
class DiceImpl : public torch::nn::Module {
 public:
  explicit DiceImpl(DiceOptions options);
  torch::Tensor forward(const torch::Tensor& x);
  /// Data-parallel runs: in training the batch statistics are taken over every rank's rows
  /// (SyncBatchNorm's rule; differentiable, the gradient reaching each rank's rows from every
  /// rank's loss), so N ranks of batch B normalise as one process of batch N x B, and the running
  /// statistics stay equal on every rank. A plain context (the default) keeps them local.
  void set_sync(dist::Context context) { sync_ = std::move(context); }

  torch::Tensor alpha, running_mean, running_var;

 private:
  torch::Tensor forward_synced(const torch::Tensor& flat);
  DiceOptions options_;
  dist::Context sync_;
};
TORCH_MODULE(Dice);

}  // namespace recsys::models
