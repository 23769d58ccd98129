#pragma once
#include <torch/torch.h>

#include <vector>

namespace recsys::losses {

struct InBatchSoftmaxOptions {
  /// Logits are cos(a_i, b_j) / temperature (towers output unit vectors).
  TORCH_ARG(double, temperature) = 0.05;
  /// Mask a column whose item equals row i's positive (j != i): it is not a negative.
  TORCH_ARG(bool, remove_accidental_hits) = true;
  /// The fused softmax cross-entropy kernel (losses/cross_entropy.h) where it applies; false
  /// takes torch's cross_entropy (the kernel's oracle, for before/after measurements).
  TORCH_ARG(bool, fused_kernel) = true;
  /// inbatch_softmax_mean only: the score product, softmax cross-entropy and mean as one kernel
  /// (losses/softmax_fused.h) where it applies; false composes them (its oracle).
  TORCH_ARG(bool, fused_mean) = true;
};

/// Listwise in-batch softmax with logQ correction (Yi et al., RecSys 2019):
///   s_ij = <a_i, b_j> / tau - log_q_j,  loss_i = -log softmax_j(s_ij)[positive column of i].
/// `user` [B,D], `item` [B,D] are the positives' embeddings (row i's positive is column i);
/// `extra_item` [M,D] optional extra negatives (mixed negative sampling) appended as columns.
/// `log_q` holds log q_j for all B (+M) columns; `item_ids` their item ids (for accidental hits).
/// Returns the per-example loss [B].
torch::Tensor inbatch_softmax(const torch::Tensor& user, const torch::Tensor& item,
                              const torch::Tensor& log_q, const torch::Tensor& item_ids,
                              const InBatchSoftmaxOptions& options,
                              const torch::Tensor& extra_item = {});

/// mean_i of inbatch_softmax(...)_i: with fused_mean (CPU float32 / float64) the product, the
/// cross-entropy and the mean run as one blockwise kernel that never stores the [B, C] scores;
/// otherwise inbatch_softmax(...).mean(). The same function either way.
torch::Tensor inbatch_softmax_mean(const torch::Tensor& user, const torch::Tensor& item,
                                   const torch::Tensor& log_q, const torch::Tensor& item_ids,
                                   const InBatchSoftmaxOptions& options,
                                   const torch::Tensor& extra_item = {});

/// inbatch_softmax_mean for a batch whose positives are given once per distinct item: `item`
/// [U, D] the distinct positives' embeddings, `targets` [B] int64 the distinct positive of each
/// row, `log_q` and `item_ids` one entry per distinct column (U, then M for `extra_item`). The
/// same function as inbatch_softmax_mean(user, item[targets], log_q of the expanded columns, ...):
/// a repeated item's scores are computed once and counted with its multiplicity (in-batch
/// softmax over popular items, where a batch of 1,024 Zipf(1.1) draws out of 200,000 holds about
/// 507 distinct ones). With fused_mean on CPU float32 / float64 one kernel
/// (losses/softmax_fused.h, distinct_softmax_mean_fused); otherwise the expanded composition (its
/// oracle).
torch::Tensor inbatch_softmax_mean_distinct(const torch::Tensor& user, const torch::Tensor& item,
                                            const torch::Tensor& targets,
                                            const torch::Tensor& log_q,
                                            const torch::Tensor& item_ids,
                                            const InBatchSoftmaxOptions& options,
                                            const torch::Tensor& extra_item = {});

/// A per-column vector (log q, item ids) whose first `positives` entries belong to the batch's
/// positives and the rest to extra negatives: the positives' entries taken at `index`, then the
/// rest unchanged. Maps between one entry per row and one per distinct positive.
torch::Tensor positive_columns(const torch::Tensor& per_column, int64_t positives,
                               const torch::Tensor& index);

/// The SSL contrastive loss of Yao et al. (eq. 3): views z1 [M,D], z2 [M,D] (unit vectors);
/// loss_i = -log softmax_j(<z1_i, z2_j> / tau)[i]; `symmetric` averages both directions.
/// `extra2` [K, D] adds view-2 rows of other items as further negatives (columns after z2's);
/// with `symmetric`, `extra1` does the same for the other direction (both or neither). Data-
/// parallel runs pass the other ranks' views here. Returns the per-example loss [M].
torch::Tensor contrastive(const torch::Tensor& z1, const torch::Tensor& z2, double temperature,
                          bool symmetric = false, bool fused_kernel = true,
                          const torch::Tensor& extra2 = {}, const torch::Tensor& extra1 = {});

/// mean_i of contrastive(...)_i; `fused_mean` runs the one-direction loss as one blockwise kernel
/// (losses/softmax_fused.h) on CPU float32 / float64, else contrastive(...).mean().
torch::Tensor contrastive_mean(const torch::Tensor& z1, const torch::Tensor& z2,
                               double temperature, bool symmetric = false,
                               bool fused_kernel = true, bool fused_mean = true,
                               const torch::Tensor& extra2 = {}, const torch::Tensor& extra1 = {});

/// Spread-out regularisation (Zhang et al., ICCV 2017) on unit vectors q [N,D]:
///   M1 = mean_{i != j} <q_i, q_j>, M2 = mean_{i != j} <q_i, q_j>^2,
///   loss = M1^2 + max(0, M2 - 1/D).
torch::Tensor spread_out(const torch::Tensor& q);

/// log of a candidate column's expected number of occurrences among a step's candidates:
/// `per_step` of them among the batch's positives (B p_j with click counts, the streaming
/// estimate 1 / gap) plus `mixed` / `num_items` from `mixed` uniformly drawn negatives. The logQ
/// correction subtracts it from the column's score; with no mixed negatives it is log p_j plus a
/// constant.
double log_expected_count(double per_step, double mixed, double num_items);

/// Streaming frequency estimation (Yi et al., RecSys 2019, Algorithm 2): per hashed id, A holds
/// the last step it was seen and B the moving average of the gap between sightings; the
/// sampling probability per step is estimated as 1 / B.
class StreamingFrequency {
 public:
  StreamingFrequency(int64_t buckets, double alpha, double initial_gap);
  /// Updates with the ids seen at `step` (ids in a batch are processed left to right) and
  /// returns log p for each of them: p = 1 / gap, the estimated chance per step that the id is
  /// among the step's positives (about B p_j for a batch of B positives).
  std::vector<float> update(const int64_t* ids, int64_t n, int64_t step);
  /// The current log p of each id, without counting them as seen (extra candidates that are not
  /// positives of the step: mixed negatives).
  std::vector<float> estimate(const int64_t* ids, int64_t n) const;

 private:
  size_t bucket(int64_t id) const;
  float log_p(size_t bucket) const;
  std::vector<double> last_, gap_;
  double alpha_;
};

}  // namespace recsys::losses
