#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <vector>

#include "framework/data/ctr_data.h"

// Negative behaviour sequences for DIEN's auxiliary loss (Zhou et al., AAAI 2019, section 4.2):
// next to each history the data pipeline draws a sequence of the same length whose step t is an
// item that the user did NOT take at step t.
namespace recsys::data {

/// Fills neg_item and neg_category ([B, T] int64 CPU tensors, allocated here) for the histories
/// of `rows`, aligned step by step with make_ctr_batch's hist_item / hist_category:
/// - T must be the batch's hist_item.size(1): row r has min(history_length[r], T) valid steps
///   (its most recent behaviours) at the start of the row, and 0 (padding) after them;
/// - at each valid step the item is drawn uniformly from the catalogue [kFirstId, num_items) and
///   redrawn while it equals the true behaviour at that step; its category is the item's category.
/// The draws consume `rng` row by row, step by step, so a seed gives one sequence of batches.
/// Throws c10::Error when the catalogue has fewer than two real items (no negative exists) or when
/// a row is out of range.
void fill_negative_history(const InteractionLog& log, const CtrSamples& samples,
                           const std::vector<int64_t>& rows, int64_t T, torch::Tensor& neg_item,
                           torch::Tensor& neg_category, std::mt19937_64& rng);

}  // namespace recsys::data
