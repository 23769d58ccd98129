#pragma once
#include <torch/torch.h>

#include <vector>

#include "models/din/ctr_task.h"
#include "models/layers/mlp.h"

// Pieces every CTR model shares: the item/category embedding tables with their regularisation,
// and the pooling of a padded behaviour history.
namespace recsys::models {

enum class CtrRegularization {
  kNone,
  /// DIN's mini-batch aware L2 (section 4.3.1): only the rows present in the batch, each scaled
  /// by 1 / n_j (its occurrence count in the training samples).
  kMba,
  /// 0.5 * lambda * ||table||^2 over every row of both tables each step (dense gradient).
  kL2,
};

/// Parses "none", "mba", "l2"; throws std::invalid_argument.
CtrRegularization parse_ctr_regularization(const std::string& name);

struct CtrEmbeddingsOptions {
  CtrEmbeddingsOptions(int64_t num_items, int64_t num_categories)
      : num_items_(num_items), num_categories_(num_categories) {}
  /// Rows of the item table (including padding 0 and unknown 1).
  TORCH_ARG(int64_t, num_items);
  /// Rows of the category table (including padding 0 and unknown 1).
  TORCH_ARG(int64_t, num_categories);
  /// Width of an item embedding.
  TORCH_ARG(int64_t, item_dim) = 18;
  /// Width of a category embedding; a behaviour or candidate is [item, category].
  TORCH_ARG(int64_t, category_dim) = 18;
  /// Standard deviation of the normal initialisation (row 0, padding, starts and stays 0).
  TORCH_ARG(double, init_std) = 0.01;
  /// Sparse-gradient lookups, so the optimizer updates only the rows a batch touched.
  TORCH_ARG(bool, sparse) = true;
  /// Regularisation of both tables.
  TORCH_ARG(CtrRegularization, regularization) = CtrRegularization::kNone;
  /// Weight of the regularisation term.
  TORCH_ARG(double, lambda) = 0.0;
  /// For kMba: occurrence counts n_j, [num_items] and [num_categories] (0 counts as 1).
  TORCH_ARG(std::vector<int64_t>, item_count);
  TORCH_ARG(std::vector<int64_t>, category_count);
};

/// Item and category embedding tables. A behaviour (or the candidate) is the concatenation of
/// its item and category embeddings, width dim() = item_dim + category_dim.
class CtrEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit CtrEmbeddingsImpl(CtrEmbeddingsOptions options);

  /// item, category [...] int64 -> [..., dim()]; padding ids embed to exactly 0.
  torch::Tensor forward(const torch::Tensor& item, const torch::Tensor& category);
  int64_t dim() const { return options_.item_dim() + options_.category_dim(); }

  /// The regularisation term for one batch (lambda included): kMba over the distinct non-zero
  /// ids of the candidate and the history, kL2 over the whole tables; undefined for kNone or
  /// lambda = 0. With sparse lookups kMba's gradient is sparse too (only the batch's rows).
  torch::Tensor regularization(const CtrModelInput& input);

  const CtrEmbeddingsOptions& options() const { return options_; }
  torch::Tensor item_table, category_table;
  /// 1 / max(n_j, 1) as float32 (kMba only; otherwise undefined).
  torch::Tensor item_inv_count, category_inv_count;

 private:
  CtrEmbeddingsOptions options_;
};
TORCH_MODULE(CtrEmbeddings);

/// Sum over the valid steps: keys [B, T, D], mask [B, T] bool -> [B, D].
torch::Tensor masked_sum(const torch::Tensor& keys, const torch::Tensor& mask);

/// The options shared by the output MLPs of DIN, BaseModel and Wide&Deep's deep part.
struct CtrMlpOptions {
  /// Hidden widths; a final linear layer to 1 logit is appended.
  std::vector<int64_t> hidden{200, 80};
  /// Activation after each hidden layer (DIN: Dice; PReLU and the others also work).
  Activation activation = Activation::kDice;
  /// Dropout probability after each hidden activation.
  double dropout = 0.0;
  /// MlpOptions::fused_dice.
  bool fused_dice = true;
};

/// Builds Mlp(in_dim -> hidden... -> 1) from CtrMlpOptions.
Mlp make_ctr_mlp(int64_t in_dim, const CtrMlpOptions& options);

}  // namespace recsys::models
