#include "framework/data/ctr_negatives.h"

#include <algorithm>

namespace recsys::data {

void fill_negative_history(const InteractionLog& log, const CtrSamples& samples,
                           const std::vector<int64_t>& rows, int64_t T, torch::Tensor& neg_item,
                           torch::Tensor& neg_category, std::mt19937_64& rng) {
  TORCH_CHECK(T >= 1, "fill_negative_history: T must be >= 1 (the batch's hist_item.size(1)), got ",
              T);
  TORCH_CHECK(log.num_items - kFirstId >= 2, "fill_negative_history: the item catalogue has ",
              log.num_items - kFirstId, " real item(s); negative behaviours need at least 2");
  TORCH_CHECK(static_cast<int64_t>(log.item_category.size()) == log.num_items,
              "fill_negative_history: log.item_category has ", log.item_category.size(),
              " entries but num_items is ", log.num_items, "; build the log with a loader");
  const int64_t b = static_cast<int64_t>(rows.size());
  auto i64 = torch::TensorOptions().dtype(torch::kLong);
  neg_item = torch::zeros({b, T}, i64);
  neg_category = torch::zeros({b, T}, i64);
  auto* item = neg_item.data_ptr<int64_t>();
  auto* category = neg_category.data_ptr<int64_t>();
  std::uniform_int_distribution<int64_t> uniform(kFirstId, log.num_items - 1);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t r = rows[i];
    TORCH_CHECK(r >= 0 && r < samples.size(), "fill_negative_history: row ", r,
                " is out of range [0, ", samples.size(), ")");
    const auto& seq = log.user_items[samples.user[r]];
    // Same window as make_ctr_batch: the most recent min(length, T) behaviours, left-aligned.
    const int64_t n = std::min(samples.history_length[r], T);
    const int64_t start = samples.history_offset[r] + samples.history_length[r] - n;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t positive = seq[start + k];
      int64_t neg;
      do {
        neg = uniform(rng);
      } while (neg == positive);
      item[i * T + k] = neg;
      category[i * T + k] = log.item_category[neg];
    }
  }
}

}  // namespace recsys::data
