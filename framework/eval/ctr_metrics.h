#pragma once
#include <cstdint>
#include <vector>

// Binary-classification metrics of CTR ranking (DIN, Zhou et al. KDD 2018, section 5.3).
// Every function throws std::invalid_argument on mismatched lengths.
namespace recsys::eval {

/// Area under the ROC curve = P(score of a random positive > score of a random negative), ties
/// counting 1/2: the Mann-Whitney U statistic with average ranks, U / (n_pos * n_neg).
/// A label counts as positive when > 0.5. Returns 0.5 when one class is absent (undefined AUC).
double auc(const std::vector<float>& scores, const std::vector<float>& labels);

/// Group AUC (DIN eq. 10): sum_u n_u AUC_u / sum_u n_u over the users having both a positive and
/// a negative impression, n_u the user's number of impressions. Users with a single class are
/// skipped; returns 0.5 when no user qualifies.
double gauc(const std::vector<float>& scores, const std::vector<float>& labels,
            const std::vector<int64_t>& users);

/// Mean binary cross-entropy of `probabilities` (clipped to [1e-7, 1 - 1e-7]) against labels;
/// 0 for an empty input.
double logloss(const std::vector<float>& probabilities, const std::vector<float>& labels);

/// RelaImpr (DIN eq. 11) as a fraction: (auc_model - 0.5) / (auc_base - 0.5) - 1.
/// Multiply by 100 for the percentage the paper reports. Throws when auc_base == 0.5.
double rela_impr(double auc_model, double auc_base);

}  // namespace recsys::eval
