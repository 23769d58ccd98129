#pragma once
#include <memory>

#include "framework/config/config.h"
#include "framework/train/experiment.h"

namespace recsys::models {

/// Registers the "retrieval" task: two-tower model, in-batch softmax with logQ correction,
/// optional SSL on a uniformly sampled item batch, feature dropout and spread-out baselines.
void register_retrieval_task();

/// Mutual information between the item tower's features over the configured corpus (what
/// correlated feature masking uses): {"features": [...], "mi": [[...]], "groups": {...}}.
nlohmann::json item_feature_mutual_information(const nlohmann::json& config);


}  // namespace recsys::models
