#pragma once
#include <utility>
#include <vector>

#include "augment/augmentation.h"

namespace recsys::augment {

/// Replaces the rows of `t` ([M, L]) where `mask` ([M] bool) is set by the default value
/// ([kDefaultIndex, 0, 0, ...]). Numeric tensors are returned unchanged.
torch::Tensor mask_rows(const torch::Tensor& t, const torch::Tensor& mask);

/// Both complementary maskings at once: {mask_rows(t, mask), mask_rows(t, ~mask)}, in one pass
/// over t on the CPU (`mask` may be a strided view, e.g. a column of a [M, F] group).
std::pair<torch::Tensor, torch::Tensor> mask_rows_both(const torch::Tensor& t, const torch::Tensor& mask);

/// Mutual information (nats) between every pair of item features, estimated over the item
/// corpus (each item counted once). For multi-valued features every pair of values of one item
/// contributes 1 / (|bag_a| |bag_b|) to the joint histogram, so each item carries unit mass;
/// marginals are the joint's sums. The diagonal holds each feature's entropy.
std::vector<std::vector<double>> mutual_information(const data::FeatureTable& items,
                                                    const std::vector<int64_t>& columns);

/// For each seed feature f, the features masked together with it by correlated feature masking:
/// f plus the (group_size - 1) others with the highest MI with f (ties by feature order).
std::vector<std::vector<int64_t>> correlated_groups(const std::vector<std::vector<double>>& mi,
                                                    int64_t group_size);

}  // namespace recsys::augment
