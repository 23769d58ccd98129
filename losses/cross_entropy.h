#pragma once
#include <torch/torch.h>

namespace recsys::losses {

/// Softmax cross-entropy of each row of `logits` [B, C] against the column targets[i] ([B],
/// int64 in [0, C)): returns the per-row losses [B], logsumexp_j logits[i, j] - logits[i, t_i].
///
/// float32 on the CPU runs one fused kernel (a row's max, sum of exponentials and loss in one
/// pass; backward writes (softmax - one-hot) * grad in one pass), instead of log_softmax +
/// nll_loss, which materialise the [B, C] log-probabilities and a [B, C] scattered gradient.
/// Any other dtype or device uses torch's cross_entropy (the same function, its test oracle).
torch::Tensor rowwise_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets);

/// The torch::nn::functional::cross_entropy path, whatever the dtype and device.
torch::Tensor rowwise_cross_entropy_reference(const torch::Tensor& logits,
                                              const torch::Tensor& targets);

}  // namespace recsys::losses
