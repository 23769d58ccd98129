// The built-in augmentations of Yao et al. (CIKM 2021) and their registration.
#include <spdlog/spdlog.h>

#include <map>
#include <tuple>

#include "augment/augmentation.h"
#include "augment/masking.h"

namespace recsys::augment {
namespace {

using config::Reader;

/// Per-feature probabilities: `p` for every feature unless `features` overrides it by name.
std::vector<double> per_feature(const std::vector<data::FeatureSpec>& specs, double p,
                                const std::map<std::string, double>& overrides, const std::string& path) {
  std::vector<double> out(specs.size(), p);
  for (auto& [name, value] : overrides) {
    auto it = std::find_if(specs.begin(), specs.end(), [&](auto& s) { return s.name == name; });
    if (it == specs.end()) {
      std::string known;
      for (auto& s : specs) known += (known.empty() ? "" : ", ") + s.name;
      throw ConfigError(path + "." + name, "not an item feature of the tower (known: " + known + ")");
    }
    out[static_cast<size_t>(it - specs.begin())] = value;
  }
  return out;
}

std::map<std::string, double> parse_overrides(const Reader& r, const std::string& key) {
  std::map<std::string, double> out;
  auto raw = r.raw(key);
  if (raw.is_null()) return out;
  if (!raw.is_object()) r.fail(key, "expected an object {feature: probability}");
  for (auto it = raw.begin(); it != raw.end(); ++it) {
    double v = config::convert<double>(it.value(), r.path_of(key) + "." + it.key());
    if (v < 0 || v > 1) throw ConfigError(r.path_of(key) + "." + it.key(), "probability must be in [0, 1]");
    out[it.key()] = v;
  }
  return out;
}

double probability(const Reader& r, const std::string& key, double fallback) {
  double p = r.get<double>(key, fallback);
  if (p < 0 || p > 1) r.fail(key, "probability must be in [0, 1]");
  return p;
}

/// RFM: each feature of each example replaced by its default value with probability p,
/// independently in each view (also the FD baseline when used as the main task's item augment).
class RandomMask : public Augmentation {
 public:
  explicit RandomMask(std::vector<double> p) : p_(std::move(p)) {}
  std::string name() const override { return "random_mask"; }
  FeatureBatch transform(const FeatureBatch& b, torch::Generator& gen) const override {
    FeatureBatch out(b.size());
    for (size_t f = 0; f < b.size(); ++f) {
      if (p_[f] <= 0 || b[f].scalar_type() != torch::kInt64) {
        out[f] = b[f];
        continue;
      }
      auto mask = torch::bernoulli(torch::full({b[f].size(0)}, p_[f]), gen).to(torch::kBool);
      out[f] = mask_rows(b[f], mask);
    }
    return out;
  }

 private:
  std::vector<double> p_;
};

/// Drops each value inside multi-valued features with probability p; an emptied bag becomes
/// the default value. Single-valued features are untouched.
class ValueDropout : public Augmentation {
 public:
  ValueDropout(std::vector<double> p, std::vector<bool> multi) : p_(std::move(p)), multi_(std::move(multi)) {}
  std::string name() const override { return "dropout"; }
  FeatureBatch transform(const FeatureBatch& b, torch::Generator& gen) const override {
    FeatureBatch out(b.size());
    for (size_t f = 0; f < b.size(); ++f) {
      if (!multi_[f] || p_[f] <= 0 || b[f].scalar_type() != torch::kInt64) {
        out[f] = b[f];
        continue;
      }
      auto keep = torch::bernoulli(torch::full(b[f].sizes(), 1.0 - p_[f]), gen).to(torch::kBool);
      auto t = b[f].masked_fill(~keep, data::kPadIndex);
      auto empty = (t != data::kPadIndex).sum(1) == 0;
      out[f] = mask_rows(t, empty);
    }
    return out;
  }

 private:
  std::vector<double> p_;
  std::vector<bool> multi_;
};

/// Shared by complementary and correlated masking: `group` [M, F] bool marks the features that
/// view 1 masks; view 2 masks the complement.
std::pair<FeatureBatch, FeatureBatch> split_views(const FeatureBatch& b, const torch::Tensor& group) {
  FeatureBatch v1(b.size()), v2(b.size());
  for (size_t f = 0; f < b.size(); ++f) {
    std::tie(v1[f], v2[f]) = mask_rows_both(b[f], group.select(1, static_cast<int64_t>(f)));
  }
  return {v1, v2};
}

/// Features split at random into two disjoint halves (per example, or one split per batch);
/// view 1 keeps group A, view 2 keeps group B. This is the paper's "random feature masking".
class Complementary : public Augmentation {
 public:
  Complementary(int64_t n_features, bool per_batch) : n_(n_features), per_batch_(per_batch) {}
  std::string name() const override { return per_batch_ ? "complementary(per batch)" : "complementary"; }
  bool paired() const override { return true; }
  FeatureBatch transform(const FeatureBatch& b, torch::Generator& gen) const override { return views(b, gen).first; }
  std::pair<FeatureBatch, FeatureBatch> views(const FeatureBatch& b, torch::Generator& gen) const override {
    const int64_t M = b.empty() ? 0 : b[0].size(0);
    const int64_t rows = per_batch_ ? 1 : M;
    // A random permutation per row (the ranks of uniform keys); the first half of the ranks
    // form the masked group. Ranks counted directly (ties broken by position, as a stable
    // sort would): the rows are a handful of features, where two argsorts cost far more.
    auto keys = torch::rand({rows, n_}, gen);
    const int64_t half =
        n_ / 2 + (n_ % 2 ? static_cast<int64_t>(torch::rand({1}, gen).item<float>() < 0.5) : 0);
    auto group = torch::empty({rows, n_}, torch::kBool);
    const float* k = keys.data_ptr<float>();
    bool* g = group.data_ptr<bool>();
    for (int64_t r = 0; r < rows; ++r) {
      const float* kr = k + r * n_;
      for (int64_t j = 0; j < n_; ++j) {
        const float kj = kr[j];
        int64_t rank = 0;
        for (int64_t i = 0; i < j; ++i) rank += kr[i] <= kj;  // a tie ranks the earlier first
        for (int64_t i = j + 1; i < n_; ++i) rank += kr[i] < kj;
        g[r * n_ + j] = rank < half;
      }
    }
    if (per_batch_) group = group.expand({M, n_});
    return split_views(b, group);
  }

 private:
  int64_t n_;
  bool per_batch_;
};

/// CFM: a random seed feature per example is masked together with the features most correlated
/// with it (by mutual information); view 2 masks the complement.
class CorrelatedMask : public Augmentation {
 public:
  CorrelatedMask(std::vector<std::vector<int64_t>> groups, int64_t n_features)
      : n_(n_features), table_(torch::zeros({n_features, n_features}, torch::kBool)) {
    for (int64_t f = 0; f < n_features; ++f)
      for (auto g : groups[static_cast<size_t>(f)]) table_[f][g] = true;
  }
  std::string name() const override { return "correlated_mask"; }
  bool paired() const override { return true; }
  FeatureBatch transform(const FeatureBatch& b, torch::Generator& gen) const override { return views(b, gen).first; }
  std::pair<FeatureBatch, FeatureBatch> views(const FeatureBatch& b, torch::Generator& gen) const override {
    const int64_t M = b.empty() ? 0 : b[0].size(0);
    auto seeds = torch::randint(n_, {M}, gen, torch::kInt64);
    return split_views(b, table_.index_select(0, seeds));
  }
  const torch::Tensor& table() const { return table_; }

 private:
  int64_t n_;
  torch::Tensor table_;
};

}  // namespace

void register_builtin_augmentations() {
  auto& reg = augmentations();
  if (reg.contains("random_mask")) return;
  reg.add("random_mask", [](const Reader& r) -> AugmentBuilder {
    double p = probability(r, "p", 0.5);
    auto overrides = parse_overrides(r, "features");
    std::string path = r.path_of("features");
    return [=](const AugmentContext& ctx) {
      return std::make_shared<RandomMask>(per_feature(ctx.specs, p, overrides, path));
    };
  }, "each feature replaced by its default value with probability p (per-feature override)");
  reg.add("dropout", [](const Reader& r) -> AugmentBuilder {
    double p = probability(r, "p", 0.5);
    auto overrides = parse_overrides(r, "features");
    std::string path = r.path_of("features");
    return [=](const AugmentContext& ctx) {
      std::vector<bool> multi;
      for (auto& s : ctx.specs) multi.push_back(s.kind == data::FeatureKind::kMulti);
      return std::make_shared<ValueDropout>(per_feature(ctx.specs, p, overrides, path), multi);
    };
  }, "drops values inside multi-valued features with probability p");
  reg.add("complementary", [](const Reader& r) -> AugmentBuilder {
    bool per_batch = r.choice("per", "example", {"example", "batch"}) == "batch";
    return [=](const AugmentContext& ctx) {
      return std::make_shared<Complementary>(static_cast<int64_t>(ctx.specs.size()), per_batch);
    };
  }, "two views from a random split of the features into disjoint halves");
  reg.add("correlated_mask", [](const Reader& r) -> AugmentBuilder {
    double fraction = r.get<double>("fraction", 0.5);
    if (fraction <= 0 || fraction >= 1) r.fail("fraction", "must be in (0, 1)");
    return [=](const AugmentContext& ctx) -> std::shared_ptr<Augmentation> {
      if (ctx.data == nullptr) throw std::logic_error("correlated_mask needs the training data");
      auto mi = mutual_information(ctx.data->items, ctx.table_columns);
      int64_t F = static_cast<int64_t>(ctx.specs.size());
      int64_t size = std::max<int64_t>(1, static_cast<int64_t>(std::llround(fraction * static_cast<double>(F))));
      auto groups = correlated_groups(mi, size);
      for (int64_t f = 0; f < F; ++f) {
        std::string names;
        for (auto g : groups[static_cast<size_t>(f)]) names += (names.empty() ? "" : ", ") + ctx.specs[static_cast<size_t>(g)].name;
        spdlog::debug("correlated_mask seed {} masks {{{}}}", ctx.specs[static_cast<size_t>(f)].name, names);
      }
      return std::make_shared<CorrelatedMask>(groups, F);
    };
  }, "a seed feature masked with its most correlated features (mutual information); complement in view 2");
}

}  // namespace recsys::augment
