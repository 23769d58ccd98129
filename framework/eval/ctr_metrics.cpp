#include "framework/eval/ctr_metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "framework/util/errors.h"

namespace recsys::eval {
namespace {

/// Scores must be finite: sorting NaN breaks the ordering (and the tie scan would never advance),
/// and a NaN probability would pass through logloss's clamp.
void check_finite(const std::vector<float>& scores, const char* what) {
  for (size_t i = 0; i < scores.size(); ++i)
    if (!std::isfinite(scores[i]))
      throw NumericError(std::string(what) + ": non-finite model output (" + std::to_string(scores[i]) +
                         ") at impression " + std::to_string(i) +
                         "; the model diverged (lower train.optimizer.lr or set train.optimizer.grad_clip)");
}

void check_sizes(size_t a, size_t b, const char* what) {
  if (a != b)
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(a) + " scores but " +
                                std::to_string(b) + " labels/users; pass one per impression");
}

/// AUC over the impressions listed in `idx` (reordered in place).
double auc_of(const std::vector<float>& scores, const std::vector<float>& labels,
              std::vector<int64_t>& idx) {
  std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return scores[a] < scores[b]; });
  double rank_sum = 0;  // sum of the (1-based, tie-averaged) ranks of the positives
  int64_t n_pos = 0;
  const int64_t n = static_cast<int64_t>(idx.size());
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    while (j < n && scores[idx[j]] == scores[idx[i]]) ++j;
    const double avg_rank = 0.5 * static_cast<double>(i + 1 + j);  // mean of ranks i+1 .. j
    for (int64_t k = i; k < j; ++k)
      if (labels[idx[k]] > 0.5f) {
        rank_sum += avg_rank;
        ++n_pos;
      }
    i = j;
  }
  const int64_t n_neg = n - n_pos;
  if (n_pos == 0 || n_neg == 0) return 0.5;
  const double p = static_cast<double>(n_pos);
  return (rank_sum - p * (p + 1) / 2) / (p * static_cast<double>(n_neg));
}

}  // namespace

double auc(const std::vector<float>& scores, const std::vector<float>& labels) {
  check_sizes(scores.size(), labels.size(), "auc");
  check_finite(scores, "auc");
  std::vector<int64_t> idx(scores.size());
  std::iota(idx.begin(), idx.end(), 0);
  return auc_of(scores, labels, idx);
}

double gauc(const std::vector<float>& scores, const std::vector<float>& labels,
            const std::vector<int64_t>& users) {
  check_sizes(scores.size(), labels.size(), "gauc");
  check_sizes(scores.size(), users.size(), "gauc");
  check_finite(scores, "gauc");
  std::unordered_map<int64_t, std::vector<int64_t>> groups;
  for (size_t i = 0; i < users.size(); ++i) groups[users[i]].push_back(static_cast<int64_t>(i));
  double weighted = 0, weight = 0;
  for (auto& [user, idx] : groups) {
    int64_t n_pos = 0;
    for (auto i : idx) n_pos += labels[i] > 0.5f;
    if (n_pos == 0 || n_pos == static_cast<int64_t>(idx.size())) continue;
    const double n = static_cast<double>(idx.size());
    weighted += n * auc_of(scores, labels, idx);
    weight += n;
  }
  return weight > 0 ? weighted / weight : 0.5;
}

double logloss(const std::vector<float>& probabilities, const std::vector<float>& labels) {
  check_sizes(probabilities.size(), labels.size(), "logloss");
  check_finite(probabilities, "logloss");
  if (probabilities.empty()) return 0.0;
  constexpr double kEps = 1e-7;
  double sum = 0;
  for (size_t i = 0; i < probabilities.size(); ++i) {
    const double p = std::clamp(static_cast<double>(probabilities[i]), kEps, 1 - kEps);
    const double y = labels[i];
    sum -= y * std::log(p) + (1 - y) * std::log(1 - p);
  }
  return sum / static_cast<double>(probabilities.size());
}

double rela_impr(double auc_model, double auc_base) {
  if (auc_base == 0.5)
    throw std::invalid_argument("rela_impr: the base AUC is 0.5 (random), the ratio is undefined");
  return (auc_model - 0.5) / (auc_base - 0.5) - 1.0;
}

}  // namespace recsys::eval
