#include "augment/augmentation.h"

namespace recsys::augment {

Chain::Chain(std::vector<std::shared_ptr<Augmentation>> steps) : steps_(std::move(steps)) {
  for (size_t i = 1; i < steps_.size(); ++i)
    if (steps_[i]->paired())
      throw ConfigError("", "augmentation '" + steps_[i]->name() +
                                "' defines two views jointly and must come first in the chain");
}

std::pair<FeatureBatch, FeatureBatch> Chain::views(const FeatureBatch& batch, torch::Generator& gen) const {
  if (steps_.empty()) return {batch, batch};
  auto v = steps_[0]->views(batch, gen);
  for (size_t i = 1; i < steps_.size(); ++i) {
    v.first = steps_[i]->transform(v.first, gen);
    v.second = steps_[i]->transform(v.second, gen);
  }
  return v;
}

FeatureBatch Chain::transform(const FeatureBatch& batch, torch::Generator& gen) const {
  FeatureBatch out = batch;
  for (auto& s : steps_) out = s->transform(out, gen);
  return out;
}

std::string Chain::describe() const {
  std::string s;
  for (auto& a : steps_) s += (s.empty() ? "" : " -> ") + a->name();
  return s.empty() ? "none" : s;
}

Registry<AugmentFactory>& augmentations() {
  static Registry<AugmentFactory> registry("augmentation");
  return registry;
}

std::function<Chain(const AugmentContext&)> parse_chain(const config::Reader& r, const std::string& key) {
  std::vector<AugmentBuilder> builders;
  std::vector<std::string> type_paths;
  for (auto& item : r.children(key)) {
    std::string type = item.require<std::string>("type");
    type_paths.push_back(item.path_of("type"));
    builders.push_back(augmentations().get(type, type_paths.back())(item));
  }
  return [builders, type_paths](const AugmentContext& ctx) {
    std::vector<std::shared_ptr<Augmentation>> steps;
    for (size_t i = 0; i < builders.size(); ++i) {
      steps.push_back(builders[i](ctx));
      // Checked here too (Chain checks again) to name the step's place in the config.
      if (i > 0 && steps.back()->paired())
        throw ConfigError(type_paths[i], "augmentation '" + steps.back()->name() +
                                             "' defines two views jointly and must come first in the chain");
    }
    return Chain(std::move(steps));
  };
}

}  // namespace recsys::augment
