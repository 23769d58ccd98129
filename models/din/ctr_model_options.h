#pragma once
#include <string>
#include <vector>

#include "framework/config/config.h"
#include "models/din/ctr_embeddings.h"
#include "models/din/ctr_task.h"

namespace recsys::models {

/// The `model` keys every CTR model shares (embeddings, output MLP, regularisation), parsed in
/// one place so that DIN, the baselines and DIEN accept and check them identically.
struct CommonModelOptions {
  int64_t item_dim = 18, category_dim = 18;
  double init_std = 0.01;
  bool sparse = true;
  CtrRegularization regularization = CtrRegularization::kNone;
  double reg_lambda = 0.0;
  CtrMlpOptions mlp;

  /// Embedding options completed with the vocabulary sizes and counts of the data.
  CtrEmbeddingsOptions embeddings(const CtrDataInfo& data) const;
};

CommonModelOptions parse_common_model_options(const config::Reader& r);

/// Layer widths at `key`: non-empty, every width positive.
std::vector<int64_t> parse_widths(const config::Reader& r, const std::string& key,
                                  const std::vector<int64_t>& fallback);

/// An activation name at `key` (dice, prelu, relu, sigmoid, tanh, none).
Activation parse_activation_key(const config::Reader& r, const std::string& key,
                                const std::string& fallback);

}  // namespace recsys::models
