#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace recsys::data {

/// Index 0 pads variable-length bags (zero embedding, ignored by pooling); index 1 is the
/// feature's default value: unknown raw ids map to it, and augmentations mask with it.
constexpr int64_t kPadIndex = 0;
constexpr int64_t kDefaultIndex = 1;
constexpr int64_t kFirstIndex = 2;

enum class FeatureKind {
  kSingle,    ///< one categorical value per row
  kMulti,     ///< a variable-length bag of categorical values
  kNumeric,   ///< one float per row
  kSequence,  ///< a time-ordered sequence of item ids, built by the data pipeline (user history)
};

const char* feature_kind_name(FeatureKind kind);

/// Raw string ids -> dense indices starting at kFirstIndex.
class Vocabulary {
 public:
  /// Adds `key` if new; returns its index.
  int64_t add(const std::string& key);
  /// The index of `key`, or kDefaultIndex when unknown.
  int64_t lookup(const std::string& key) const;
  bool contains(const std::string& key) const { return index_.count(key) > 0; }
  /// Number of indices including padding and default.
  int64_t size() const { return static_cast<int64_t>(keys_.size()) + kFirstIndex; }
  /// The raw id of `index` ("<pad>" / "<default>" for the reserved ones).
  std::string key(int64_t index) const;

 private:
  std::unordered_map<std::string, int64_t> index_;
  std::vector<std::string> keys_;
};

struct FeatureSpec {
  std::string name;
  FeatureKind kind = FeatureKind::kSingle;
  int64_t vocab_size = 0;  ///< including padding and default indices (0 for numeric)
  int64_t max_len = 1;     ///< bag width in a batch (longer bags are truncated)
};

/// Feature values of a set of rows (users or items), one CSR column per feature. Single-valued
/// features are bags of length one; numeric features keep one float per row in `numeric`.
class FeatureTable {
 public:
  FeatureTable() = default;
  explicit FeatureTable(int64_t num_rows) : num_rows_(num_rows) {}

  /// Adds a categorical feature; `bags[r]` are the indices of row r (an empty bag is stored as
  /// {kDefaultIndex}).
  void add_categorical(FeatureSpec spec, const std::vector<std::vector<int64_t>>& bags);
  void add_numeric(const std::string& name, std::vector<float> values);

  int64_t num_rows() const { return num_rows_; }
  int64_t num_features() const { return static_cast<int64_t>(specs_.size()); }
  const std::vector<FeatureSpec>& specs() const { return specs_; }
  const FeatureSpec& spec(int64_t f) const { return specs_.at(f); }
  int64_t index_of(const std::string& name) const;  ///< -1 when absent

  /// Values of row r for categorical feature f.
  std::pair<const int64_t*, int64_t> bag(int64_t f, int64_t r) const;
  float numeric(int64_t f, int64_t r) const { return numeric_[f][r]; }

  /// Gathers rows into one [B, max_len] int64 tensor per feature (numeric: [B, 1] float),
  /// padded with kPadIndex.
  std::vector<torch::Tensor> gather(const int64_t* rows, int64_t n) const;

 private:
  int64_t num_rows_ = 0;
  std::vector<FeatureSpec> specs_;
  std::vector<std::vector<int64_t>> offsets_, values_;
  std::vector<std::vector<float>> numeric_;
};

}  // namespace recsys::data
