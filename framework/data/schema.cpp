#include "framework/data/schema.h"

#include <stdexcept>

namespace recsys::data {

const char* feature_kind_name(FeatureKind kind) {
  switch (kind) {
    case FeatureKind::kSingle: return "single";
    case FeatureKind::kMulti: return "multi";
    case FeatureKind::kNumeric: return "numeric";
    case FeatureKind::kSequence: return "sequence";
  }
  return "?";
}

int64_t Vocabulary::add(const std::string& key) {
  auto it = index_.find(key);
  if (it != index_.end()) return it->second;
  int64_t idx = static_cast<int64_t>(keys_.size()) + kFirstIndex;
  index_.emplace(key, idx);
  keys_.push_back(key);
  return idx;
}

int64_t Vocabulary::lookup(const std::string& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? kDefaultIndex : it->second;
}

std::string Vocabulary::key(int64_t index) const {
  if (index == kPadIndex) return "<pad>";
  if (index == kDefaultIndex) return "<default>";
  return keys_.at(static_cast<size_t>(index - kFirstIndex));
}

void FeatureTable::add_categorical(FeatureSpec spec, const std::vector<std::vector<int64_t>>& bags) {
  if (static_cast<int64_t>(bags.size()) != num_rows_)
    throw std::invalid_argument("feature '" + spec.name + "': " + std::to_string(bags.size()) +
                                " rows, table has " + std::to_string(num_rows_));
  std::vector<int64_t> offsets{0}, values;
  offsets.reserve(bags.size() + 1);
  int64_t longest = 1;
  for (auto& b : bags) {
    if (b.empty()) {
      values.push_back(kDefaultIndex);
    } else {
      for (int64_t v : b) {
        if (v < 0 || v >= spec.vocab_size)
          throw std::out_of_range("feature '" + spec.name + "': index " + std::to_string(v) +
                                  " outside vocabulary of size " + std::to_string(spec.vocab_size));
        values.push_back(v);
      }
      longest = std::max<int64_t>(longest, static_cast<int64_t>(b.size()));
    }
    offsets.push_back(static_cast<int64_t>(values.size()));
  }
  if (spec.max_len <= 0) spec.max_len = longest;
  specs_.push_back(std::move(spec));
  offsets_.push_back(std::move(offsets));
  values_.push_back(std::move(values));
  numeric_.emplace_back();
}

void FeatureTable::add_numeric(const std::string& name, std::vector<float> values) {
  if (static_cast<int64_t>(values.size()) != num_rows_)
    throw std::invalid_argument("numeric feature '" + name + "' has the wrong number of rows");
  specs_.push_back(FeatureSpec{name, FeatureKind::kNumeric, 0, 1});
  offsets_.emplace_back();
  values_.emplace_back();
  numeric_.push_back(std::move(values));
}

int64_t FeatureTable::index_of(const std::string& name) const {
  for (size_t i = 0; i < specs_.size(); ++i)
    if (specs_[i].name == name) return static_cast<int64_t>(i);
  return -1;
}

std::pair<const int64_t*, int64_t> FeatureTable::bag(int64_t f, int64_t r) const {
  const auto& off = offsets_[f];
  return {values_[f].data() + off[r], off[r + 1] - off[r]};
}

std::vector<torch::Tensor> FeatureTable::gather(const int64_t* rows, int64_t n) const {
  std::vector<torch::Tensor> out;
  out.reserve(specs_.size());
  for (size_t f = 0; f < specs_.size(); ++f) {
    const auto& spec = specs_[f];
    if (spec.kind == FeatureKind::kNumeric) {
      auto t = torch::empty({n, 1}, torch::kFloat32);
      float* p = t.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) p[i] = numeric_[f][rows[i]];
      out.push_back(t);
      continue;
    }
    const int64_t width = spec.max_len;
    auto t = torch::zeros({n, width}, torch::kInt64);
    int64_t* p = t.data_ptr<int64_t>();
    const auto& off = offsets_[f];
    const auto& val = values_[f];
    for (int64_t i = 0; i < n; ++i) {
      int64_t r = rows[i];
      int64_t len = std::min(off[r + 1] - off[r], width);
      std::copy(val.begin() + off[r], val.begin() + off[r] + len, p + i * width);
    }
    out.push_back(t);
  }
  return out;
}

}  // namespace recsys::data
