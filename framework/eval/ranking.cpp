#include "framework/eval/ranking.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <unordered_set>

namespace recsys::eval {

RankingAccumulator::RankingAccumulator(std::vector<int64_t> ks, std::vector<uint8_t> slice_of_item,
                                       std::vector<std::string> slice_names)
    : ks_(std::move(ks)), slice_of_item_(std::move(slice_of_item)), slice_names_(std::move(slice_names)) {
  if (ks_.empty()) throw std::invalid_argument("RankingAccumulator: no K given");
  std::sort(ks_.begin(), ks_.end());
  max_k_ = ks_.back();
  all_.hits.assign(ks_.size(), 0);
  all_.ndcg.assign(ks_.size(), 0);
  slices_.assign(slice_names_.size(), all_);
}

void RankingAccumulator::add_to(Sums& s, const int64_t* ranked, int64_t n_ranked,
                                const std::vector<int64_t>& targets) {
  if (targets.empty()) return;
  s.points += static_cast<double>(targets.size());
  s.users += 1;
  for (size_t k = 0; k < ks_.size(); ++k) {
    int64_t K = std::min(ks_[k], n_ranked);
    double hits = 0, dcg = 0, idcg = 0;
    for (int64_t r = 0; r < K; ++r) {
      if (std::find(targets.begin(), targets.end(), ranked[r]) != targets.end()) {
        hits += 1;
        dcg += 1.0 / std::log2(static_cast<double>(r) + 2.0);
      }
    }
    int64_t ideal = std::min<int64_t>(static_cast<int64_t>(targets.size()), ks_[k]);
    for (int64_t r = 0; r < ideal; ++r) idcg += 1.0 / std::log2(static_cast<double>(r) + 2.0);
    s.hits[k] += hits;
    s.ndcg[k] += dcg / idcg;
  }
}

void RankingAccumulator::add(const int64_t* ranked, int64_t n_ranked, const std::vector<int64_t>& targets) {
  add_to(all_, ranked, n_ranked, targets);
  for (size_t sl = 0; sl < slices_.size(); ++sl) {
    scratch_.clear();
    for (int64_t t : targets)
      if (slice_of_item_.at(static_cast<size_t>(t)) == sl) scratch_.push_back(t);
    add_to(slices_[sl], ranked, n_ranked, scratch_);
  }
}

std::map<std::string, double> RankingAccumulator::result() const {
  std::map<std::string, double> out;
  auto emit = [&](const Sums& s, const std::string& suffix) {
    // A slice without test points has no recall to report: leaving the keys out (test_points
    // says 0) keeps a 0.0 that was never measured out of tables and sweep means.
    if (!suffix.empty() && s.points == 0) {
      out["test_points" + suffix] = 0;
      return;
    }
    for (size_t k = 0; k < ks_.size(); ++k) {
      std::string K = std::to_string(ks_[k]);
      out["recall@" + K + suffix] = s.points > 0 ? s.hits[k] / s.points : 0.0;
      out["ndcg@" + K + suffix] = s.users > 0 ? s.ndcg[k] / s.users : 0.0;
    }
    out["test_points" + suffix] = s.points;
  };
  emit(all_, "");
  out["users"] = all_.users;
  for (size_t sl = 0; sl < slices_.size(); ++sl) emit(slices_[sl], "/" + slice_names_[sl]);
  return out;
}

std::vector<uint8_t> head_tail_slices(const std::vector<int64_t>& clicks, double head_fraction) {
  const size_t n = clicks.size();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return clicks[a] > clicks[b]; });
  size_t n_head = static_cast<size_t>(std::llround(head_fraction * static_cast<double>(n)));
  std::vector<uint8_t> slice(n, 1);
  for (size_t i = 0; i < n_head && i < n; ++i) slice[order[i]] = 0;
  return slice;
}

}  // namespace recsys::eval
