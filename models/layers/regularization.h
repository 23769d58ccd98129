#pragma once
#include <torch/torch.h>

namespace recsys::models {

/// Mini-batch aware L2 regularisation (DIN, section 4.3.1, eq. 4):
/// 0.5 * sum over the DISTINCT non-zero ids j in `ids` of inv_count[j] * ||weight[j]||^2.
/// Each row present in the batch counts once however often it appears; id 0 (padding) is ignored.
/// The gradient is inv_count[j] * weight[j] on the batch's rows and exactly 0 on every other row,
/// so only the rows a batch touched are regularised.
///   weight    [V, D] embedding table
///   ids       any shape, int64, values in [0, V)
///   inv_count [V], 1 / n_j with n_j the id's occurrence count in the training data
torch::Tensor mba_l2(const torch::Tensor& weight, const torch::Tensor& ids,
                     const torch::Tensor& inv_count);

/// 0.5 * ||weight||^2 over every entry (the dense baseline that mba_l2 replaces).
torch::Tensor plain_l2(const torch::Tensor& weight);

/// 1 / max(n, 1) as float32, for mba_l2's inv_count from occurrence counts (unseen ids get 1).
torch::Tensor inverse_counts(const torch::Tensor& counts);

}  // namespace recsys::models
