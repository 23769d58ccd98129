#include "models/layers/regularization.h"

namespace recsys::models {

torch::Tensor mba_l2(const torch::Tensor& weight, const torch::Tensor& ids,
                     const torch::Tensor& inv_count) {
  TORCH_CHECK(weight.dim() == 2, "mba_l2: weight must be an embedding table [V, D], got ",
              weight.sizes());
  TORCH_CHECK(ids.scalar_type() == torch::kLong,
              "mba_l2: ids must be int64; convert with ids.to(torch::kLong)");
  TORCH_CHECK(inv_count.dim() == 1 && inv_count.size(0) == weight.size(0),
              "mba_l2: inv_count must be [V] = [", weight.size(0), "] (one entry per row), got ",
              inv_count.sizes());
  // Distinct ids: a row that appears several times in the batch is regularised once.
  auto distinct = std::get<0>(torch::_unique(ids.reshape(-1), /*sorted=*/false));
  distinct = distinct.masked_select(distinct != 0);
  auto rows = weight.index_select(0, distinct);
  auto scale = inv_count.index_select(0, distinct).to(weight.scalar_type());
  return 0.5 * (scale * rows.pow(2).sum(1)).sum();
}

torch::Tensor plain_l2(const torch::Tensor& weight) { return 0.5 * weight.pow(2).sum(); }

torch::Tensor inverse_counts(const torch::Tensor& counts) {
  return 1.0 / counts.to(torch::kFloat32).clamp_min(1.0);
}

}  // namespace recsys::models
