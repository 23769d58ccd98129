#include "models/din/ctr_model_options.h"

namespace recsys::models {

using config::Reader;

CtrEmbeddingsOptions CommonModelOptions::embeddings(const CtrDataInfo& data) const {
  return CtrEmbeddingsOptions(data.num_items, data.num_categories)
      .item_dim(item_dim)
      .category_dim(category_dim)
      .init_std(init_std)
      .sparse(sparse)
      .regularization(regularization)
      .lambda(reg_lambda)
      .item_count(data.item_count)
      .category_count(data.category_count);
}

Activation parse_activation_key(const Reader& r, const std::string& key, const std::string& fallback) {
  return parse_activation(r.choice(key, fallback, {"dice", "prelu", "relu", "sigmoid", "tanh", "none"}));
}

std::vector<int64_t> parse_widths(const Reader& r, const std::string& key,
                                  const std::vector<int64_t>& fallback) {
  auto widths = r.get<std::vector<int64_t>>(key, fallback);
  if (widths.empty()) r.fail(key, "give at least one layer width");
  for (auto w : widths)
    if (w < 1) r.fail(key, "layer widths must be positive");
  return widths;
}

CommonModelOptions parse_common_model_options(const Reader& r) {
  CommonModelOptions o;
  o.item_dim = r.get<int64_t>("item_dim", o.item_dim);
  o.category_dim = r.get<int64_t>("category_dim", o.category_dim);
  o.init_std = r.get<double>("init_std", o.init_std);
  o.sparse = r.get<bool>("sparse_embeddings", o.sparse);
  o.regularization = parse_ctr_regularization(r.choice("regularization", "none", {"none", "mba", "l2"}));
  o.reg_lambda = r.get<double>("reg_lambda", o.reg_lambda);
  o.mlp.hidden = parse_widths(r, "hidden", o.mlp.hidden);
  o.mlp.activation = parse_activation_key(r, "activation", "dice");
  o.mlp.dropout = r.get<double>("dropout", o.mlp.dropout);
  if (o.item_dim < 1) r.fail("item_dim", "must be at least 1");
  if (o.category_dim < 1) r.fail("category_dim", "must be at least 1");
  if (!(o.init_std > 0)) r.fail("init_std", "must be positive");
  if (o.reg_lambda < 0) r.fail("reg_lambda", "must be >= 0");
  if (o.regularization != CtrRegularization::kNone && o.reg_lambda == 0)
    r.fail("reg_lambda", "regularization is on but reg_lambda is 0; set a positive weight");
  if (o.mlp.dropout < 0 || o.mlp.dropout >= 1) r.fail("dropout", "must be in [0, 1)");
  return o;
}

}  // namespace recsys::models
