#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace recsys::eval {

/// Accumulates Recall@K and NDCG@K over users, overall and per item slice (head / tail).
///
/// Recall@K of a slice = (test points of that slice ranked in the top K) / (test points of the
/// slice), a micro average over (user, test item) pairs, as in Yao et al. Table 3; with one test
/// item per user it is the hit rate. NDCG@K of a slice averages, over users with at least one
/// test item in the slice, DCG@K / IDCG@K computed on the slice's test items only.
class RankingAccumulator {
 public:
  /// `slice_of_item[i]` is the slice index of item row i; `slice_names` names the slices.
  RankingAccumulator(std::vector<int64_t> ks, std::vector<uint8_t> slice_of_item,
                     std::vector<std::string> slice_names);
  /// `ranked` are the top item rows for one user, best first (at least max K unless the corpus
  /// is smaller); `targets` the user's test item rows.
  void add(const int64_t* ranked, int64_t n_ranked, const std::vector<int64_t>& targets);
  /// Keys "recall@K", "ndcg@K", "recall@K/<slice>", "ndcg@K/<slice>", "test_points",
  /// "test_points/<slice>", "users".
  std::map<std::string, double> result() const;
  int64_t max_k() const { return max_k_; }

 private:
  struct Sums {
    std::vector<double> hits, ndcg;
    double points = 0, users = 0;
  };
  void add_to(Sums& s, const int64_t* ranked, int64_t n_ranked, const std::vector<int64_t>& targets);
  std::vector<int64_t> ks_;
  int64_t max_k_;
  std::vector<uint8_t> slice_of_item_;
  std::vector<std::string> slice_names_;
  Sums all_;
  std::vector<Sums> slices_;
  std::vector<int64_t> scratch_;
};

/// Head/tail split by training clicks: the top `head_fraction` of items (by clicks, ties by
/// row) are head (slice 0), the rest tail (slice 1).
std::vector<uint8_t> head_tail_slices(const std::vector<int64_t>& clicks, double head_fraction);

}  // namespace recsys::eval
