#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "framework/config/config.h"
#include "framework/util/id_groups.h"

namespace recsys::train {

enum class OptimizerKind { kAdam, kAdagrad, kSgd };

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::kAdam;
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  ///< Adam
  double initial_accumulator = 0.1;               ///< Adagrad
  double momentum = 0.0;                          ///< SGD (dense parameters only)
  double weight_decay = 0.0;                      ///< L2 added to the gradient (touched rows only for sparse)
  double grad_clip = 0.0;                         ///< max global gradient norm; 0 disables
  /// float32 CPU parameters: one fused pass per parameter (sparse gradients grouped by row with
  /// a counting sort instead of coalesce's sort, then m, v and the row updated together). false
  /// keeps the tensor-op path, which is the fused path's test oracle and what other devices and
  /// dtypes always use.
  bool fused = true;

  static OptimizerOptions from_config(const config::Reader& r);
};

/// Adam / Adagrad / SGD over dense and sparse-gradient parameters. A parameter whose gradient is
/// sparse (an embedding table looked up with sparse=true) is updated row-wise: only the rows the
/// batch touched, and only their optimizer state, change (the SparseAdam rule for Adam).
/// Dense parameters follow the textbook update. Global-norm clipping covers both kinds.
class Optimizer {
 public:
  Optimizer(std::vector<torch::Tensor> params, OptimizerOptions options);
  /// Drops every gradient (sparse and dense): the next backward's gradients are taken over as
  /// they are. step() treats a dense parameter that had a gradient before and has none now as
  /// having a zero gradient, the same update as zeroing it would give.
  void zero_grad();
  void step();
  int64_t steps() const { return steps_; }
  const OptimizerOptions& options() const { return options_; }
  /// Optimizer state as named tensors (for checkpoints) and back.
  void save(torch::serialize::OutputArchive& archive) const;
  /// A checksum of the state save() writes (step count and every state tensor), stored with
  /// checkpoints and compared after load().
  uint64_t checksum() const;
  void load(torch::serialize::InputArchive& archive);
  /// Deep copies of the state (for keeping the best model in memory).
  std::vector<torch::Tensor> state_tensors() const;

 private:
  void update_dense(size_t i, torch::Tensor& p, torch::Tensor g);
  void update_sparse(size_t i, torch::Tensor& p, const torch::Tensor& g);
  bool fusable(size_t i) const;
  /// Adam's 1 - beta1^t and 1 - beta2^t at the current step t.
  std::pair<double, double> bias_corrections() const;
  void step_plain();
  void step_fused();

  /// A sparse gradient grouped by row: rows[u] is the u-th distinct row (first-seen order) and
  /// its entries are order[start[u] .. start[u + 1]). Rows that already ascend strictly (the
  /// fused lookups' gradients, run_staged's merged ones) are taken as they are, without the
  /// grouping pass.
  using RowGroups = util::IdGroups;
  void group_rows(size_t i, const torch::Tensor& indices, RowGroups& out);

  std::vector<torch::Tensor> params_;
  OptimizerOptions options_;
  std::vector<torch::Tensor> state1_, state2_;  // Adam m/v, Adagrad sum, SGD momentum
  std::vector<std::vector<int32_t>> slot_;      // fused path: row -> group, -1 between steps
  /// Per parameter: whether zero_grad() dropped a dense gradient of it (it then steps with a
  /// zero gradient when a backward gives it none).
  std::vector<char> dense_seen_;
  int64_t steps_ = 0;
};

}  // namespace recsys::train
