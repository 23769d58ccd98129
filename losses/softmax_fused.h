#pragma once
#include <torch/torch.h>

#include <string>

// The mean softmax cross-entropy of a score matrix that is itself a product, s = scale a b^T +
// bias, with row i's target in column i (in-batch softmax, the SSL contrastive loss) as one CPU
// kernel. The loss is a scalar, so its gradients with respect to a, b (and bias) are computed in
// the same pass as its value, a block of rows at a time with the block's scores kept in cache:
// the [B, C] score matrix, its softmax and its gradient never go to memory, and each score's
// exponential is computed once instead of in the forward and again in the backward. The backward
// only scales the gradients by the incoming one. The composed path (product, rowwise cross-
// entropy, mean) is its test oracle.
namespace recsys::losses {

/// Why diagonal_softmax_mean_fused cannot take these operands ("" when it can): a BLAS in the
/// process; a [B, D] and b [C, D] (C >= B >= 1) CPU float32 / float64 of one dtype; bias
/// undefined or [C] of the same dtype; column_ids undefined or [C] int64; all on the CPU.
std::string diagonal_softmax_unsupported(const torch::Tensor& a, const torch::Tensor& b,
                                         const torch::Tensor& bias,
                                         const torch::Tensor& column_ids);

/// mean_i [logsumexp_j s_ij - s_ii],  s_ij = scale <a_i, b_j> + bias_j,
/// for rows i < B of a and columns j < C of b. With column_ids, a column j != i whose id equals
/// column i's id (an accidental hit: row i's positive again) is left out of row i's softmax, as
/// a score of -1e9 (what the composed path's masked_fill does). Differentiable in a, b and bias;
/// double backward (create_graph) is refused.
torch::Tensor diagonal_softmax_mean_fused(const torch::Tensor& a, const torch::Tensor& b,
                                          double scale, const torch::Tensor& bias = {},
                                          const torch::Tensor& column_ids = {});

/// The distinct-column form: b holds C distinct columns, column j standing for counts[j] equal
/// columns of the expanded score matrix, and row i's target is column targets[i]:
///   mean_i [logsumexp_j (s_ij + log counts_j) - s_{i,targets_i}],
/// which equals diagonal_softmax_mean_fused(a, b[targets], ...) when every column is some row's
/// target as often as its count says (in-batch softmax over a batch whose popular items repeat:
/// the repeats' scores are computed once). With column_ids (accidental hits removed) the target
/// column counts once (its other copies are row i's positive again) and every other column with
/// the target's id is left out. counts [C] >= 0 (a count of 0 leaves the column out), >= 1 at
/// every target; targets [B] int64 in [0, C). Differentiable in a, b and bias.
torch::Tensor distinct_softmax_mean_fused(const torch::Tensor& a, const torch::Tensor& b,
                                          double scale, const torch::Tensor& targets,
                                          const torch::Tensor& counts,
                                          const torch::Tensor& bias = {},
                                          const torch::Tensor& column_ids = {});

/// Why distinct_softmax_mean_fused cannot take these operands ("" when it can): as
/// diagonal_softmax_unsupported but C >= 1 (not C >= B), targets a CPU int64 [B], counts a CPU
/// vector [C]. (Values are checked by the kernel.)
std::string distinct_softmax_unsupported(const torch::Tensor& a, const torch::Tensor& b,
                                         const torch::Tensor& targets, const torch::Tensor& counts,
                                         const torch::Tensor& bias = {},
                                         const torch::Tensor& column_ids = {});

}  // namespace recsys::losses
